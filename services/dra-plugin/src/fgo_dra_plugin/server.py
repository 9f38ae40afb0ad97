"""The kubelet-facing gRPC servers: plugin registration, the DRA service, gRPC health.

Lifecycle (as the kubelet's plugin watcher expects it):

1. remove stale sockets of a previous run; serve DRAPlugin (v1 and v1beta1) on
   ``<plugins>/gpu.nvidia.com/dra.sock`` first, so it answers as soon as the kubelet knows it;
2. serve ``pluginregistration.Registration`` on ``<registrar>/gpu.nvidia.com-reg.sock``; the
   kubelet finds the socket, calls GetInfo (type DRAPlugin, every DRA service the pinned kubelet
   accepts, newest first: it takes the first it knows) and reports the outcome through
   NotifyRegistrationStatus;
3. check both sockets every second: one that vanished or was replaced (the kubelet restarted and
   wiped its directories) is re-created, which makes the kubelet register us again;
4. on shutdown remove both sockets, so the kubelet drops the registration at once.

The health service (``grpc.health.v1`` on a TCP port, services ``""`` and ``liveness``) reports
SERVING only while both sockets answer a real call (GetInfo and an empty
NodePrepareResources), probed the way the kubelet would reach them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from fgo_common.runtime.sockets import (
    SocketIdentity,
    remove_socket,
    restrict_socket,
    socket_identity,
)
from fgo_kubelet_api import dra_v1, dra_v1beta1
from fgo_kubelet_api import pluginregistration_v1 as reg
from fgo_kubelet_api.dra import SERVICES_SUPPORTED_BY_KUBELET
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The asyncio servicer; grpc-stubs only types the threaded one in grpc_health.v1.health.
from grpc_health.v1._async import HealthServicer as AioHealthServicer
from prometheus_client import CollectorRegistry, Counter

from fgo_dra_plugin.driver import ClaimRef, Driver

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
LIVENESS_SERVICE = "liveness"
# Offered in the kubelet's order of preference: it walks our list and takes the first it knows.
SUPPORTED_SERVICES: tuple[str, ...] = SERVICES_SUPPORTED_BY_KUBELET


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registrations = Counter(
            "fgo_dra_plugin_registrations", "NotifyRegistrationStatus calls from the kubelet.",
            ["registered"], registry=registry,
        )  # fmt: skip
        self.sockets_recreated = Counter(
            "fgo_dra_plugin_sockets_recreated", "Sockets re-created after they vanished.",
            ["socket"], registry=registry,
        )  # fmt: skip
        self.calls = Counter(
            "fgo_dra_plugin_grpc_calls", "DRA gRPC calls by service and method.",
            ["service", "method"], registry=registry,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# servicers
# --------------------------------------------------------------------------------------------


class RegistrationService(reg.pb2_grpc.RegistrationServicer):
    def __init__(
        self,
        driver_name: str,
        endpoint: Path,
        metrics: ServerMetrics,
        on_status: Callable[[bool, str], None],
    ) -> None:
        self.info = reg.pb2.PluginInfo(
            type=reg.DRA_PLUGIN,
            name=driver_name,
            endpoint=str(endpoint.absolute()),
            supported_versions=list(SUPPORTED_SERVICES),
        )
        self._metrics = metrics
        self._on_status = on_status

    async def GetInfo(  # noqa: N802 - gRPC method name
        self, request: reg.pb2.InfoRequest, context: Context
    ) -> reg.pb2.PluginInfo:
        return self.info

    async def NotifyRegistrationStatus(  # noqa: N802 - gRPC method name
        self, request: reg.pb2.RegistrationStatus, context: Context
    ) -> reg.pb2.RegistrationStatusResponse:
        self._metrics.registrations.labels(str(request.plugin_registered).lower()).inc()
        if request.plugin_registered:
            log.info("kubelet.registered", driver=self.info.name)
        else:
            log.error("kubelet.registration_failed", driver=self.info.name, error=request.error)
        self._on_status(request.plugin_registered, request.error)
        return reg.pb2.RegistrationStatusResponse()


def _refs(claims: Any) -> list[ClaimRef]:
    return [ClaimRef(c.namespace, c.name, c.uid) for c in claims]


class DraV1Service(dra_v1.pb2_grpc.DRAPluginServicer):
    def __init__(self, driver: Driver, metrics: ServerMetrics) -> None:
        self._driver = driver
        self._metrics = metrics

    async def NodePrepareResources(  # noqa: N802 - gRPC method name
        self, request: dra_v1.pb2.NodePrepareResourcesRequest, context: Context
    ) -> dra_v1.pb2.NodePrepareResourcesResponse:
        return await self.prepare(request, dra_v1.DRA_PLUGIN_SERVICE)

    async def NodeUnprepareResources(  # noqa: N802 - gRPC method name
        self, request: dra_v1.pb2.NodeUnprepareResourcesRequest, context: Context
    ) -> dra_v1.pb2.NodeUnprepareResourcesResponse:
        return await self.unprepare(request, dra_v1.DRA_PLUGIN_SERVICE)

    async def prepare(
        self, request: dra_v1.pb2.NodePrepareResourcesRequest, service: str
    ) -> dra_v1.pb2.NodePrepareResourcesResponse:
        self._metrics.calls.labels(service, "NodePrepareResources").inc()
        results = await self._driver.prepare(_refs(request.claims))
        response = dra_v1.pb2.NodePrepareResourcesResponse()
        for uid, result in results.items():
            entry = response.claims[uid]
            if result.error:
                entry.error = result.error
                continue
            for device in result.devices:
                out = entry.devices.add(
                    request_names=[device.request],
                    pool_name=device.pool,
                    device_name=device.device,
                    cdi_device_ids=list(device.cdi_device_ids),
                )
                if device.share_id:
                    out.share_id = device.share_id
        return response

    async def unprepare(
        self, request: dra_v1.pb2.NodeUnprepareResourcesRequest, service: str
    ) -> dra_v1.pb2.NodeUnprepareResourcesResponse:
        self._metrics.calls.labels(service, "NodeUnprepareResources").inc()
        errors = await self._driver.unprepare(_refs(request.claims))
        response = dra_v1.pb2.NodeUnprepareResourcesResponse()
        for uid, error in errors.items():
            response.claims[uid].error = error
        return response


class DraV1Beta1Service(dra_v1beta1.pb2_grpc.DRAPluginServicer):
    """v1beta1 is wire-identical to v1 minus ``Device.share_id``: convert through the wire
    format and answer with the v1 implementation (what the kubelet's own wrapper amounts to)."""

    def __init__(self, v1: DraV1Service) -> None:
        self._v1 = v1

    async def NodePrepareResources(  # noqa: N802 - gRPC method name
        self, request: dra_v1beta1.pb2.NodePrepareResourcesRequest, context: Context
    ) -> dra_v1beta1.pb2.NodePrepareResourcesResponse:
        v1_request = dra_v1.pb2.NodePrepareResourcesRequest.FromString(request.SerializeToString())
        response = await self._v1.prepare(v1_request, dra_v1beta1.DRA_PLUGIN_SERVICE)
        for claim in response.claims.values():
            for device in claim.devices:
                device.ClearField("share_id")  # no such field in v1beta1
        return dra_v1beta1.pb2.NodePrepareResourcesResponse.FromString(response.SerializeToString())

    async def NodeUnprepareResources(  # noqa: N802 - gRPC method name
        self, request: dra_v1beta1.pb2.NodeUnprepareResourcesRequest, context: Context
    ) -> dra_v1beta1.pb2.NodeUnprepareResourcesResponse:
        v1_request = dra_v1.pb2.NodeUnprepareResourcesRequest.FromString(
            request.SerializeToString()
        )
        response = await self._v1.unprepare(v1_request, dra_v1beta1.DRA_PLUGIN_SERVICE)
        return dra_v1beta1.pb2.NodeUnprepareResourcesResponse.FromString(
            response.SerializeToString()
        )


# --------------------------------------------------------------------------------------------
# servers on unix sockets
# --------------------------------------------------------------------------------------------

Register = Callable[[grpc.aio.Server], None]


class SocketServer:
    """One grpc.aio server on one unix socket, re-creatable."""

    def __init__(self, name: str, path: Path, register: Register) -> None:
        self.name = name
        self.path = path.absolute()  # the kubelet dials absolute paths
        self._register = register
        self._server: grpc.aio.Server | None = None
        self._identity: SocketIdentity | None = None

    async def start(self) -> None:
        if self._server is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_socket(self.path)
        server = grpc.aio.server()
        self._register(server)
        server.add_insecure_port(f"unix://{self.path}")
        await server.start()
        self._server = server
        restrict_socket(self.path)
        self._identity = socket_identity(self.path)
        log.info("socket.serving", socket=self.name, path=str(self.path))

    async def stop(self, *, remove: bool = True) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=0.5)
        # Only our own socket: after a wipe someone else may own the name.
        if remove and self._identity is not None and socket_identity(self.path) == self._identity:
            remove_socket(self.path)
        self._identity = None

    def intact(self) -> bool:
        return self._server is not None and socket_identity(self.path) == self._identity

    async def restart(self) -> None:
        await self.stop(remove=False)
        await self.start()


