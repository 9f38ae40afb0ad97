"""A kubelet stand-in for DRA plugins, for tests and benchmarks.

It plays the kubelet's plugin watcher plus its DRA plugin manager:

1. watch a registry directory (like ``/var/lib/kubelet/plugins_registry``) for unix sockets,
   recursively, ignoring names starting with "." - by polling, which is simpler than inotify
   and plenty fast for tests (50 ms by default);
2. for each new (or re-created) socket: dial it, ``GetInfo`` (1 s timeout), check the type is
   "DRAPlugin" and that one of ``supported_versions`` is a service this "kubelet" speaks, then
   ``NotifyRegistrationStatus`` with the verdict - the kubelet's order and error wording;
3. keep a channel to ``PluginInfo.endpoint`` and offer ``prepare`` / ``unprepare`` over the
   chosen service, v1 or v1beta1 (v1beta1 messages are converted through the wire format,
   which is what the kubelet's v1beta1 wrapper amounts to);
4. a socket that disappears deregisters its plugin; failed registrations are retried
   (the kubelet's reconciler retries every second).

``restart()`` forgets every registration and rescans the directory, as a restarted kubelet
does; registration sockets are not removed by a kubelet restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc
import structlog
from fgo_kubelet_api import dra_v1, dra_v1beta1
from fgo_kubelet_api import pluginregistration_v1 as reg
from fgo_kubelet_api.dra import SERVICES_SUPPORTED_BY_KUBELET, choose_service
from google.protobuf.message import Message

from fgo_testkit.kubelet._unix import PeerError, insecure_unix_channel

if TYPE_CHECKING:
    from fgo_kubelet_api.gen.dra.v1.api_pb2_grpc import DRAPluginAsyncStub as V1Stub
    from fgo_kubelet_api.gen.dra.v1beta1.api_pb2_grpc import DRAPluginAsyncStub as V1Beta1Stub
    from fgo_kubelet_api.gen.pluginregistration.v1.api_pb2_grpc import (
        RegistrationAsyncStub,
    )

__all__ = ["DraKubeletPeer", "DraPluginConnection", "RegistrationAttempt", "claim"]

log = structlog.get_logger("fgo_testkit.kubelet.dra")

_M = TypeVar("_M", bound=Message)


def _convert(message: Message, target: type[_M]) -> _M:
    """Re-read a message as another, wire-compatible message type."""
    return target.FromString(message.SerializeToString())


def claim(uid: str, name: str, namespace: str = "default") -> dra_v1.pb2.Claim:
    return dra_v1.pb2.Claim(uid=uid, name=name, namespace=namespace)


@dataclass(frozen=True)
class RegistrationAttempt:
    """One pass of the kubelet's registration for a socket, and its verdict."""

    socket_path: Path
    info: reg.pb2.PluginInfo | None
    accepted: bool
    error: str = ""


class DraPluginConnection:
    """The kubelet's client of one registered DRA plugin."""

    def __init__(
        self,
        info: reg.pb2.PluginInfo,
        socket_path: Path,
        service: str,
        call_timeout_seconds: float,
    ) -> None:
        self.info = info
        self.driver_name = info.name
        self.registration_socket = socket_path
        self.endpoint = Path(info.endpoint) if info.endpoint else socket_path
        self.supported_versions = tuple(info.supported_versions)
        self.service = service
        self.call_timeout_seconds = call_timeout_seconds
        # Like the kubelet's grpc.NewClient: connects lazily on the first call.
        self._channel = insecure_unix_channel(self.endpoint)
        self._v1: V1Stub = dra_v1.pb2_grpc.DRAPluginStub(self._channel)
        self._v1beta1: V1Beta1Stub = dra_v1beta1.pb2_grpc.DRAPluginStub(self._channel)

    def _pick(self, service: str | None) -> str:
        chosen = service or self.service
        if chosen not in self.supported_versions:
            raise PeerError(
                f"{self.driver_name} does not offer {chosen}; it offers {self.supported_versions}"
            )
        return chosen

    async def prepare(
        self, claims: Iterable[dra_v1.pb2.Claim], *, service: str | None = None
    ) -> dra_v1.pb2.NodePrepareResourcesResponse:
        """NodePrepareResources over the chosen service (or ``service``), answer as v1."""
        request = dra_v1.pb2.NodePrepareResourcesRequest(claims=list(claims))
        if self._pick(service) == dra_v1beta1.DRA_PLUGIN_SERVICE:
            response = await self._v1beta1.NodePrepareResources(
                _convert(request, dra_v1beta1.pb2.NodePrepareResourcesRequest),
                timeout=self.call_timeout_seconds,
            )
            return _convert(response, dra_v1.pb2.NodePrepareResourcesResponse)
        return await self._v1.NodePrepareResources(request, timeout=self.call_timeout_seconds)

    async def unprepare(
        self, claims: Iterable[dra_v1.pb2.Claim], *, service: str | None = None
    ) -> dra_v1.pb2.NodeUnprepareResourcesResponse:
        request = dra_v1.pb2.NodeUnprepareResourcesRequest(claims=list(claims))
        if self._pick(service) == dra_v1beta1.DRA_PLUGIN_SERVICE:
            response = await self._v1beta1.NodeUnprepareResources(
                _convert(request, dra_v1beta1.pb2.NodeUnprepareResourcesRequest),
                timeout=self.call_timeout_seconds,
            )
            return _convert(response, dra_v1.pb2.NodeUnprepareResourcesResponse)
        return await self._v1.NodeUnprepareResources(request, timeout=self.call_timeout_seconds)

    async def close(self) -> None:
        await self._channel.close(None)


