"""DraKubeletPeer against a tiny in-test DRA plugin, over real unix sockets."""

# ruff: noqa: N802 - servicer methods carry the gRPC method names.

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from fgo_kubelet_api import dra_v1, dra_v1beta1
from fgo_kubelet_api import pluginregistration_v1 as reg
from fgo_testkit.kubelet import DraKubeletPeer, PeerError, claim

DRIVER = "gpu.example.com"
BOTH = [dra_v1.DRA_PLUGIN_SERVICE, dra_v1beta1.DRA_PLUGIN_SERVICE]
Ctx = grpc.aio.ServicerContext[Any, Any]


@dataclass
class Calls:
    """What the plugin saw: (service, method, claim names), in order."""

    log: list[tuple[str, str, list[str]]] = field(default_factory=list)
    statuses: list[tuple[bool, str]] = field(default_factory=list)
    status_seen: asyncio.Event = field(default_factory=asyncio.Event)


class TinyRegistration(reg.pb2_grpc.RegistrationServicer):
    def __init__(self, info: reg.pb2.PluginInfo, calls: Calls) -> None:
        self.info = info
        self.calls = calls

    async def GetInfo(self, request: reg.pb2.InfoRequest, context: Ctx) -> Any:
        return self.info

    async def NotifyRegistrationStatus(
        self, request: reg.pb2.RegistrationStatus, context: Ctx
    ) -> Any:
        self.calls.statuses.append((request.plugin_registered, request.error))
        self.calls.status_seen.set()
        return reg.pb2.RegistrationStatusResponse()


def _prepare(module: Any, request: Any, calls: Calls, service: str) -> Any:
    calls.log.append((service, "prepare", [c.name for c in request.claims]))
    response = module.pb2.NodePrepareResourcesResponse()
    for c in request.claims:
        if c.name == "broken":
            response.claims[c.uid].error = f"cannot prepare {c.namespace}/{c.name}"
            continue
        response.claims[c.uid].devices.add(
            request_names=["gpu"],
            pool_name="node-a",
            device_name=f"gpu-{c.name}",
            cdi_device_ids=[f"{DRIVER}/gpu={c.uid}"],
        )
    return response


def _unprepare(module: Any, request: Any, calls: Calls, service: str) -> Any:
    calls.log.append((service, "unprepare", [c.name for c in request.claims]))
    response = module.pb2.NodeUnprepareResourcesResponse()
    for c in request.claims:
        response.claims[c.uid].error = ""
    return response


