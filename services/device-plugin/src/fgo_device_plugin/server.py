"""One DevicePlugin gRPC server per extended resource, on a unix socket in the plugin directory.

The servicer holds the resource's current device list; ``update`` replaces it and wakes every
open ListAndWatch stream (the kubelet keeps one; a re-registration opens another), which then
sends the new full list, as the protocol requires. Allocate validates every ID against the list
and answers INVALID_ARGUMENT naming the unknown ones, before anything is handed out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from fgo_common import dpsharing
from fgo_common.runtime.sockets import (
    SocketIdentity,
    remove_socket,
    restrict_socket,
    socket_identity,
)
from fgo_kubelet_api import deviceplugin_v1beta1 as dp
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The asyncio servicer; grpc-stubs only types the threaded one in grpc_health.v1.health.
from grpc_health.v1._async import HealthServicer as AioHealthServicer

from fgo_device_plugin.allocate import ContainerSetup
from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.preferred import preferred_allocation
from fgo_device_plugin.resources import DeviceKind, PluginDevice, socket_name

log = structlog.get_logger(__name__)


# A status message travels in gRPC metadata (8 KiB by default) and lands in logs and Events:
# name a few IDs, each cut short, and count the rest.
MAX_IDS_SHOWN = 8
MAX_ID_CHARS = 64


def describe_ids(ids: list[str]) -> str:
    distinct = sorted(set(ids))
    shown = [
        repr(i) if len(i) <= MAX_ID_CHARS else f"{i[:MAX_ID_CHARS]!r}... ({len(i)} chars)"
        for i in distinct[:MAX_IDS_SHOWN]
    ]
    more = len(distinct) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


AllocateHook = Callable[[str, Sequence[str]], None]


class DevicePluginService(dp.pb2_grpc.DevicePluginServicer):
    """The DevicePlugin service of one resource."""

    def __init__(
        self,
        resource_name: str,
        kind: DeviceKind,
        setup: ContainerSetup,
        metrics: Metrics,
        on_allocate: AllocateHook | None = None,
    ) -> None:
        self.resource_name = resource_name
        self.kind = kind
        self._setup = setup
        self._metrics = metrics
        self._on_allocate = on_allocate
        self._devices: tuple[PluginDevice, ...] = ()
        # Shared resource with NVIDIA's failRequestsGreaterThanOne (set by the manager).
        self.fail_requests_greater_than_one = False
        self._by_id: dict[str, PluginDevice] = {}
        self._version = 0
        self._closed = False
        self._changed = asyncio.Condition()
        self.options = dp.pb2.DevicePluginOptions(
            pre_start_required=False,
            # Preferences only make sense where locality exists (GPUs and MIG devices).
            get_preferred_allocation_available=kind != "other",
        )

    @property
    def devices(self) -> tuple[PluginDevice, ...]:
        return self._devices

    async def update(self, devices: Sequence[PluginDevice]) -> bool:
        """Replace the device list; returns whether it changed (and streams were woken)."""
        new = tuple(devices)
        if new == self._devices and self._version:
            return False
        async with self._changed:
            self._devices = new
            self._by_id = {d.id: d for d in new}
            self._version += 1
            self._changed.notify_all()
        healthy = sum(1 for d in new if d.healthy)
        self._metrics.devices.labels(self.resource_name, dp.HEALTHY).set(healthy)
        self._metrics.devices.labels(self.resource_name, dp.UNHEALTHY).set(len(new) - healthy)
        return True

    async def close(self) -> None:
        """End every ListAndWatch stream (the service is going away)."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _list_response(self) -> dp.pb2.ListAndWatchResponse:
        return dp.pb2.ListAndWatchResponse(
            devices=[
                dp.pb2.Device(
                    ID=d.id,
                    health=dp.HEALTHY if d.healthy else dp.UNHEALTHY,
                    topology=(
                        None
                        if d.numa_node is None
                        else dp.pb2.TopologyInfo(nodes=[dp.pb2.NUMANode(ID=d.numa_node)])
                    ),
                )
                for d in self._devices
            ]
        )

    async def GetDevicePluginOptions(  # noqa: N802 - gRPC method name
        self, request: dp.pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dp.pb2.DevicePluginOptions:
        return self.options

    async def ListAndWatch(  # noqa: N802 - gRPC method name
        self, request: dp.pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[dp.pb2.ListAndWatchResponse]:
        sent = -1

        def pending() -> bool:
            return self._closed or self._version != sent

        while True:
            async with self._changed:
                await self._changed.wait_for(pending)
                if self._closed:
                    return
                sent = self._version
                response = self._list_response()
            self._metrics.list_updates.labels(self.resource_name).inc()
            log.debug(
                "listandwatch.sent", resource=self.resource_name, devices=len(response.devices)
            )
            yield response

    async def GetPreferredAllocation(  # noqa: N802 - gRPC method name
        self,
        request: dp.pb2.PreferredAllocationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dp.pb2.PreferredAllocationResponse:
        return dp.pb2.PreferredAllocationResponse(
            container_responses=[
                dp.pb2.ContainerPreferredAllocationResponse(
                    deviceIDs=preferred_allocation(
                        self._by_id,
                        list(req.available_deviceIDs),
                        list(req.must_include_deviceIDs),
                        req.allocation_size,
                    )
                )
                for req in request.container_requests
            ]
        )

    async def Allocate(  # noqa: N802 - gRPC method name
        self, request: dp.pb2.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dp.pb2.AllocateResponse:
        started = time.perf_counter()
        unknown = [
            device_id
            for req in request.container_requests
            for device_id in req.devices_ids
            if device_id not in self._by_id
        ]
        if unknown:
            self._metrics.allocations.labels(self.resource_name, "invalid").inc()
            shown = describe_ids(unknown)
            log.warning("allocate.rejected", resource=self.resource_name, unknown=shown)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown {self.resource_name} device IDs: {shown}",
            )
        if self.fail_requests_greater_than_one:
            for req in request.container_requests:
                ids = list(req.devices_ids)
                if len(ids) > 1 and any(dpsharing.is_replica_id(i) for i in ids):
                    # NVIDIA's plugin returns a plain error (gRPC Unknown); the kubelet fails
                    # the pod with UnexpectedAdmissionError "Allocate failed due to rpc error:
                    # code = Unknown desc = <this>, which is unexpected".
                    self._metrics.allocations.labels(self.resource_name, "invalid").inc()
                    message = dpsharing.oversized_request_error(len(ids))
                    log.warning("allocate.rejected", resource=self.resource_name, reason=message)
                    await context.abort(grpc.StatusCode.UNKNOWN, message)
        responses = [
            self._container_response(list(req.devices_ids)) for req in request.container_requests
        ]
        allocated = [d for req in request.container_requests for d in req.devices_ids]
        self._metrics.allocations.labels(self.resource_name, "ok").inc()
        self._metrics.allocate_seconds.labels(self.resource_name).observe(
            time.perf_counter() - started
        )
        log.info("allocate.ok", resource=self.resource_name, devices=allocated)
        if self._on_allocate is not None and self.kind != "other":
            self._on_allocate(self.resource_name, allocated)
        return dp.pb2.AllocateResponse(container_responses=responses)

    def _container_response(self, device_ids: list[str]) -> dp.pb2.ContainerAllocateResponse:
        if self.kind == "other":
            # Not GPUs: nothing for nvidia-smi to show, so nothing to inject.
            return dp.pb2.ContainerAllocateResponse()
        return dp.pb2.ContainerAllocateResponse(
            # Replica IDs (<uuid>::<n>) name their GPU once: NVIDIA_VISIBLE_DEVICES lists UUIDs.
            envs=self._setup.envs(list(dict.fromkeys(dpsharing.base_id(i) for i in device_ids))),
            mounts=[
                dp.pb2.Mount(
                    container_path=m.container_path, host_path=m.host_path, read_only=m.read_only
                )
                for m in self._setup.mounts()
            ],
        )

    async def PreStartContainer(  # noqa: N802 - gRPC method name
        self,
        request: dp.pb2.PreStartContainerRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dp.pb2.PreStartContainerResponse:
        return dp.pb2.PreStartContainerResponse()


class ResourceServer:
    """Serves one DevicePluginService (plus grpc.health.v1) on ``<dir>/<socket name>``."""

    def __init__(self, service: DevicePluginService, plugin_dir: Path) -> None:
        self.service = service
        self.resource_name = service.resource_name
        self.socket_path = plugin_dir / socket_name(service.resource_name)
        self._server: grpc.aio.Server | None = None
        self._identity: SocketIdentity | None = None

    @property
    def endpoint(self) -> str:
        """What RegisterRequest.endpoint carries: the socket's file name."""
        return self.socket_path.name

    async def start(self) -> None:
        if self._server is not None:
            return
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        remove_socket(self.socket_path)
        server = grpc.aio.server()
        dp.pb2_grpc.add_DevicePluginServicer_to_server(self.service, server)
        health_servicer = AioHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_insecure_port(f"unix:{self.socket_path.absolute()}")
        await server.start()
        await health_servicer.set(dp.DEVICE_PLUGIN_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        restrict_socket(self.socket_path)
        self._identity = socket_identity(self.socket_path)
        log.info("server.started", resource=self.resource_name, socket=str(self.socket_path))

    async def stop(self, *, remove: bool = True) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=0.5)
        # Only our own socket: after a wipe someone else may own the name.
        mine = self._identity is not None and socket_identity(self.socket_path) == self._identity
        if remove and mine:
            remove_socket(self.socket_path)
        self._identity = None

    async def restart(self) -> None:
        await self.stop(remove=False)
        await self.start()

    def socket_intact(self) -> bool:
        """False once our socket file is gone or replaced (directory wiped, kubelet restart)."""
        return self._server is not None and socket_identity(self.socket_path) == self._identity