@dataclass
class _SocketState:
    key: tuple[int, int]  # (inode, ctime_ns): a re-created socket is a new plugin instance
    registered: bool = False
    last_attempt: float = 0.0


class DraKubeletPeer:
    """Watches ``registry_dir`` and registers DRA plugins like the kubelet."""

    def __init__(
        self,
        registry_dir: Path | str,
        *,
        kubelet_services: Sequence[str] = SERVICES_SUPPORTED_BY_KUBELET,
        poll_interval_seconds: float = 0.05,
        retry_interval_seconds: float = 1.0,
        dial_timeout_seconds: float = 10.0,
        call_timeout_seconds: float = 45.0,
    ) -> None:
        self.registry_dir = Path(registry_dir)
        # Which DRA services this "kubelet" speaks; ("v1beta1.DRAPlugin",) acts as an older one.
        self.kubelet_services = tuple(kubelet_services)
        self.poll_interval_seconds = poll_interval_seconds
        self.retry_interval_seconds = retry_interval_seconds
        self.dial_timeout_seconds = dial_timeout_seconds
        self.call_timeout_seconds = call_timeout_seconds
        self.attempts: list[RegistrationAttempt] = []
        self.plugins: dict[str, DraPluginConnection] = {}
        self.restarts = 0
        self.scan_failures = 0
        self._sockets: dict[Path, _SocketState] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DraKubeletPeer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._task is not None:
            raise PeerError("peer already started")
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        # One synchronous scan first, so sockets already present are handled before start()
        # returns (the kubelet also walks the directory before watching it).
        await self._scan()
        self._task = asyncio.create_task(self._watch(), name="kubelet-peer-plugin-watcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        plugins, self.plugins = self.plugins, {}
        for connection in plugins.values():
            await connection.close()
        self._sockets.clear()

    async def restart(self, downtime_seconds: float = 0.0) -> None:
        """Kubelet restart: forget all plugins, then rediscover every socket in the directory."""
        await self.stop()
        if downtime_seconds > 0:
            await asyncio.sleep(downtime_seconds)
        self.restarts += 1
        await self.start()

    async def _watch(self) -> None:
        # The kubelet's plugin watcher outlives any one bad socket. An exception escaping here
        # would end the task silently: a restarted plugin would never be registered again and
        # every call would go to the dead instance's endpoint.
        while True:
            await asyncio.sleep(self.poll_interval_seconds)
            try:
                await self._scan()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.scan_failures += 1
                log.exception("dra.peer.scan_failed", registry=str(self.registry_dir))

    def _list_sockets(self) -> dict[Path, tuple[int, int]]:
        found: dict[Path, tuple[int, int]] = {}
        for root, dirs, files in os.walk(self.registry_dir):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(root) / name
                try:
                    st = path.stat()
                except OSError:
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    found[path] = (st.st_ino, st.st_ctime_ns)
        return found

    async def _scan(self) -> None:
        found = self._list_sockets()
        for path in [p for p in self._sockets if p not in found]:
            await self._deregister(path)
            del self._sockets[path]
        loop = asyncio.get_running_loop()
        for path, key in sorted(found.items()):
            state = self._sockets.get(path)
            if state is not None and state.key != key:
                await self._deregister(path)
                state = None
            if state is None:
                state = self._sockets[path] = _SocketState(key)
            elif state.registered or (
                loop.time() - state.last_attempt < self.retry_interval_seconds
            ):
                continue
            state.last_attempt = loop.time()
            state.registered = await self._register(path)

    async def _deregister(self, socket_path: Path) -> None:
        for driver, connection in list(self.plugins.items()):
            if connection.registration_socket == socket_path:
                del self.plugins[driver]
                await connection.close()
                log.info("dra.peer.deregistered", driver=driver, socket=str(socket_path))
                async with self._changed:
                    self._changed.notify_all()

    async def _register(self, socket_path: Path) -> bool:
        channel = insecure_unix_channel(socket_path)
        stub: RegistrationAsyncStub = reg.pb2_grpc.RegistrationStub(channel)
        info: reg.pb2.PluginInfo | None = None
        error: str | None
        try:
            async with asyncio.timeout(self.dial_timeout_seconds):
                await channel.channel_ready()
            info = await stub.GetInfo(reg.pb2.InfoRequest(), timeout=1.0)
            error = self._validate(socket_path, info)
            # The kubelet adds the plugin before notifying and drops it again if the
            # notification fails; creating the connection afterwards has the same outcome.
            await stub.NotifyRegistrationStatus(
                reg.pb2.RegistrationStatus(plugin_registered=error is None, error=error or ""),
                timeout=self.dial_timeout_seconds,
            )
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            error = f"RegisterPlugin error -- at socket {socket_path}: {exc!r}"
        finally:
            await channel.close(None)
        await self._record(RegistrationAttempt(socket_path, info, error is None, error or ""))
        if error is not None or info is None:
            log.warning("dra.peer.rejected", socket=str(socket_path), error=error)
            return False
        connection = DraPluginConnection(
            info,
            socket_path,
            choose_service(list(info.supported_versions), self.kubelet_services),
            self.call_timeout_seconds,
        )
        old = self.plugins.get(connection.driver_name)
        self.plugins[connection.driver_name] = connection
        if old is not None:
            await old.close()
        log.info(
            "dra.peer.registered",
            driver=connection.driver_name,
            endpoint=str(connection.endpoint),
            service=connection.service,
        )
        async with self._changed:
            self._changed.notify_all()
        return True

    def _validate(self, socket_path: Path, info: reg.pb2.PluginInfo) -> str | None:
        if info.type != reg.DRA_PLUGIN:
            return (
                f"RegisterPlugin error -- no handler registered for plugin type: {info.type} "
                f"at socket {socket_path}"
            )
        endpoint = info.endpoint or str(socket_path)
        try:
            choose_service(list(info.supported_versions), self.kubelet_services)
        except ValueError as exc:
            return (
                "RegisterPlugin error -- plugin validation failed with err: invalid supported "
                f"gRPC versions of DRA driver plugin {info.name} at endpoint {endpoint}: {exc}"
            )
        return None

    async def _record(self, attempt: RegistrationAttempt) -> None:
        async with self._changed:
            self.attempts.append(attempt)
            self._changed.notify_all()

    async def wait_for_plugin(
        self, driver_name: str | None = None, timeout_seconds: float = 10.0
    ) -> DraPluginConnection:
        """Wait until a plugin (for ``driver_name``, or any) is registered."""

        def found() -> DraPluginConnection | None:
            if driver_name is None:
                return next(iter(self.plugins.values()), None)
            return self.plugins.get(driver_name)

        async with asyncio.timeout(timeout_seconds), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        connection = found()
        assert connection is not None
        return connection

    async def wait_for_attempts(
        self, count: int, timeout_seconds: float = 10.0
    ) -> list[RegistrationAttempt]:
        """Wait until ``count`` registration attempts (accepted or not) have been made."""
        async with asyncio.timeout(timeout_seconds), self._changed:
            await self._changed.wait_for(lambda: len(self.attempts) >= count)
        return list(self.attempts)

    async def wait_for_no_plugin(self, driver_name: str, timeout_seconds: float = 10.0) -> None:
        async with asyncio.timeout(timeout_seconds), self._changed:
            await self._changed.wait_for(lambda: driver_name not in self.plugins)

    def plugin(self, driver_name: str | None = None) -> DraPluginConnection:
        if driver_name is not None:
            try:
                return self.plugins[driver_name]
            except KeyError:
                raise PeerError(f"no DRA plugin registered for {driver_name}") from None
        if len(self.plugins) != 1:
            raise PeerError(f"expected exactly one registered plugin, have {sorted(self.plugins)}")
        return next(iter(self.plugins.values()))

    async def prepare(
        self,
        claims: Iterable[dra_v1.pb2.Claim],
        driver_name: str | None = None,
        *,
        service: str | None = None,
    ) -> dra_v1.pb2.NodePrepareResourcesResponse:
        return await self.plugin(driver_name).prepare(claims, service=service)

    async def unprepare(
        self,
        claims: Iterable[dra_v1.pb2.Claim],
        driver_name: str | None = None,
        *,
        service: str | None = None,
    ) -> dra_v1.pb2.NodeUnprepareResourcesResponse:
        return await self.plugin(driver_name).unprepare(claims, service=service)