class PluginServers:
    """Registration + DRA sockets, kept alive across kubelet restarts, plus gRPC health."""

    def __init__(
        self,
        *,
        driver: Driver,
        driver_name: str,
        registration_socket: Path,
        dra_socket: Path,
        healthcheck_port: int,
        check_interval_seconds: float,
        registry: CollectorRegistry,
        on_registration: Callable[[bool, str], None] = lambda ok, error: None,
    ) -> None:
        self.metrics = ServerMetrics(registry)
        self.v1 = DraV1Service(driver, self.metrics)
        self.v1beta1 = DraV1Beta1Service(self.v1)
        self.registration = RegistrationService(
            driver_name, dra_socket, self.metrics, on_registration
        )
        self.dra_server = SocketServer("dra", dra_socket, self._register_dra)
        self.registration_server = SocketServer(
            "registration", registration_socket, self._register_registration
        )
        self.healthcheck_port = healthcheck_port
        self.check_interval_seconds = check_interval_seconds
        self.health = AioHealthServicer()
        self._health_server: grpc.aio.Server | None = None
        self.bound_health_port = 0

    def _register_dra(self, server: grpc.aio.Server) -> None:
        dra_v1.pb2_grpc.add_DRAPluginServicer_to_server(self.v1, server)
        dra_v1beta1.pb2_grpc.add_DRAPluginServicer_to_server(self.v1beta1, server)

    def _register_registration(self, server: grpc.aio.Server) -> None:
        reg.pb2_grpc.add_RegistrationServicer_to_server(self.registration, server)

    async def start(self) -> None:
        await self.dra_server.start()
        await self.registration_server.start()
        if self.healthcheck_port:
            server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            # Probes come from the kubelet on the pod's address (hostNetwork: the node's).
            self.bound_health_port = server.add_insecure_port(f"0.0.0.0:{self.healthcheck_port}")
            await server.start()
            self._health_server = server
        await self.probe()

    async def stop(self) -> None:
        # Registration first: the kubelet must stop sending work before the service goes.
        await self.registration_server.stop()
        await self.dra_server.stop()
        if self._health_server is not None:
            await self._health_server.stop(grace=0.5)
            self._health_server = None

    async def probe(self) -> bool:
        """Call both sockets like the kubelet would; publish the verdict on the health service."""
        ok = True
        try:
            async with _channel(self.registration_server.path) as channel:
                info = await reg.pb2_grpc.RegistrationStub(channel).GetInfo(
                    reg.pb2.InfoRequest(), timeout=2.0
                )
                ok = info.name == self.registration.info.name
            async with _channel(self.dra_server.path) as channel:
                await dra_v1.pb2_grpc.DRAPluginStub(channel).NodePrepareResources(
                    dra_v1.pb2.NodePrepareResourcesRequest(), timeout=2.0
                )
        except (grpc.aio.AioRpcError, OSError, TimeoutError) as exc:
            log.warning("health.probe_failed", error=str(exc)[:200])
            ok = False
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", LIVENESS_SERVICE):
            await self.health.set(service, status)
        return ok

    async def keep_alive(self, stop: asyncio.Event) -> None:
        """Re-create vanished sockets; refresh the health verdict every few checks."""
        checks = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval_seconds):
                    await stop.wait()
            if stop.is_set():
                return
            # The DRA socket first: after a re-registration the kubelet calls it right away.
            for server in (self.dra_server, self.registration_server):
                if not server.intact():
                    log.warning("socket.vanished", socket=server.name, path=str(server.path))
                    self.metrics.sockets_recreated.labels(server.name).inc()
                    await server.restart()
            checks += 1
            if checks % 5 == 0:
                await self.probe()


@contextlib.asynccontextmanager
async def _channel(path: Path) -> Any:
    channel = grpc.aio.insecure_channel(
        f"unix://{path}", options=[("grpc.default_authority", "localhost")]
    )
    try:
        yield channel
    finally:
        await channel.close(None)
