"""DevicePluginKubeletPeer against a tiny in-test device plugin, over real unix sockets."""

# ruff: noqa: N802 - servicer methods carry the gRPC method names.

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from fgo_kubelet_api import deviceplugin_v1beta1 as dp
from fgo_testkit.kubelet import DevicePluginKubeletPeer, PeerError

RESOURCE = "example.com/gpu"
ENDPOINT = "example-gpu.sock"
Ctx = grpc.aio.ServicerContext[Any, Any]


class TinyDevicePlugin(dp.pb2_grpc.DevicePluginServicer):
    """Just enough of a device plugin to exercise every RPC."""

    def __init__(self, ids: list[str], options: dp.pb2.DevicePluginOptions) -> None:
        self.health = dict.fromkeys(ids, dp.HEALTHY)
        self.options = options
        self.pre_started: list[list[str]] = []
        self.streams_ended = 0
        self._version = 0
        self._changed = asyncio.Condition()

    async def set_health(self, device_id: str, health: str) -> None:
        async with self._changed:
            self.health[device_id] = health
            self._version += 1
            self._changed.notify_all()

    def _newer_than(self, version: int) -> bool:
        return self._version != version

    async def GetDevicePluginOptions(self, request: dp.pb2.Empty, context: Ctx) -> Any:
        return self.options

    async def ListAndWatch(self, request: dp.pb2.Empty, context: Ctx) -> AsyncIterator[Any]:
        sent = -1
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(partial(self._newer_than, sent))
                    sent = self._version
                    devices = [
                        dp.pb2.Device(
                            ID=i,
                            health=h,
                            topology=dp.pb2.TopologyInfo(nodes=[dp.pb2.NUMANode(ID=n % 2)]),
                        )
                        for n, (i, h) in enumerate(sorted(self.health.items()))
                    ]
                yield dp.pb2.ListAndWatchResponse(devices=devices)
        finally:
            self.streams_ended += 1

    async def Allocate(self, request: dp.pb2.AllocateRequest, context: Ctx) -> Any:
        responses = []
        for container in request.container_requests:
            unknown = [i for i in container.devices_ids if i not in self.health]
            if unknown:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown devices {unknown}")
            responses.append(
                dp.pb2.ContainerAllocateResponse(
                    envs={"VISIBLE_DEVICES": ",".join(container.devices_ids)},
                    annotations={"example.com/allocated": str(len(container.devices_ids))},
                    cdi_devices=[
                        dp.pb2.CDIDevice(name=f"example.com/gpu={i}") for i in container.devices_ids
                    ],
                    mounts=[dp.pb2.Mount(container_path="/bin/tool", host_path="/opt/tool")],
                    devices=[
                        dp.pb2.DeviceSpec(
                            container_path="/dev/x0", host_path="/dev/null", permissions="rw"
                        )
                    ],
                )
            )
        return dp.pb2.AllocateResponse(container_responses=responses)

    async def GetPreferredAllocation(
        self, request: dp.pb2.PreferredAllocationRequest, context: Ctx
    ) -> Any:
        # A recognisable policy: required devices first, then the highest IDs.
        answers = []
        for req in request.container_requests:
            chosen = list(req.must_include_deviceIDs)
            for i in sorted(req.available_deviceIDs, reverse=True):
                if len(chosen) >= req.allocation_size:
                    break
                if i not in chosen:
                    chosen.append(i)
            answers.append(dp.pb2.ContainerPreferredAllocationResponse(deviceIDs=chosen))
        return dp.pb2.PreferredAllocationResponse(container_responses=answers)

    async def PreStartContainer(
        self, request: dp.pb2.PreStartContainerRequest, context: Ctx
    ) -> Any:
        self.pre_started.append(list(request.devices_ids))
        return dp.pb2.PreStartContainerResponse()


async def serve_plugin(sock_dir: Path, plugin: TinyDevicePlugin) -> grpc.aio.Server:
    server = grpc.aio.server()
    dp.pb2_grpc.add_DevicePluginServicer_to_server(plugin, server)
    server.add_insecure_port(f"unix:{sock_dir / ENDPOINT}")
    await server.start()
    return server


async def register(
    sock_dir: Path,
    options: dp.pb2.DevicePluginOptions,
    *,
    version: str = dp.VERSION,
    resource: str = RESOURCE,
    endpoint: str = ENDPOINT,
) -> None:
    async with grpc.aio.insecure_channel(f"unix:{sock_dir / dp.KUBELET_SOCKET_NAME}") as channel:
        await dp.pb2_grpc.RegistrationStub(channel).Register(
            dp.pb2.RegisterRequest(
                version=version, endpoint=endpoint, resource_name=resource, options=options
            ),
            timeout=10,
        )


