"""The fake podresources answers and the sysfs tree: pure functions, then the served socket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from fgo_common.config import load_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_common.topology import Holder, NodeTopology
from fgo_kubelet_api import podresources_v1 as podres
from fgo_status_exporter.podresources import (
    CpuAssigner,
    NodeAnswers,
    PodResourcesError,
    cpulist,
    cpumask,
    numa_layout,
    sysfs_files,
)
from fgo_status_exporter.podresources_server import (
    NodeState,
    kubelet_socket_shadowed,
    serve_socket,
    sync_sysfs,
)
from fgo_status_exporter.settings import Settings
from prometheus_client import CollectorRegistry

pb2 = podres.pb2

CONFIG = """
nodePools:
  hgx:
    gpus: [{type: H100, count: 8}]
    numa: {zones: 2, cpuPerZone: "16", memPerZone: 64Gi}
  plain:
    gpus: [{type: H100, count: 2}]
"""
GI = 1024**3


def record(pool: str = "hgx", node: str = "n1") -> NodeTopology:
    config = load_cluster_config(CONFIG)
    return build_node_topology(node, config.pools[pool], config, kwok=False)


def pod(
    name: str,
    containers: list[tuple[str, str, str]],
    *,
    ns: str = "ml",
    phase: str = "Running",
    sidecars: list[str] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
        "spec": {
            "nodeName": "n1",
            "initContainers": [{"name": s, "restartPolicy": "Always"} for s in sidecars]
            + [{"name": "setup"}],
            "containers": [
                {"name": c, "resources": {"requests": {"cpu": cpu, "memory": mem}}}
                for c, cpu, mem in containers
            ],
        },
        "status": {"phase": phase},
    }


def hold(rec: NodeTopology, index: int, name: str, container: str) -> None:
    rec.gpus[index].status.holders.append(
        Holder("ml", name, container, f"uid-{name}", resource="nvidia.com/gpu")
    )


def layout_of(rec: NodeTopology) -> Any:
    config = load_cluster_config(CONFIG)
    numa = config.pools[rec.pool].numa
    assert numa is not None
    return numa_layout(rec.pool, numa, {})


def zones_of(entry: Any) -> list[int]:
    return [n.ID for n in entry.topology.nodes]


# --- layout and sysfs -----------------------------------------------------------------------------


def test_cpulist_and_cpumask_formats() -> None:
    assert cpulist(range(16)) == "0-15"
    assert cpulist([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    assert cpulist([5]) == "5"
    assert cpulist([]) == ""
    assert cpumask(range(16), 32) == "0000ffff"
    assert cpumask(range(16, 32), 64) == "00000000,ffff0000"
    assert cpumask(range(32, 48), 64) == "0000ffff,00000000"


def test_layout_numbers_cpus_contiguously_per_zone() -> None:
    layout = layout_of(record())
    assert layout.cpu_ids == (tuple(range(16)), tuple(range(16, 32)))
    assert layout.memory_bytes == (64 * GI, 64 * GI)
    assert layout.distances == ((10, 21), (21, 10))


def test_sysfs_files_content() -> None:
    files = sysfs_files(layout_of(record()))
    assert files["devices/system/node/online"] == "0-1\n"
    assert files["devices/system/node/possible"] == "0-1\n"
    assert files["devices/system/node/has_cpu"] == "0-1\n"
    assert files["devices/system/node/node0/cpulist"] == "0-15\n"
    assert files["devices/system/node/node1/cpulist"] == "16-31\n"
    assert files["devices/system/node/node1/cpumap"] == "ffff0000\n"
    assert files["devices/system/node/node0/distance"] == "10 21\n"
    assert files["devices/system/cpu/online"] == "0-31\n"
    assert files["devices/system/cpu/possible"] == "0-31\n"


def test_sync_sysfs_writes_and_purges(tmp_path: Path) -> None:
    files = sysfs_files(layout_of(record()))
    written, removed = sync_sysfs(tmp_path, files)
    assert (written, removed) == (len(files), 0)
    assert (tmp_path / "devices/system/node/node1/cpulist").read_text() == "16-31\n"
    assert sync_sysfs(tmp_path, files) == (0, 0)  # unchanged: nothing rewritten
    # Down to one zone: node1 goes, files of others (not ours) stay.
    (tmp_path / "class").mkdir()
    (tmp_path / "class/keep").write_text("x")
    one = {k: v for k, v in files.items() if "node1" not in k}
    _, removed = sync_sysfs(tmp_path, one)
    assert not (tmp_path / "devices/system/node/node1").exists()
    assert removed == 4  # cpulist, cpumap, distance, the directory
    assert (tmp_path / "class/keep").read_text() == "x"
    assert not list(tmp_path.rglob(".*tmp*"))


@pytest.mark.parametrize(
    ("numa", "allocatable", "message"),
    [
        ({"zones": 2, "cpuPerZone": "1500m"}, {}, "1500m is not a whole number of CPUs"),
        ({"zones": 2, "cpuPerZone": "500m"}, {}, "is not a whole number of CPUs"),
        ({"zones": 2}, {"cpu": "1"}, "500m per zone (allocatable cpu / zones) is less than one"),
        ({"zones": 2}, {}, "not set and the Node reports no allocatable cpu"),
    ],
)
def test_layout_inconsistent_with_cpus_is_a_clear_error(
    numa: dict[str, Any], allocatable: dict[str, str], message: str
) -> None:
    import yaml

    config = load_cluster_config(
        yaml.safe_dump({"nodePools": {"p": {"gpus": [{"type": "H100", "count": 2}], "numa": numa}}})
    )
    block = config.pools["p"].numa
    assert block is not None
    with pytest.raises(PodResourcesError, match=r"nodePools\.p\.numa\.cpuPerZone") as err:
        numa_layout("p", block, allocatable)
    assert message in str(err.value)


def test_layout_from_node_allocatable_truncates_to_whole_cpus() -> None:
    config = load_cluster_config(
        "nodePools: {p: {gpus: [{type: H100, count: 2}], numa: {zones: 2}}}"
    )
    block = config.pools["p"].numa
    assert block is not None
    layout = numa_layout("p", block, {"cpu": "7", "memory": "8Gi"})
    assert layout.cpu_ids == ((0, 1, 2), (3, 4, 5))
    assert layout.memory_bytes == (4 * GI, 4 * GI)


# --- answers --------------------------------------------------------------------------------------


def test_allocatable_lists_every_gpu_with_its_zone_and_the_zones_cpus_and_memory() -> None:
    rec = record()
    answers = NodeAnswers(rec, layout_of(rec), [], CpuAssigner())
    resp = answers.allocatable_response()
    assert [list(d.device_ids) for d in resp.devices] == [[g.id] for g in rec.gpus]
    assert {d.resource_name for d in resp.devices} == {"nvidia.com/gpu"}
    assert [zones_of(d) for d in resp.devices] == [[0]] * 4 + [[1]] * 4
    assert list(resp.cpu_ids) == list(range(32))
    assert [(m.memory_type, m.size, zones_of(m)) for m in resp.memory] == [
        ("memory", 64 * GI, [0]),
        ("memory", 64 * GI, [1]),
    ]


def test_allocatable_leaves_out_unhealthy_gpus() -> None:
    rec = record()
    rec.gpus[2].health = "Unhealthy"
    resp = NodeAnswers(rec, layout_of(rec), [], CpuAssigner()).allocatable_response()
    assert rec.gpus[2].id not in [d.device_ids[0] for d in resp.devices]
    assert len(resp.devices) == 7


def test_list_shows_each_containers_devices_cpus_and_memory() -> None:
    rec = record()
    for i in (4, 5):
        hold(rec, i, "train", "main")
    hold(rec, 0, "infer", "")  # no container recorded: the first container
    pods = [
        pod("train", [("main", "4", "8Gi"), ("log", "100m", "64Mi")], sidecars=["proxy"]),
        pod("infer", [("srv", "2", "2Gi")]),
        pod("cpu-only", [("c", "1", "1Gi")]),
        pod("done", [("c", "1", "1Gi")], phase="Succeeded"),
    ]
    resp = NodeAnswers(rec, layout_of(rec), pods, CpuAssigner()).list_response()
    by_name = {p.name: p for p in resp.pod_resources}
    assert sorted(by_name) == ["cpu-only", "infer", "train"]  # finished pods are not listed
    train = {c.name: c for c in by_name["train"].containers}
    # sidecars first, then app containers; plain init containers are not listed
    assert [c.name for c in by_name["train"].containers] == ["proxy", "main", "log"]
    main = train["main"]
    assert [list(d.device_ids) for d in main.devices] == [[rec.gpus[4].id], [rec.gpus[5].id]]
    assert [zones_of(d) for d in main.devices] == [[1], [1]]
    assert list(main.cpu_ids) == [16, 17, 18, 19]  # zone 1's first CPUs
    assert [(m.size, zones_of(m)) for m in main.memory] == [(8 * GI, [1])]
    # a container without GPUs of a GPU pod sits on the pod's zone; 100m is no whole CPU
    assert list(train["log"].devices) == [] and list(train["log"].cpu_ids) == []
    assert [(m.size, zones_of(m)) for m in train["log"].memory] == [(64 * 1024**2, [1])]
    srv = by_name["infer"].containers[0]
    assert [d.device_ids[0] for d in srv.devices] == [rec.gpus[0].id]
    assert list(srv.cpu_ids) == [0, 1]
    # a pod holding no GPU is listed with empty containers (its CPUs are the shared pool)
    only = by_name["cpu-only"].containers[0]
    assert (list(only.devices), list(only.cpu_ids), list(only.memory)) == ([], [], [])


def test_pod_spanning_zones_splits_cpus_and_memory_by_its_gpus() -> None:
    rec = record()
    for i in (2, 3, 4):  # two GPUs in zone 0, one in zone 1
        hold(rec, i, "wide", "c")
    resp = NodeAnswers(
        rec, layout_of(rec), [pod("wide", [("c", "3", "3Gi")])], CpuAssigner()
    ).list_response()
    c = resp.pod_resources[0].containers[0]
    assert list(c.cpu_ids) == [0, 1, 16]
    assert [(m.size, zones_of(m)) for m in c.memory] == [(2 * GI, [0]), (GI, [1])]


def test_cpu_ids_stay_with_a_container_while_others_come_and_go() -> None:
    rec = record()
    hold(rec, 0, "a", "c")
    hold(rec, 1, "b", "c")
    cpus = CpuAssigner()
    layout = layout_of(rec)
    pods = [pod("a", [("c", "2", "1Gi")]), pod("b", [("c", "2", "1Gi")])]
    first = NodeAnswers(rec, layout, pods, cpus).list_response()
    assert [list(p.containers[0].cpu_ids) for p in first.pod_resources] == [[0, 1], [2, 3]]
    rec.gpus[0].status.holders.clear()
    later = NodeAnswers(rec, layout, pods[1:], cpus).list_response()
    assert list(later.pod_resources[0].containers[0].cpu_ids) == [2, 3]


def test_get_one_pod_and_unknown_pod() -> None:
    rec = record()
    hold(rec, 6, "train", "main")
    answers = NodeAnswers(
        rec, layout_of(rec), [pod("train", [("main", "1", "1Gi")])], CpuAssigner()
    )
    got = answers.get_response("ml", "train")
    assert got is not None
    assert got.pod_resources.containers[0].devices[0].device_ids == [rec.gpus[6].id]
    assert answers.get_response("ml", "nope") is None
    assert answers.get_response("other", "train") is None


def test_pool_without_numa_reports_devices_without_topology() -> None:
    rec = record("plain")
    hold(rec, 1, "p", "c")
    answers = NodeAnswers(rec, None, [pod("p", [("c", "2", "1Gi")])], CpuAssigner())
    alloc = answers.allocatable_response()
    assert len(alloc.devices) == 2 and not alloc.devices[0].HasField("topology")
    assert list(alloc.cpu_ids) == [] and list(alloc.memory) == []
    c = answers.list_response().pod_resources[0].containers[0]
    assert c.devices[0].device_ids == [rec.gpus[1].id] and list(c.cpu_ids) == []


def test_mig_devices_are_reported_under_their_resource() -> None:
    from exporter_builders import enable_mig

    rec = record()
    rec.mig_strategy = "mixed"
    enable_mig(rec, 0, [("1g.10gb", 0), ("1g.10gb", 1)])
    mig = rec.gpus[0].mig_devices[1]
    mig.holders.append(Holder("ml", "m", "c", "uid-m"))
    answers = NodeAnswers(rec, layout_of(rec), [pod("m", [("c", "1", "1Gi")])], CpuAssigner())
    alloc = answers.allocatable_response()
    assert [d.resource_name for d in alloc.devices][:2] == ["nvidia.com/mig-1g.10gb"] * 2
    c = answers.list_response().pod_resources[0].containers[0]
    assert [(d.resource_name, d.device_ids[0], zones_of(d)) for d in c.devices] == [
        ("nvidia.com/mig-1g.10gb", mig.uuid, [0])
    ]


# --- state and errors -----------------------------------------------------------------------------


def config_cm(text: str = CONFIG) -> dict[str, Any]:
    return {"metadata": {"name": "topology"}, "data": {"topology.yml": text}}


def test_missing_record_and_missing_config_are_clear_errors() -> None:
    records: dict[str, NodeTopology] = {}
    state = NodeState("n1", records)
    with pytest.raises(PodResourcesError, match="no topology record for node n1 yet"):
        state.answers()
    records["n1"] = record()
    with pytest.raises(PodResourcesError, match="has not been read yet"):
        state.answers()
    state.on_config(config_cm("nodePools: {p: {gpus: [{type: H100, count: 2}], numa: {zones: 3}}}"))
    with pytest.raises(PodResourcesError, match=r"invalid: nodePools\.p\.numa\.zones"):
        state.answers()
    state.on_config(config_cm())
    assert len(state.answers().allocatable_response().devices) == 8
    # a bad config later keeps the last good one
    state.on_config(config_cm("nodePools: 3"))
    assert len(state.answers().allocatable_response().devices) == 8


def test_settings_refuse_the_kubelets_socket_and_kwok_mode() -> None:
    base = {"EXPORTER_MODE": "node", "NODE_NAME": "n1"}
    for env, message in (
        ({"POD_RESOURCES_SOCKET": "/var/lib/kubelet/pod-resources/kubelet.sock"}, "kubelet's own"),
        ({"POD_RESOURCES_SOCKET": "/var/lib/kubelet//pod-resources/./kubelet.sock"}, "own"),
        ({"POD_RESOURCES_SOCKET": "relative.sock"}, "absolute path"),
        ({"SYSFS_ROOT": "/sys/"}, "the host's sysfs"),
        ({"EXPORTER_MODE": "kwok", "SYSFS_ROOT": "/x"}, "only in EXPORTER_MODE=node"),
    ):
        with pytest.raises(SettingsError, match=message):
            load_settings(Settings, {**base, **env})
    assert kubelet_socket_shadowed("/var/lib/kubelet/pod-resources/../pod-resources/kubelet.sock")
    assert not kubelet_socket_shadowed("/var/lib/fake-gpu-operator/pod-resources/kubelet.sock")


# --- the served socket ----------------------------------------------------------------------------


async def test_socket_answers_and_errors(tmp_path: Path) -> None:
    rec = record()
    hold(rec, 4, "train", "main")
    records = {"n1": rec}
    state = NodeState("n1", records)
    state.on_config(config_cm())
    sock = tmp_path / "pod-resources" / "kubelet.sock"
    stop = asyncio.Event()
    server = asyncio.create_task(serve_socket(state, str(sock), CollectorRegistry(), stop))
    try:
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.02)
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            stub = podres.pb2_grpc.PodResourcesListerStub(channel)
            state.pods["uid-train"] = pod("train", [("main", "2", "1Gi")])
            start = time.perf_counter()
            listed = await stub.List(pb2.ListPodResourcesRequest())
            assert time.perf_counter() - start < 1.0
            assert listed.pod_resources[0].containers[0].devices[0].device_ids == [rec.gpus[4].id]
            alloc = await stub.GetAllocatableResources(pb2.AllocatableResourcesRequest())
            assert len(alloc.devices) == 8 and len(alloc.cpu_ids) == 32
            got = await stub.Get(pb2.GetPodResourcesRequest(pod_name="train", pod_namespace="ml"))
            assert got.pod_resources.name == "train"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Get(pb2.GetPodResourcesRequest(pod_name="x", pod_namespace="ml"))
            assert err.value.code() == grpc.StatusCode.UNKNOWN
            assert err.value.details() == "pod x in namespace ml not found"
            records.clear()  # the record is gone: an error, and the server keeps serving
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.List(pb2.ListPodResourcesRequest())
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "no topology record for node n1" in (err.value.details() or "")
            records["n1"] = rec
            assert len((await stub.List(pb2.ListPodResourcesRequest())).pod_resources) == 1
    finally:
        stop.set()
        await server
    assert not sock.exists()


def test_sysfs_keeps_the_last_good_tree_on_a_bad_layout_and_clears_without_numa(
    tmp_path: Path,
) -> None:
    from fgo_status_exporter.podresources_server import PodResourcesAgent

    records = {"n1": record()}
    agent = PodResourcesAgent(
        None,
        node_name="n1",
        namespace="ns",
        config_name="topology",
        records=records,
        socket_path="",
        sysfs_root=str(tmp_path),
        registry=CollectorRegistry(),
    )
    agent.sysfs_once()  # no config yet: nothing written, no crash
    assert not (tmp_path / "devices").exists()
    agent.state.on_config(config_cm())
    agent.sysfs_once()
    cpulist_file = tmp_path / "devices/system/node/node1/cpulist"
    assert cpulist_file.read_text() == "16-31\n"
    # A config whose cpuPerZone is no whole number of CPUs: the last good tree stays.
    agent.state.on_config(config_cm(CONFIG.replace('cpuPerZone: "16"', "cpuPerZone: 1500m")))
    agent.sysfs_once()
    assert cpulist_file.read_text() == "16-31\n"
    # The node moves to a pool without numa: our files go.
    records["n1"] = record("plain")
    agent.sysfs_once()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_cpu_ids_go_to_the_oldest_pod_first() -> None:
    rec = record()
    hold(rec, 0, "zeta", "c")
    hold(rec, 1, "alpha", "c")
    older = pod("zeta", [("c", "2", "1Gi")])
    older["metadata"]["creationTimestamp"] = "2026-12-01T10:00:00Z"
    newer = pod("alpha", [("c", "2", "1Gi")])
    newer["metadata"]["creationTimestamp"] = "2026-12-01T10:00:05Z"
    resp = NodeAnswers(rec, layout_of(rec), [newer, older], CpuAssigner()).list_response()
    ids = {p.name: list(p.containers[0].cpu_ids) for p in resp.pod_resources}
    assert ids == {"zeta": [0, 1], "alpha": [2, 3]}
    assert [p.name for p in resp.pod_resources] == ["alpha", "zeta"]  # listed by name
