"""KWOK nodes served by both paths (pure logic): DRA-held devices leave ``allocatable``."""

from __future__ import annotations

from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import (
    HOLDER_DEVICE_PLUGIN,
    HOLDER_DRA,
    HOLDER_RESERVATION,
    UNHEALTHY,
    Holder,
    MigDevice,
    NodeTopology,
)
from fgo_device_plugin.kwok import dra_held_devices, wanted_capacity
from fgo_device_plugin.resources import node_resources

GPU = "nvidia.com/gpu"


def topology(count: int, strategy: str = "none") -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "h100", "count": count}]}}}
    )
    record = build_node_topology("n1", config.pools["p"], config, kwok=True)
    record.mig_strategy = strategy
    return record


def holder(pod: str, kind: str) -> Holder:
    return Holder(namespace="ns", pod=pod, pod_uid=f"uid-{pod}", kind=kind)


def mig(uuid: str, start: int, holders: list[Holder] | None = None) -> MigDevice:
    return MigDevice(
        uuid=uuid,
        profile="3g.40gb",
        gi_id=start + 1,
        ci_id=0,
        gi_profile_id=9,
        ci_profile_id=2,
        placement_start=start,
        placement_size=4,
        memory_mib=40192,
        sm_count=60,
        holders=holders or [],
    )


def test_without_dra_holders_allocatable_is_the_healthy_count() -> None:
    record = topology(4)
    record.gpus[0].status.holders = [holder("a", HOLDER_DEVICE_PLUGIN)]
    record.gpus[1].status.holders = [holder("r", HOLDER_RESERVATION)]
    record.gpus[3].health = UNHEALTHY
    held = dra_held_devices(record)
    assert held == set()
    assert wanted_capacity(node_resources(record), held) == {GPU: (4, 3)}


def test_dra_held_gpus_leave_allocatable_but_not_capacity() -> None:
    record = topology(4)
    record.gpus[1].status.holders = [holder("d1", HOLDER_DRA)]
    record.gpus[2].status.holders = [holder("d2", HOLDER_DRA)]
    record.gpus[0].status.holders = [holder("p", HOLDER_DEVICE_PLUGIN)]
    held = dra_held_devices(record)
    assert held == {record.gpus[1].id, record.gpus[2].id}
    assert wanted_capacity(node_resources(record), held) == {GPU: (4, 2)}


def test_an_unhealthy_dra_held_gpu_is_not_subtracted_twice() -> None:
    record = topology(2)
    record.gpus[0].status.holders = [holder("d", HOLDER_DRA)]
    record.gpus[0].health = UNHEALTHY
    assert wanted_capacity(node_resources(record), dra_held_devices(record)) == {GPU: (2, 1)}


def test_mig_devices_held_through_dra() -> None:
    record = topology(2, strategy="mixed")
    gpu0, gpu1 = record.gpus
    for gpu in record.gpus:
        gpu.mig_enabled = True
    gpu0.mig_devices = [mig("MIG-a", 0, [holder("d", HOLDER_DRA)]), mig("MIG-b", 4)]
    gpu1.mig_devices = [mig("MIG-c", 0), mig("MIG-d", 4, [holder("p", HOLDER_DEVICE_PLUGIN)])]
    held = dra_held_devices(record)
    # The parent counts as taken too (whole-GPU pods under strategy none would share it).
    assert held == {"MIG-a", gpu0.id}
    assert wanted_capacity(node_resources(record), held) == {"nvidia.com/mig-3g.40gb": (4, 3)}
    # Under strategy none the same GPUs are plain nvidia.com/gpu: GPU 0 is taken.
    assert wanted_capacity(node_resources(record, "none"), held) == {GPU: (2, 1)}


def test_a_gpu_held_whole_through_dra_takes_its_mig_devices() -> None:
    record = topology(1, strategy="single")
    (gpu,) = record.gpus
    gpu.mig_enabled = True
    gpu.mig_devices = [mig("MIG-a", 0), mig("MIG-b", 4)]
    gpu.status.holders = [holder("d", HOLDER_DRA)]
    held = dra_held_devices(record)
    assert held == {gpu.id, "MIG-a", "MIG-b"}
    assert wanted_capacity(node_resources(record), held) == {GPU: (2, 0)}


def test_other_devices_are_not_arbitrated() -> None:
    config = parse_cluster_config(
        {
            "nodePools": {
                "p": {
                    "gpus": [{"type": "h100", "count": 1}],
                    "otherDevices": [{"name": "example.com/nic", "count": 2}],
                }
            }
        }
    )
    record = build_node_topology("n1", config.pools["p"], config, kwok=True)
    record.gpus[0].status.holders = [holder("d", HOLDER_DRA)]
    wanted = wanted_capacity(node_resources(record), dra_held_devices(record))
    assert wanted == {GPU: (1, 0), "example.com/nic": (2, 2)}
