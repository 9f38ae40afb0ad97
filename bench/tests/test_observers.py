"""The pure parts of the watch-fed trackers: what counts as advertised, held, exported."""

from typing import Any

from fgo_common.topology import GpuRecord, GpuStatus, Holder, NodeTopology

from bench.podbatch import PodBatch, first_family_pods, topology_holders
from bench.scenarios.bringup import AdvertTracker


def _node(name: str, *, ready: bool, gpus: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "allocatable": {"nvidia.com/gpu": gpus} if gpus else {},
        },
    }


def test_advert_tracker_stamps_each_state_once() -> None:
    t = AdvertTracker(gpus_per_node=8, dra=True)
    t.on_node("ADDED", _node("n1", ready=False, gpus="", labels={}), 1.0)
    t.on_node("MODIFIED", _node("n1", ready=True, gpus="8", labels={}), 2.0)
    t.on_node(
        "MODIFIED",
        _node(
            "n1",
            ready=True,
            gpus="8",
            labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8"},
        ),
        3.0,
    )
    t.on_node("MODIFIED", _node("n1", ready=True, gpus="8", labels={}), 9.0)
    t.on_configmap(
        "ADDED",
        {
            "metadata": {"name": "topology-n1", "labels": {"node-name": "n1"}},
            "data": {"topology.yml": "gpus: []"},
        },
        2.5,
    )
    assert not t.complete({"n1"})
    for i, count in enumerate((4, 4)):
        t.on_slice(
            "ADDED",
            {
                "metadata": {"name": f"s{i}"},
                "spec": {
                    "driver": "gpu.nvidia.com",
                    "nodeName": "n1",
                    "devices": [{"name": f"gpu-{i * 4 + d}"} for d in range(count)],
                },
            },
            4.0 + i,
        )
    assert t.complete({"n1"})
    assert t.first.get("ready") == {"n1": 2.0}
    assert t.first.get("capacity") == {"n1": 2.0}
    assert t.first.get("labels") == {"n1": 3.0}
    assert t.first.get("topology") == {"n1": 2.5}
    assert t.first.get("slices") == {"n1": 5.0}  # only once both slices were there


def test_advert_tracker_ignores_other_drivers_and_mig_devices_and_sees_cleanup() -> None:
    t = AdvertTracker(gpus_per_node=2, dra=True)
    t.on_slice(
        "ADDED",
        {
            "metadata": {"name": "x"},
            "spec": {
                "driver": "other.example.com",
                "nodeName": "n1",
                "devices": [{"name": "gpu-0"}, {"name": "gpu-1"}],
            },
        },
        1.0,
    )
    t.on_slice(
        "ADDED",
        {
            "metadata": {"name": "y"},
            "spec": {
                "driver": "gpu.nvidia.com",
                "nodeName": "n1",
                "devices": [{"name": "gpu-0"}, {"name": "gpu-0-mig-1g10gb-19-0"}],
            },
        },
        1.0,
    )
    assert t.first.get("slices") == {}
    assert t.slices_of({"n1"}) == 1
    t.on_slice("DELETED", {"metadata": {"name": "y"}, "spec": {"driver": "gpu.nvidia.com"}}, 2.0)
    assert t.slices_of({"n1"}) == 0
    t.on_configmap("ADDED", {"metadata": {"name": "topology-n2"}, "data": {}}, 1.0)
    assert t.cms_present == {"n2"}
    assert t.first.get("topology") == {}  # no record in it yet
    t.on_configmap("DELETED", {"metadata": {"name": "topology-n2"}}, 2.0)
    assert t.cms_present == set()


def _gpu(index: int, *holders: Holder) -> GpuRecord:
    return GpuRecord(
        id=f"GPU-{index}",
        index=index,
        product="H100",
        memory_mib=80,
        profile="h100",
        bus_id="",
        status=GpuStatus(holders=list(holders)),
    )


