"""The kubelet-facing lifecycle of all our device plugins on one node.

Follows the real plugin lifecycle (NVIDIA's device plugin is the model): remove stale sockets,
serve, register; then watch the device-plugins directory. The kubelet removes every socket in it
when it starts and re-creates ``kubelet.sock``; a wiped directory takes our sockets too. Both are
seen by polling file identities (device, inode, ctime) every ``poll_interval_seconds``: a
replaced or missing socket of ours is served again, and every plugin registers again with a
kubelet whose ``kubelet.sock`` is new. Registration failures (kubelet not up yet, or refusing)
are retried with backoff. Polling costs a few ``stat`` calls per second and needs no inotify.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from fgo_common.runtime.sockets import SocketIdentity, remove_socket, socket_identity
from fgo_kubelet_api import deviceplugin_v1beta1 as dp

from fgo_device_plugin.allocate import ContainerSetup
from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.resources import SOCKET_PREFIX, Resource
from fgo_device_plugin.server import (
    AllocateHook,
    DevicePluginService,
    ResourceServer,
)

log = structlog.get_logger(__name__)

REGISTER_TIMEOUT_SECONDS = 10.0
_MAX_RETRY_SECONDS = 30.0


@dataclass(slots=True)
class _Registration:
    kubelet: SocketIdentity | None = None  # the kubelet.sock we registered with
    failures: int = 0
    next_attempt: float = 0.0


class DevicePluginManager:
    """Runs one ResourceServer per resource and keeps each registered with the kubelet."""

    def __init__(
        self,
        plugin_dir: Path,
        setup: ContainerSetup,
        metrics: Metrics,
        *,
        poll_interval_seconds: float = 1.0,
        on_allocate: AllocateHook | None = None,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.kubelet_socket = plugin_dir / dp.KUBELET_SOCKET_NAME
        self._setup = setup
        self._metrics = metrics
        self._poll = poll_interval_seconds
        self._on_allocate = on_allocate
        self.servers: dict[str, ResourceServer] = {}
        self._registrations: dict[str, _Registration] = {}
        self._kick = asyncio.Event()
        self.registered = asyncio.Event()
        self._lock = asyncio.Lock()

    def remove_stale_sockets(self) -> None:
        """Sockets a previous run of ours left behind (we never name anything else ``fake-*``)."""
        if not self.plugin_dir.is_dir():
            return
        for entry in self.plugin_dir.glob(f"{SOCKET_PREFIX}*.sock"):
            if entry.name not in {s.socket_path.name for s in self.servers.values()}:
                remove_socket(entry)
                log.info("socket.stale_removed", socket=str(entry))

    async def apply(self, resources: Mapping[str, Resource]) -> None:
        """Advertise exactly ``resources``: new ones get a server, vanished ones an empty list.

        A resource that disappears keeps its (now empty) server until the process restarts, so
        the kubelet drops its capacity to 0 at once instead of waiting out its endpoint grace
        period after a socket vanishes.
        """
        async with self._lock:
            for name, resource in resources.items():
                server = self.servers.get(name)
                if server is None:
                    service = DevicePluginService(
                        name, resource.kind, self._setup, self._metrics, self._on_allocate
                    )
                    server = ResourceServer(service, self.plugin_dir)
                    service.fail_requests_greater_than_one = resource.fail_requests_greater_than_one
                    await service.update(resource.devices)
                    await server.start()
                    self.servers[name] = server
                    self._registrations[name] = _Registration()
                    self._kick.set()
                    continue
                server.service.fail_requests_greater_than_one = (
                    resource.fail_requests_greater_than_one
                )
                if await server.service.update(resource.devices):
                    log.info(
                        "devices.changed",
                        resource=name,
                        devices=resource.capacity,
                        healthy=resource.allocatable,
                    )
            for name, server in self.servers.items():
                if name not in resources and await server.service.update(()):
                    log.info("devices.changed", resource=name, devices=0, healthy=0)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch sockets and (re-)register until ``stop``; then stop serving and clean up."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._kick.clear()
                await self._check()
                kicked = asyncio.ensure_future(self._kick.wait())
                await asyncio.wait(
                    {stopped, kicked}, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED
                )
                kicked.cancel()
        finally:
            stopped.cancel()
            await self.shutdown()

    async def shutdown(self) -> None:
        async with self._lock:
            for server in self.servers.values():
                await server.service.close()
            for server in self.servers.values():
                await server.stop()
            self.registered.clear()
            log.info("plugins.stopped", resources=sorted(self.servers))

    async def _check(self) -> None:
        async with self._lock:
            kubelet = socket_identity(self.kubelet_socket)
            now = time.monotonic()
            for name, server in self.servers.items():
                reg = self._registrations[name]
                if not server.socket_intact():
                    log.warning("socket.lost", resource=name, socket=str(server.socket_path))
                    await server.restart()
                    reg.kubelet = None
                    reg.next_attempt = 0.0
                if kubelet is None or reg.kubelet == kubelet:
                    continue
                if reg.kubelet is not None:
                    log.info("kubelet.restarted", resource=name)
                    reg.kubelet = None
                    reg.failures = 0
                    reg.next_attempt = 0.0
                if now < reg.next_attempt:
                    continue
                if await self._register(server):
                    reg.kubelet = kubelet
                    reg.failures = 0
                else:
                    reg.failures += 1
                    reg.next_attempt = now + min(_MAX_RETRY_SECONDS, 0.5 * 2**reg.failures)
            all_registered = bool(self.servers) and all(
                r.kubelet is not None and r.kubelet == kubelet for r in self._registrations.values()
            )
            if all_registered:
                self.registered.set()
            else:
                self.registered.clear()

    async def _register(self, server: ResourceServer) -> bool:
        request = dp.pb2.RegisterRequest(
            version=dp.VERSION,
            endpoint=server.endpoint,
            resource_name=server.resource_name,
            options=server.service.options,
        )
        bound = log.bind(resource=server.resource_name, endpoint=server.endpoint)
        try:
            async with grpc.aio.insecure_channel(
                f"unix:{self.kubelet_socket.absolute()}",
                options=[("grpc.default_authority", "localhost")],
            ) as channel:
                stub = dp.pb2_grpc.RegistrationStub(channel)
                await stub.Register(request, timeout=REGISTER_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            self._metrics.registrations.labels(server.resource_name, "error").inc()
            bound.warning("kubelet.register_failed", code=exc.code().name, error=exc.details())
            return False
        self._metrics.registrations.labels(server.resource_name, "ok").inc()
        bound.info(
            "kubelet.registered",
            message=f"Registered device plugin for '{server.resource_name}' with Kubelet",
        )
        return True