class TinyDraV1(dra_v1.pb2_grpc.DRAPluginServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def NodePrepareResources(self, request: Any, context: Ctx) -> Any:
        response = _prepare(dra_v1, request, self.calls, dra_v1.DRA_PLUGIN_SERVICE)
        for result in response.claims.values():
            for device in result.devices:
                device.share_id = "share-1"  # only v1 can carry it
        return response

    async def NodeUnprepareResources(self, request: Any, context: Ctx) -> Any:
        return _unprepare(dra_v1, request, self.calls, dra_v1.DRA_PLUGIN_SERVICE)


class TinyDraV1Beta1(dra_v1beta1.pb2_grpc.DRAPluginServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def NodePrepareResources(self, request: Any, context: Ctx) -> Any:
        return _prepare(dra_v1beta1, request, self.calls, dra_v1beta1.DRA_PLUGIN_SERVICE)

    async def NodeUnprepareResources(self, request: Any, context: Ctx) -> Any:
        return _unprepare(dra_v1beta1, request, self.calls, dra_v1beta1.DRA_PLUGIN_SERVICE)


@dataclass
class TinyDraPlugin:
    registration_socket: Path
    dra_socket: Path
    calls: Calls
    servers: list[grpc.aio.Server]

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop(grace=None)


async def start_plugin(
    sock_dir: Path,
    *,
    supported: Sequence[str] = tuple(BOTH),
    plugin_type: str = reg.DRA_PLUGIN,
    driver: str = DRIVER,
    calls: Calls | None = None,
) -> TinyDraPlugin:
    """Serve DRA first, then the registration socket, like the kubeletplugin helper."""
    calls = calls or Calls()
    dra_socket = sock_dir / "plugins" / driver / reg.DRA_SOCKET_NAME
    dra_socket.parent.mkdir(parents=True, exist_ok=True)
    dra_server = grpc.aio.server()
    dra_v1.pb2_grpc.add_DRAPluginServicer_to_server(TinyDraV1(calls), dra_server)
    dra_v1beta1.pb2_grpc.add_DRAPluginServicer_to_server(TinyDraV1Beta1(calls), dra_server)
    dra_server.add_insecure_port(f"unix:{dra_socket}")
    await dra_server.start()

    registration_socket = sock_dir / "registry" / reg.registration_socket_name(driver)
    registration_socket.parent.mkdir(parents=True, exist_ok=True)
    info = reg.pb2.PluginInfo(
        type=plugin_type, name=driver, endpoint=str(dra_socket), supported_versions=supported
    )
    reg_server = grpc.aio.server()
    reg.pb2_grpc.add_RegistrationServicer_to_server(TinyRegistration(info, calls), reg_server)
    reg_server.add_insecure_port(f"unix:{registration_socket}")
    await reg_server.start()
    return TinyDraPlugin(registration_socket, dra_socket, calls, [reg_server, dra_server])


@pytest.fixture
async def plugin(sock_dir: Path) -> AsyncIterator[TinyDraPlugin]:
    started = await start_plugin(sock_dir)
    try:
        yield started
    finally:
        await started.stop()


async def test_watcher_registers_and_prepares_over_v1(
    sock_dir: Path, plugin: TinyDraPlugin
) -> None:
    async with DraKubeletPeer(sock_dir / "registry") as peer:
        connection = await peer.wait_for_plugin(DRIVER, timeout_seconds=5)
        assert connection.service == "v1.DRAPlugin"
        assert connection.endpoint == plugin.dra_socket
        await asyncio.wait_for(plugin.calls.status_seen.wait(), 5)
        assert plugin.calls.statuses == [(True, "")]

        claims = [claim("uid-1", "train", "ml"), claim("uid-2", "broken", "ml")]
        prepared = await peer.prepare(claims)
        assert set(prepared.claims) == {"uid-1", "uid-2"}
        ok = prepared.claims["uid-1"]
        assert ok.error == ""
        assert [(d.pool_name, d.device_name, list(d.cdi_device_ids)) for d in ok.devices] == [
            ("node-a", "gpu-train", [f"{DRIVER}/gpu=uid-1"])
        ]
        assert ok.devices[0].share_id == "share-1"
        assert prepared.claims["uid-2"].error == "cannot prepare ml/broken"

        unprepared = await peer.unprepare(claims[:1])
        assert dict(unprepared.claims).keys() == {"uid-1"}
        assert plugin.calls.log == [
            ("v1.DRAPlugin", "prepare", ["train", "broken"]),
            ("v1.DRAPlugin", "unprepare", ["train"]),
        ]


async def test_v1beta1_when_asked_per_call_or_by_an_older_kubelet(
    sock_dir: Path, plugin: TinyDraPlugin
) -> None:
    async with DraKubeletPeer(sock_dir / "registry") as peer:
        await peer.wait_for_plugin(DRIVER, timeout_seconds=5)
        beta = await peer.prepare([claim("uid-1", "a")], service="v1beta1.DRAPlugin")
        # Answered by the v1beta1 servicer and converted to v1 through the wire format.
        assert isinstance(beta, dra_v1.pb2.NodePrepareResourcesResponse)
        assert beta.claims["uid-1"].devices[0].device_name == "gpu-a"
        assert not beta.claims["uid-1"].devices[0].HasField("share_id")
        await peer.unprepare([claim("uid-1", "a")], service="v1beta1.DRAPlugin")

    async with DraKubeletPeer(sock_dir / "registry", kubelet_services=["v1beta1.DRAPlugin"]) as old:
        connection = await old.wait_for_plugin(DRIVER, timeout_seconds=5)
        assert connection.service == "v1beta1.DRAPlugin"
        await old.prepare([claim("uid-2", "b")])

    assert [(s, m) for s, m, _ in plugin.calls.log] == [
        ("v1beta1.DRAPlugin", "prepare"),
        ("v1beta1.DRAPlugin", "unprepare"),
        ("v1beta1.DRAPlugin", "prepare"),
    ]


async def test_service_not_offered_by_the_plugin_is_refused(sock_dir: Path) -> None:
    only_v1 = await start_plugin(sock_dir, supported=["v1.DRAPlugin"])
    try:
        async with DraKubeletPeer(sock_dir / "registry") as peer:
            await peer.wait_for_plugin(DRIVER, timeout_seconds=5)
            with pytest.raises(PeerError, match=r"does not offer v1beta1\.DRAPlugin"):
                await peer.prepare([claim("u", "n")], service="v1beta1.DRAPlugin")
    finally:
        await only_v1.stop()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"plugin_type": reg.CSI_PLUGIN},
            "RegisterPlugin error -- no handler registered for plugin type: CSIPlugin at socket",
        ),
        (
            {"supported": ["v2.DRAPlugin"]},
            'none of services supported by the plugin (["v2.DRAPlugin"]) are supported by the '
            'kubelet (["v1.DRAPlugin" "v1beta1.DRAPlugin"])',
        ),
        ({"supported": []}, "empty list of supported gRPC services"),
    ],
)
async def test_invalid_plugins_are_told_why(
    sock_dir: Path, kwargs: dict[str, Any], message: str
) -> None:
    bad = await start_plugin(sock_dir, **kwargs)
    try:
        async with DraKubeletPeer(sock_dir / "registry") as peer:
            attempts = await peer.wait_for_attempts(1, timeout_seconds=5)
            assert not attempts[0].accepted
            assert message in attempts[0].error
            assert attempts[0].info is not None and attempts[0].info.name == DRIVER
            assert peer.plugins == {}
        assert bad.calls.statuses[0][0] is False
        assert message in bad.calls.statuses[0][1]
    finally:
        await bad.stop()


