"""Topology records for tests, built the way the status-updater builds them."""

from __future__ import annotations

from fgo_common.config import load_cluster_config
from fgo_common.identity import mig_uuid
from fgo_common.nodebuild import build_node_topology
from fgo_common.profiles import BUILTIN_CATALOG
from fgo_common.topology import Holder, MigDevice, NodeTopology, PodUsage, UtilizationRange

T0 = 1_780_000_000.0  # 2026-05-28: every golden value is pinned to this instant and seed 0


def node(
    name: str = "gpu-node-1",
    gpu_type: str = "H100",
    count: int = 2,
    *,
    mig_strategy: str = "none",
    kwok: bool = True,
) -> NodeTopology:
    config = load_cluster_config(
        f"migStrategy: {mig_strategy}\nnodePools: {{p: {{gpus: [{{type: {gpu_type}, count: {count}}}]}}}}"
    )
    return build_node_topology(name, config.pools["p"], config, kwok=kwok)


def hold(
    topology: NodeTopology,
    index: int,
    *,
    namespace: str = "ml",
    pod: str = "trainer-0",
    container: str = "train",
    uid: str = "uid-trainer-0",
    util: tuple[int, int] = (100, 100),
    fb_mib: int = 11731,
) -> None:
    """Give GPU ``index`` to a pod, as the status-updater records it."""
    gpu = topology.gpus[index]
    gpu.status.holders.append(Holder(namespace, pod, container, uid))
    gpu.status.usage[uid] = PodUsage(
        UtilizationRange(*util), fb_mib, namespace=namespace, pod=pod, since=T0 - 600
    )


def enable_mig(topology: NodeTopology, index: int, layout: list[tuple[str, int]]) -> None:
    """Partition GPU ``index`` into MIG devices: ``layout`` is (profile, placement start)."""
    gpu = topology.gpus[index]
    profile = BUILTIN_CATALOG.get(gpu.profile)
    gpu.mig_enabled = True
    gpu.mig_devices = []
    for gi_id, (name, start) in enumerate(layout, start=1):
        spec = profile.mig_profile(name)
        gpu.mig_devices.append(
            MigDevice(
                uuid=mig_uuid(gpu.id, gi_id, 0),
                profile=spec.name,
                gi_id=gi_id,
                ci_id=0,
                gi_profile_id=spec.gi_profile_id,
                ci_profile_id=spec.ci_profile_id,
                placement_start=start,
                placement_size=spec.memory_slices,
                memory_mib=spec.memory_mib,
                sm_count=spec.sm_count,
            )
        )


def hold_mig(
    topology: NodeTopology,
    index: int,
    gi_id: int,
    *,
    namespace: str = "ml",
    pod: str = "infer-0",
    container: str = "infer",
    uid: str = "uid-infer-0",
    util: tuple[int, int] = (60, 60),
    fb_mib: int = 13,
) -> None:
    device = next(d for d in topology.gpus[index].mig_devices if d.gi_id == gi_id)
    device.holders.append(Holder(namespace, pod, container, uid))
    device.usage[uid] = PodUsage(
        UtilizationRange(*util), fb_mib, namespace=namespace, pod=pod, since=T0 - 600
    )