OPTIONS = dp.pb2.DevicePluginOptions(
    pre_start_required=True, get_preferred_allocation_available=True
)
IDS = ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]


@pytest.fixture
async def plugin_and_peer(
    sock_dir: Path,
) -> AsyncIterator[tuple[TinyDevicePlugin, DevicePluginKubeletPeer]]:
    plugin = TinyDevicePlugin(IDS, OPTIONS)
    async with DevicePluginKubeletPeer(sock_dir) as peer:
        server = await serve_plugin(sock_dir, plugin)
        try:
            await register(sock_dir, OPTIONS)
            yield plugin, peer
        finally:
            await server.stop(grace=None)


async def test_register_connects_and_lists(
    plugin_and_peer: tuple[TinyDevicePlugin, DevicePluginKubeletPeer],
) -> None:
    _, peer = plugin_and_peer
    # The kubelet connects inside Register, so the plugin is known once Register returned.
    connection = peer.plugin(RESOURCE)
    assert [r.resource_name for r in peer.registrations] == [RESOURCE]
    assert peer.registrations[0].version == "v1beta1"
    assert peer.registrations[0].endpoint == ENDPOINT
    assert connection.options.pre_start_required
    assert connection.options.get_preferred_allocation_available
    devices = await connection.wait_for_devices()
    assert [(d.ID, d.health) for d in devices] == [(i, dp.HEALTHY) for i in IDS]
    assert [d.topology.nodes[0].ID for d in devices] == [0, 1, 0, 1]
    assert connection.healthy_ids() == IDS


async def test_health_changes_arrive_in_order_on_the_queue(
    plugin_and_peer: tuple[TinyDevicePlugin, DevicePluginKubeletPeer],
) -> None:
    plugin, peer = plugin_and_peer
    first = await asyncio.wait_for(peer.updates.get(), 5)
    assert all(d.health == dp.HEALTHY for d in first)
    await plugin.set_health("GPU-b", dp.UNHEALTHY)
    second = await asyncio.wait_for(peer.updates.get(), 5)
    assert {d.ID: d.health for d in second}["GPU-b"] == dp.UNHEALTHY
    await plugin.set_health("GPU-b", dp.HEALTHY)
    await peer.plugin().wait_for_devices(lambda ds: all(d.health == dp.HEALTHY for d in ds))
    assert peer.plugin().list_count == 3


async def test_allocate_returns_the_plugins_answer(
    plugin_and_peer: tuple[TinyDevicePlugin, DevicePluginKubeletPeer],
) -> None:
    _, peer = plugin_and_peer
    response = await peer.allocate(["GPU-a", "GPU-c"])
    assert dict(response.envs) == {"VISIBLE_DEVICES": "GPU-a,GPU-c"}
    assert dict(response.annotations) == {"example.com/allocated": "2"}
    assert [c.name for c in response.cdi_devices] == [
        "example.com/gpu=GPU-a",
        "example.com/gpu=GPU-c",
    ]
    assert (response.mounts[0].container_path, response.mounts[0].host_path) == (
        "/bin/tool",
        "/opt/tool",
    )
    assert response.devices[0].permissions == "rw"