async def test_failed_registrations_are_retried(sock_dir: Path) -> None:
    bad = await start_plugin(sock_dir, supported=["v2.DRAPlugin"])
    try:
        peer = DraKubeletPeer(sock_dir / "registry", retry_interval_seconds=0.1)
        async with peer:
            await peer.wait_for_attempts(3, timeout_seconds=5)
        assert len(bad.calls.statuses) >= 3
    finally:
        await bad.stop()


async def test_socket_appearing_later_and_disappearing(sock_dir: Path) -> None:
    registry = sock_dir / "registry"
    registry.mkdir()
    # Things the kubelet's watcher ignores: plain files and dot-files.
    (registry / "notes.txt").write_text("not a socket")
    async with DraKubeletPeer(registry) as peer:
        late = await start_plugin(sock_dir)
        try:
            await peer.wait_for_plugin(DRIVER, timeout_seconds=5)
        finally:
            await late.stop()
        # gRPC removes the socket file when the server stops -> deregistration.
        if late.registration_socket.exists():
            late.registration_socket.unlink()
        await peer.wait_for_no_plugin(DRIVER, timeout_seconds=5)
        assert [a.socket_path.name for a in peer.attempts] == [f"{DRIVER}-reg.sock"]


async def test_hidden_sockets_are_ignored(sock_dir: Path) -> None:
    hidden = await start_plugin(sock_dir, driver=".hidden.example.com")
    try:
        async with DraKubeletPeer(sock_dir / "registry", poll_interval_seconds=0.01) as peer:
            await asyncio.sleep(0.2)
            assert peer.attempts == []
    finally:
        await hidden.stop()


async def test_restart_reregisters_existing_sockets(sock_dir: Path, plugin: TinyDraPlugin) -> None:
    async with DraKubeletPeer(sock_dir / "registry") as peer:
        first = await peer.wait_for_plugin(DRIVER, timeout_seconds=5)
        await peer.restart()
        # start() scans synchronously, so the plugin is back as soon as restart() returns.
        second = peer.plugin(DRIVER)
        assert second is not first
        assert peer.restarts == 1
        assert plugin.calls.statuses == [(True, ""), (True, "")]
        prepared = await peer.prepare([claim("uid-9", "after-restart")])
        assert prepared.claims["uid-9"].devices[0].device_name == "gpu-after-restart"


async def test_recreated_socket_is_a_new_registration(sock_dir: Path) -> None:
    calls = Calls()
    first = await start_plugin(sock_dir, calls=calls)
    async with DraKubeletPeer(sock_dir / "registry") as peer:
        try:
            await peer.wait_for_plugin(DRIVER, timeout_seconds=5)
        finally:
            await first.stop()
        first.registration_socket.unlink(missing_ok=True)
        await peer.wait_for_no_plugin(DRIVER, timeout_seconds=5)
        second = await start_plugin(sock_dir, calls=calls)
        try:
            await peer.wait_for_plugin(DRIVER, timeout_seconds=5)
            assert calls.statuses == [(True, ""), (True, "")]
            await peer.prepare([claim("u", "n")])
        finally:
            await second.stop()


async def test_watcher_survives_a_failing_scan(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One unexpected error while registering must not end the watcher: the plugin is still
    registered on a later pass (a dead watcher would leave every call on a dead endpoint)."""
    peer = DraKubeletPeer(sock_dir / "registry", poll_interval_seconds=0.01)
    real_register = peer._register
    failures = 0

    async def flaky_register(path: Path) -> bool:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RuntimeError("unexpected failure while registering")
        return await real_register(path)

    monkeypatch.setattr(peer, "_register", flaky_register)
    async with peer:
        late = await start_plugin(sock_dir)
        try:
            await peer.wait_for_plugin(DRIVER, timeout_seconds=5)
            assert peer.scan_failures == 2
            prepared = await peer.prepare([claim("uid-1", "after-failures")])
            assert prepared.claims["uid-1"].devices
        finally:
            await late.stop()
