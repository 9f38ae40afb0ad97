"""Malformed device plugin requests from the kubelet side (the test peer, real gRPC over a unix
socket): unknown IDs, empty and huge lists, duplicates, odd sizes, raw garbage bytes. Each gets
a proper answer or ``INVALID_ARGUMENT`` — never ``UNKNOWN``/``INTERNAL`` (an unhandled
exception in the servicer) — and the plugin keeps serving: its ListAndWatch stream stays open
and a valid Allocate still works afterwards."""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from badinput_counts import tried
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.node import NodeAgent
from fgo_device_plugin.settings import Settings
from fgo_device_plugin.source import StaticTopologySource
from fgo_kubelet_api import deviceplugin_v1beta1 as dp
from fgo_testkit.kubelet import DevicePluginKubeletPeer
from fgo_testkit.kubelet.deviceplugin import DevicePluginConnection

SURFACE = "gRPC: device plugin (Allocate, GetPreferredAllocation, PreStartContainer)"
NODE = "node-bad"
ACCEPTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


def record() -> object:
    config = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "H100", "count": 4}]}}})
    return build_node_topology(NODE, config.pools["p"], config, kwok=False)


class Plugin:
    def __init__(self, connection: DevicePluginConnection, ids: list[str]) -> None:
        self.connection = connection
        self.ids = ids


@pytest_asyncio.fixture
async def plugin() -> AsyncIterator[Plugin]:
    root = Path(tempfile.mkdtemp(prefix="fgo-bad-", dir="/tmp"))
    config = Settings(
        node_name=NODE,
        device_plugin_dir=str(root / "dp"),
        state_dir=str(root / "state"),
        pod_resources_socket="",
        kubelet_poll_interval_seconds=0.05,
    )
    topology = record()
    agent = NodeAgent(config, StaticTopologySource(topology), Metrics())
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(agent.follow_topology(stop)),
        asyncio.create_task(agent.manager.run(stop)),
    ]
    try:
        async with DevicePluginKubeletPeer(root / "dp") as kubelet:
            connection = await kubelet.wait_for_plugin("nvidia.com/gpu", timeout_seconds=20)
            devices = await connection.wait_for_devices()
            yield Plugin(connection, [d.ID for d in devices])
            # Still serving: the stream is open and a valid request works.
            assert not connection.stream_closed.is_set(), connection.stream_error
            response = await connection.allocate([devices[0].ID])
            assert response.envs
    finally:
        stop.set()
        async with asyncio.timeout(15):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        shutil.rmtree(root, ignore_errors=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def allocate(connection: DevicePluginConnection, containers: list[list[str]]) -> object:
    return connection.allocate_raw(
        dp.pb2.AllocateRequest(
            container_requests=[
                dp.pb2.ContainerAllocateRequest(devices_ids=ids) for ids in containers
            ]
        )
    )


async def test_malformed_allocations(plugin: Plugin) -> None:
    good = plugin.ids
    cases: dict[str, list[list[str]]] = {
        "no containers": [],
        "empty device list": [[]],
        "unknown id": [["GPU-00000000-0000-0000-0000-000000000000"]],
        "empty string id": [[""]],
        "duplicate ids": [[good[0], good[0]]],
        "more ids than devices": [good + good],
        "huge list": [[f"GPU-{i}" for i in range(20_000)]],
        "1 MiB id": [["G" * (1 << 20)]],
        "mixed valid and invalid": [[good[0]], ["nope"]],
        "case changed": [[good[0].lower()]],
        "whitespace": [[f" {good[0]} "]],
        "unicode": [["GPU-\u202e\u0000\U0001f4a5"]],
        "many containers": [[good[i % len(good)]] for i in range(500)],
    }
    wrong = {}
    for name, containers in cases.items():
        tried(SURFACE)
        code = await code_of(allocate(plugin.connection, containers))
        if code not in ACCEPTED:
            wrong[name] = code
    assert not wrong, wrong


async def test_malformed_preferred_allocations(plugin: Plugin) -> None:
    good = plugin.ids
    cases = {
        "size zero": (good, 0, []),
        "size negative": (good, -5, []),
        "size above available": (good, 9, []),
        "size huge": (good, 2**31 - 1, []),
        "no available": ([], 1, []),
        "unknown available": (["nope", "nada"], 1, []),
        "must include unknown": (good, 1, ["nope"]),
        "must include more than size": (good, 1, good[:3]),
        "must include not available": (good[:2], 2, good[2:3]),
        "duplicates": ([good[0]] * 50, 2, []),
    }
    wrong = {}
    for name, (available, size, must) in cases.items():
        tried(SURFACE)
        call = plugin.connection._stub.GetPreferredAllocation(
            dp.pb2.PreferredAllocationRequest(
                container_requests=[
                    dp.pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=available,
                        must_include_deviceIDs=must,
                        allocation_size=size,
                    )
                ]
            )
        )
        code = await code_of(call)
        if code not in ACCEPTED:
            wrong[name] = code
    assert not wrong, wrong


async def test_pre_start_and_garbage_bytes(plugin: Plugin) -> None:
    tried(SURFACE)
    code = await code_of(plugin.connection.pre_start_container(["nope"], force=True))
    assert code in ACCEPTED | {grpc.StatusCode.UNIMPLEMENTED}
    # Bytes that are not a protobuf message: gRPC itself refuses them; the server must survive.
    channel = plugin.connection._channel
    for method in ("Allocate", "GetPreferredAllocation", "PreStartContainer"):
        for payload in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 40):
            tried(SURFACE)
            call = channel.unary_unary(
                f"/v1beta1.DevicePlugin/{method}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )(payload)
            code = await code_of(call)
            assert code != grpc.StatusCode.UNAVAILABLE, f"{method}: server gone"


async def test_random_requests(plugin: Plugin) -> None:
    """300 random Allocate / GetPreferredAllocation requests (seeded: reproducible)."""
    rng = random.Random(7)
    pieces = [*plugin.ids, "", "GPU-", "nope", "\u00e9", "x" * 300, "MIG-1", plugin.ids[0].upper()]
    wrong = []
    for i in range(300):
        tried(SURFACE)
        ids = [rng.choice(pieces) for _ in range(rng.randint(0, 8))]
        if i % 2:
            code = await code_of(allocate(plugin.connection, [ids, ids[:1]][: rng.randint(0, 2)]))
        else:
            code = await code_of(
                plugin.connection._stub.GetPreferredAllocation(
                    dp.pb2.PreferredAllocationRequest(
                        container_requests=[
                            dp.pb2.ContainerPreferredAllocationRequest(
                                available_deviceIDs=ids,
                                must_include_deviceIDs=ids[: rng.randint(0, 2)],
                                allocation_size=rng.randint(-2, 6),
                            )
                        ]
                    )
                )
            )
        if code not in ACCEPTED:
            wrong.append((ids, code))
    assert not wrong, wrong[:10]