def test_topology_holders_reads_the_record_the_status_updater_writes() -> None:
    topo = NodeTopology(
        node_name="n1",
        pool="bench",
        gpu_product="H100",
        gpu_memory_mib=80,
        profile="h100",
        driver_version="",
        cuda_version="",
        gpus=[
            _gpu(0, Holder("fgo-bench", "churn-dp-00001")),
            _gpu(1, Holder("other", "not-ours")),
            _gpu(2),
        ],
    )
    assert topology_holders(topo.to_yaml()) == {"churn-dp-00001"}


def test_first_family_pods() -> None:
    text = (
        "# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).\n"
        "# TYPE DCGM_FI_DEV_SM_CLOCK gauge\n"
        'DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-0",container="main",namespace="fgo-bench",'
        'pod="churn-dp-00001"} 1980\n'
        'DCGM_FI_DEV_SM_CLOCK{gpu="1",UUID="GPU-1",container="",namespace="",pod=""} 1980\n'
        "# HELP DCGM_FI_DEV_MEM_CLOCK Memory clock frequency (in MHz).\n"
        "# TYPE DCGM_FI_DEV_MEM_CLOCK gauge\n"
        'DCGM_FI_DEV_MEM_CLOCK{gpu="1",UUID="GPU-1",pod="only-in-second-family"} 2619\n'
    )
    assert first_family_pods(text) == {"churn-dp-00001"}
    assert first_family_pods("") == set()


class _Env:
    exporter_url = None


def _cm(name: str, holders: list[str]) -> dict[str, Any]:
    topo = NodeTopology(
        node_name=name,
        pool="bench",
        gpu_product="H100",
        gpu_memory_mib=80,
        profile="h100",
        driver_version="",
        cuda_version="",
        gpus=[_gpu(i, Holder("fgo-bench", p)) for i, p in enumerate(holders)],
    )
    return {"metadata": {"name": f"topology-{name}"}, "data": {"topology.yml": topo.to_yaml()}}


def test_pod_batch_follows_pods_into_and_out_of_the_records() -> None:
    batch = PodBatch(_Env(), "run", ["a", "b", "c"])  # type: ignore[arg-type]
    batch.on_pod(
        "ADDED",
        {"metadata": {"name": "a"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}},
        1.0,
    )
    batch.on_pod(
        "MODIFIED",
        {"metadata": {"name": "a"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}},
        2.0,
    )
    batch.on_pod("ADDED", {"metadata": {"name": "zz"}, "spec": {}}, 1.0)  # not ours
    batch.on_configmap("MODIFIED", _cm("n1", ["a", "b"]), 1.5)
    batch.on_configmap("MODIFIED", _cm("n2", ["b"]), 1.6)
    assert batch.first.get("scheduled") == {"a": 1.0}
    assert batch.first.get("in_topology") == {"a": 1.5, "b": 1.5}
    assert batch.latencies("running", "in_topology") == [-0.5]
    # b leaves n1 but is still held on n2: not out yet; a leaves for good.
    batch.on_configmap("MODIFIED", _cm("n1", []), 3.0)
    assert batch.first.get("out_topology") == {"a": 3.0}
    batch.on_configmap("DELETED", _cm("n2", ["b"]), 4.0)
    assert batch.first.get("out_topology") == {"a": 3.0, "b": 4.0}
    # Only pods that were recorded are expected to leave the records; c never was.
    assert batch.expected("out_topology") == 2
    assert batch.expected("gone") == 3
    assert batch.span("in_topology", "out_topology") == 2.5


def test_bring_up_does_not_wait_for_kwok_ready() -> None:
    t = AdvertTracker(gpus_per_node=1, dra=False)
    labels = {"nvidia.com/gpu.product": "X", "nvidia.com/gpu.count": "1"}
    t.on_node("ADDED", _node("n1", ready=False, gpus="1", labels=labels), 1.0)
    t.on_configmap(
        "ADDED", {"metadata": {"name": "topology-n1"}, "data": {"topology.yml": "x"}}, 1.0
    )
    assert t.done({"n1"})["ready"] == 0
    assert t.complete({"n1"})
