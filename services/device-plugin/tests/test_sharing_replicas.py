"""Device-plugin time-slicing / MPS replicas: what the record's sharing makes the node advertise,
and Allocate for replica IDs through the kubelet peer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest
from dp_helpers import ids, running_agent, settings, topology
from fgo_common import dpsharing
from fgo_common.topology import NodeTopology
from fgo_device_plugin.kwok import is_ours_by_name, wanted_capacity
from fgo_device_plugin.resources import capacity_of, node_resources
from fgo_device_plugin.source import StaticTopologySource
from fgo_testkit.kubelet import DevicePluginKubeletPeer, unexpected_admission_message

GPU = "nvidia.com/gpu"
SHARED = "nvidia.com/gpu.shared"


def shared(count: int, text: str, unhealthy: tuple[int, ...] = ()) -> NodeTopology:
    record = topology(count, unhealthy=unhealthy)
    return dataclasses.replace(record, sharing=dpsharing.parse_config(text, "cfg"))


TS4 = "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}"
RENAMED = (
    "sharing: {timeSlicing: {renameByDefault: true, failRequestsGreaterThanOne: true,"
    " resources: [{name: nvidia.com/gpu, replicas: 2}]}}"
)


def test_replicas_times_gpus_with_annotated_ids() -> None:
    record = shared(2, TS4, unhealthy=(1,))
    resources = node_resources(record)
    assert capacity_of(resources) == {GPU: (8, 4)}
    got = [d.id for d in resources[GPU].devices]
    assert got[:4] == [f"{record.gpus[0].id}::{n}" for n in range(4)]
    assert all(dpsharing.base_id(i) in {g.id for g in record.gpus} for i in got)


def test_renamed_resource_replaces_nvidia_com_gpu() -> None:
    resources = node_resources(shared(2, RENAMED))
    assert capacity_of(resources) == {SHARED: (4, 4)}
    assert resources[SHARED].fail_requests_greater_than_one
    assert is_ours_by_name(SHARED)


def test_dra_held_gpu_hides_all_its_replicas() -> None:
    record = shared(2, TS4)
    assert wanted_capacity(node_resources(record), {record.gpus[0].id}) == {GPU: (8, 4)}


async def test_allocate_replica_ids_map_to_their_gpu(sock_dir: Path) -> None:
    record = shared(2, TS4)
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        devices = ids(await plugin.wait_for_devices())
        assert len(devices) == 8
        uuid0, uuid1 = (g.id for g in record.gpus)
        response = await plugin.allocate([f"{uuid1}::2"])
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == uuid1
        # Two replicas (failRequestsGreaterThanOne off): each GPU named once.
        response = await plugin.allocate([f"{uuid0}::0", f"{uuid0}::1", f"{uuid1}::0"])
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == f"{uuid0},{uuid1}"
        # The preferred allocation keeps a NUMA node first (here each GPU is its own NUMA node),
        # and within it takes the lowest replica number of each GPU first.
        assert await plugin.get_preferred_allocation(devices, 2) == [f"{uuid0}::0", f"{uuid0}::1"]


async def test_preferred_allocation_spreads_replicas_in_a_numa_node(sock_dir: Path) -> None:
    record = shared(4, TS4)  # GPUs 0-1 on NUMA node 0, 2-3 on 1
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        devices = ids(await plugin.wait_for_devices())
        u = [g.id for g in record.gpus]
        assert await plugin.get_preferred_allocation(devices, 2) == [f"{u[0]}::0", f"{u[1]}::0"]
        left = [d for d in devices if d != f"{u[0]}::0"]
        assert await plugin.get_preferred_allocation(left, 1) == [f"{u[1]}::0"]


async def test_fail_requests_greater_than_one(sock_dir: Path) -> None:
    record = shared(2, RENAMED)
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        plugin = await peer.wait_for_plugin(SHARED)
        devices = ids(await plugin.wait_for_devices())
        assert len(devices) == 4
        one = await plugin.allocate(devices[:1])
        assert one.envs["NVIDIA_VISIBLE_DEVICES"] == record.gpus[0].id
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await plugin.allocate(devices[:2])
        assert raised.value.code() == grpc.StatusCode.UNKNOWN
        assert unexpected_admission_message(raised.value) == (
            "Allocate failed due to rpc error: code = Unknown desc = invalid request: maximum "
            "request size for shared resources is 1; found 2, which is unexpected"
        )
