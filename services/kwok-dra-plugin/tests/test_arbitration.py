"""Devices the extended-resource path holds are not allocatable through DRA (pure logic)."""

from __future__ import annotations

from typing import Any

from fgo_common import dradevices
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import (
    HOLDER_DEVICE_PLUGIN,
    HOLDER_DRA,
    HOLDER_RESERVATION,
    TOPOLOGY_DATA_KEY,
    UNHEALTHY,
    Holder,
    MigDevice,
    NodeTopology,
)
from fgo_kwok_dra_plugin.controller import HELD_TAINT_KEY, arbitrate, desired_pool

HELD = {"key": HELD_TAINT_KEY, "effect": "NoSchedule"}


def topology(count: int) -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "h100", "count": count}]}}}
    )
    return build_node_topology("n1", config.pools["p"], config, kwok=True)


def holder(pod: str, kind: str) -> Holder:
    return Holder(namespace="ns", pod=pod, pod_uid=f"uid-{pod}", kind=kind)


def taints(devices: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {d["name"]: d.get("taints", []) for d in devices}


def devices_of(
    record: NodeTopology, policy: dradevices.UnhealthyPolicy = "taint"
) -> list[dict[str, Any]]:
    options = dradevices.DeviceOptions(unhealthy=policy)
    return arbitrate(dradevices.node_devices(record, options), record, policy)


def test_extended_resource_holders_taint_their_gpus_dra_holders_do_not() -> None:
    record = topology(4)
    record.gpus[0].status.holders = [holder("p", HOLDER_DEVICE_PLUGIN)]
    record.gpus[1].status.holders = [holder("r", HOLDER_RESERVATION)]
    record.gpus[2].status.holders = [holder("d", HOLDER_DRA)]
    assert taints(devices_of(record)) == {
        "gpu-0": [HELD],
        "gpu-1": [HELD],
        "gpu-2": [],
        "gpu-3": [],
    }


def test_release_removes_the_taint_and_the_builder_output_is_not_mutated() -> None:
    record = topology(2)
    built = dradevices.node_devices(record)
    record.gpus[0].status.holders = [holder("p", HOLDER_DEVICE_PLUGIN)]
    assert taints(arbitrate(built, record, "taint"))["gpu-0"] == [HELD]
    assert "taints" not in built[0].device
    record.gpus[0].status.holders = []
    assert devices_of(record) == [d.device for d in dradevices.node_devices(record)]


def test_a_fault_taint_and_the_held_taint_side_by_side() -> None:
    record = topology(1)
    record.gpus[0].health = UNHEALTHY
    record.gpus[0].status.holders = [holder("p", HOLDER_DEVICE_PLUGIN)]
    (device,) = devices_of(record)
    keys = [t["key"] for t in device["taints"]]
    assert keys == ["gpu.nvidia.com/gpu-lost", HELD_TAINT_KEY]


def test_omit_leaves_held_devices_out_and_publish_does_not_arbitrate() -> None:
    record = topology(2)
    record.gpus[1].status.holders = [holder("p", HOLDER_DEVICE_PLUGIN)]
    assert [d["name"] for d in devices_of(record, "omit")] == ["gpu-0"]
    assert taints(devices_of(record, "publish")) == {"gpu-0": [], "gpu-1": []}


def test_a_held_mig_device_is_tainted_not_its_siblings() -> None:
    record = topology(1)
    (gpu,) = record.gpus
    gpu.mig_enabled = True
    gpu.mig_devices = [
        MigDevice(
            uuid=f"MIG-{start}",
            profile="3g.40gb",
            gi_id=start + 1,
            ci_id=0,
            gi_profile_id=9,
            ci_profile_id=2,
            placement_start=start,
            placement_size=4,
            memory_mib=40192,
            sm_count=60,
            holders=[holder("p", HOLDER_DEVICE_PLUGIN)] if start == 0 else [],
        )
        for start in (0, 4)
    ]
    devices = devices_of(record)
    held = {d["attributes"]["uuid"]["string"] for d in devices if d.get("taints")}
    assert held == {"MIG-0"}
    assert len(devices) == 2


def test_desired_pool_reads_the_holders_from_the_record() -> None:
    record = topology(2)
    record.gpus[1].status.holders = [holder("p", HOLDER_DEVICE_PLUGIN)]
    cm = {
        "metadata": {"name": "topology-n1", "labels": {"node-name": "n1"}, "resourceVersion": "1"},
        "data": {TOPOLOGY_DATA_KEY: record.to_yaml()},
    }
    node = {"metadata": {"name": "n1", "uid": "u", "annotations": {"kwok.x-k8s.io/node": "fake"}}}
    desired = desired_pool("n1", node, cm, dradevices.DeviceOptions())
    assert desired is not None
    assert taints(desired.devices) == {"gpu-0": [], "gpu-1": [HELD]}