async def test_allocate_unknown_device_surfaces_invalid_argument(
    plugin_and_peer: tuple[TinyDevicePlugin, DevicePluginKubeletPeer],
) -> None:
    _, peer = plugin_and_peer
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await peer.allocate(["GPU-zzz"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_preferred_allocation_and_pre_start(
    plugin_and_peer: tuple[TinyDevicePlugin, DevicePluginKubeletPeer],
) -> None:
    plugin, peer = plugin_and_peer
    preferred = await peer.get_preferred_allocation(IDS, 3, must_include=["GPU-a"])
    assert preferred == ["GPU-a", "GPU-d", "GPU-c"]
    await peer.pre_start_container(["GPU-a", "GPU-d"])
    assert plugin.pre_started == [["GPU-a", "GPU-d"]]


async def test_optional_rpcs_are_refused_unless_advertised(sock_dir: Path) -> None:
    bare = dp.pb2.DevicePluginOptions()
    plugin = TinyDevicePlugin(IDS, bare)
    async with DevicePluginKubeletPeer(sock_dir) as peer:
        server = await serve_plugin(sock_dir, plugin)
        try:
            await register(sock_dir, bare)
            connection = peer.plugin()
            with pytest.raises(PeerError, match="GetPreferredAllocation"):
                await connection.get_preferred_allocation(IDS, 1)
            with pytest.raises(PeerError, match="PreStartContainer"):
                await connection.pre_start_container(["GPU-a"])
            # force=True still reaches the plugin, for tests of plugins that misadvertise.
            assert await connection.get_preferred_allocation(IDS, 1, force=True) == ["GPU-d"]
        finally:
            await server.stop(grace=None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": "v1alpha"}, 'requested API version "v1alpha" is not supported by kubelet'),
        ({"resource": "gpu"}, 'the ResourceName "gpu" is invalid'),
        ({"endpoint": "nobody-listens.sock"}, "failed to dial device plugin"),
    ],
)
async def test_bad_registrations_are_rejected(
    sock_dir: Path, kwargs: dict[str, str], message: str
) -> None:
    async with DevicePluginKubeletPeer(sock_dir, dial_timeout_seconds=0.5) as peer:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await register(sock_dir, OPTIONS, **kwargs)
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        assert message in (info.value.details() or "")
        assert len(peer.registrations) == 1
        assert peer.rejections[0][1].startswith(message.split(" ", maxsplit=1)[0])
        assert peer.plugins == {}


async def test_restart_recreates_kubelet_sock_and_drops_plugin_sockets(sock_dir: Path) -> None:
    plugin = TinyDevicePlugin(IDS, OPTIONS)
    async with DevicePluginKubeletPeer(sock_dir) as peer:
        server = await serve_plugin(sock_dir, plugin)
        try:
            await register(sock_dir, OPTIONS)
            await peer.plugin().wait_for_devices()
            # A hard link keeps the old socket's inode alive, so a re-created kubelet.sock must
            # get a different one (a subdirectory, because the restart wipes sockets in sock_dir).
            (sock_dir / "keep").mkdir()
            os.link(sock_dir / "kubelet.sock", sock_dir / "keep" / "old-kubelet.sock")

            await peer.restart()

            new_inode = (sock_dir / "kubelet.sock").stat().st_ino
            assert new_inode != (sock_dir / "keep" / "old-kubelet.sock").stat().st_ino
            # Like the kubelet, the restart wiped the plugin's socket and closed its stream.
            assert not (sock_dir / ENDPOINT).exists()
            assert peer.plugins == {}
            async with asyncio.timeout(5):
                while plugin.streams_ended < 1:
                    await asyncio.sleep(0.01)
        finally:
            await server.stop(grace=None)

        # A well-behaved plugin re-serves and re-registers; the peer reconnects.
        server = await serve_plugin(sock_dir, plugin)
        try:
            await register(sock_dir, OPTIONS)
            await peer.wait_for_registrations(2)
            devices = await (await peer.wait_for_plugin(RESOURCE)).wait_for_devices()
            assert [d.ID for d in devices] == IDS
            assert peer.restarts == 1
        finally:
            await server.stop(grace=None)


async def test_restart_can_keep_plugin_sockets(sock_dir: Path) -> None:
    plugin = TinyDevicePlugin(IDS, OPTIONS)
    async with DevicePluginKubeletPeer(sock_dir, cleanup_plugin_sockets=False) as peer:
        server = await serve_plugin(sock_dir, plugin)
        try:
            await register(sock_dir, OPTIONS)
            await peer.restart()
            assert (sock_dir / ENDPOINT).exists()
            await register(sock_dir, OPTIONS)
            assert len(peer.registrations) == 2
            await peer.plugin().wait_for_devices()
        finally:
            await server.stop(grace=None)


async def test_stopped_plugin_raises_peer_error_on_wait(sock_dir: Path) -> None:
    plugin = TinyDevicePlugin(IDS, OPTIONS)
    async with DevicePluginKubeletPeer(sock_dir) as peer:
        server = await serve_plugin(sock_dir, plugin)
        try:
            await register(sock_dir, OPTIONS)
            connection = peer.plugin()
            await connection.wait_for_devices()
        finally:
            await server.stop(grace=None)
        async with asyncio.timeout(5):
            await connection.stream_closed.wait()
        assert connection.stream_error is not None
        with pytest.raises(PeerError, match=re.escape("ListAndWatch of example.com/gpu ended")):
            await connection.wait_for_devices(lambda ds: len(ds) > 10, timeout_seconds=5)
