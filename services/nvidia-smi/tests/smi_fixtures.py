"""Simulated node states for the nvidia-smi tests (and bench.py).

``h100_capture_node`` is the machine of ../shared/reference/nvidia-smi-h100: one idle H100,
its UUID and bus id. The others extrapolate: an 8-GPU HGX H100 node with busy GPUs and a
MIG-enabled GPU, a K80 node, and a product whose name is longer than the table's column.
"""

from __future__ import annotations

from fgo_common.identity import gpu_uuid, mig_uuid, numa_node, pci_bus_id
from fgo_common.topology import (
    GpuRecord,
    GpuStatus,
    Holder,
    MigDevice,
    NodeTopology,
    PodUsage,
    UtilizationRange,
)

H100 = "NVIDIA H100 80GB HBM3"
CAPTURE_UUID = "GPU-e7a9e68b-5beb-3fc9-6a7c-56fef6f2df95"
CAPTURE_BUS = "00000000:00:06.0"


def _node(
    gpus: list[GpuRecord],
    product: str,
    profile: str,
    driver: str = "580.159.04",
    cuda: str = "13.0",
) -> NodeTopology:
    return NodeTopology(
        node_name="node-a",
        pool="default",
        gpu_product=product,
        gpu_memory_mib=gpus[0].memory_mib if gpus else 0,
        profile=profile,
        driver_version=driver,
        cuda_version=cuda,
        gpus=gpus,
    )


def h100_capture_node() -> NodeTopology:
    gpu = GpuRecord(
        id=CAPTURE_UUID,
        index=0,
        product=H100,
        memory_mib=81559,
        profile="h100-80gb-hbm3",
        bus_id=CAPTURE_BUS,
    )
    return _node([gpu], H100, "h100-80gb-hbm3")


def busy(pod: str, uid: str, low: int, high: int, fb_mib: int) -> GpuStatus:
    return GpuStatus(
        holders=[Holder("default", pod, "main", pod_uid=uid)],
        usage={uid: PodUsage(UtilizationRange(low, high), fb_mib, namespace="default", pod=pod)},
    )


def hgx_node() -> NodeTopology:
    """8x H100 SXM: GPUs 1-2 held by one training pod, GPU 7 in MIG mode with two instances."""
    gpus: list[GpuRecord] = []
    for i in range(8):
        uuid = gpu_uuid("node-a", i)
        gpu = GpuRecord(
            id=uuid,
            index=i,
            product=H100,
            memory_mib=81559,
            profile="h100-80gb-hbm3",
            bus_id=pci_bus_id(i),
            numa_node=numa_node(i, 8),
        )
        if i in (1, 2):
            gpu.status = busy("train-0", "uid-train", 80, 100, 30000)
        if i == 7:
            gpu.mig_enabled = True
            gpu.mig_devices = [
                MigDevice(
                    uuid=mig_uuid(uuid, 1, 0),
                    profile="3g.40gb",
                    gi_id=1,
                    ci_id=0,
                    gi_profile_id=9,
                    ci_profile_id=2,
                    placement_start=4,
                    placement_size=4,
                    memory_mib=40448,
                    sm_count=60,
                    holders=[Holder("default", "infer-0", "main", pod_uid="uid-infer")],
                    usage={
                        "uid-infer": PodUsage(
                            UtilizationRange(40, 60), 12000, namespace="default", pod="infer-0"
                        )
                    },
                ),
                MigDevice(
                    uuid=mig_uuid(uuid, 7, 0),
                    profile="1g.10gb",
                    gi_id=7,
                    ci_id=0,
                    gi_profile_id=19,
                    ci_profile_id=0,
                    placement_start=0,
                    placement_size=1,
                    memory_mib=9984,
                    sm_count=16,
                ),
            ]
        gpus.append(gpu)
    return _node(gpus, H100, "h100-80gb-hbm3")


def k80_node(count: int = 2) -> NodeTopology:
    gpus = [
        GpuRecord(
            id=gpu_uuid("node-k", i),
            index=i,
            product="Tesla K80",
            memory_mib=11441,
            profile="k80",
            bus_id=pci_bus_id(i),
            numa_node=numa_node(i, count),
        )
        for i in range(count)
    ]
    gpus[0].status = busy("job-0", "uid-job", 30, 50, 2000)
    return _node(gpus, "Tesla K80", "k80", driver="470.256.02", cuda="11.4")


LONG_NAME = "NVIDIA RTX 6000 Ada Generation"


def long_name_node() -> NodeTopology:
    """A product without built-in data and a name longer than the table's 27-character column."""
    gpus = [
        GpuRecord(
            id=gpu_uuid("node-l", 0),
            index=0,
            product=LONG_NAME,
            memory_mib=49140,
            profile="",
            bus_id="0000:01:00.0",
        )
    ]
    return _node(gpus, LONG_NAME, "")
