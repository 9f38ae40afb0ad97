"""A kubelet stand-in for device plugins (API v1beta1), for tests and benchmarks.

It does what the kubelet's device manager does, in the same order, so a plugin that works
against it has exercised the real protocol:

1. serve ``Registration`` on ``<dir>/kubelet.sock`` (removing stale sockets in ``<dir>`` first,
   as the kubelet does on every start);
2. on ``Register``: check the version and the extended resource name, then - still inside the
   RPC - dial ``<dir>/<endpoint>`` and call ``GetDevicePluginOptions``;
3. keep a ``ListAndWatch`` stream open, exposing the latest device list and a queue of updates;
4. on request of the test: ``Allocate``, ``GetPreferredAllocation``, ``PreStartContainer``.

``restart()`` simulates a kubelet restart: connections drop, ``kubelet.sock`` (and by default
every other socket in the directory) disappears, then a fresh ``kubelet.sock`` appears and the
plugin is expected to register again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from fgo_kubelet_api import deviceplugin_v1beta1 as dp

from fgo_testkit.kubelet._unix import PeerError, insecure_unix_channel, remove_socket, unix_target

if TYPE_CHECKING:
    from fgo_kubelet_api.gen.deviceplugin.v1beta1.api_pb2_grpc import DevicePluginAsyncStub

__all__ = ["DevicePluginConnection", "DevicePluginKubeletPeer", "is_extended_resource_name"]

log = structlog.get_logger("fgo_testkit.kubelet.deviceplugin")

# Qualified-name pieces as in k8s.io/apimachinery validation (IsQualifiedName).
_QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")


def is_extended_resource_name(name: str) -> bool:
    """The kubelet's IsExtendedResourceName: ``<domain>/<name>``, not in kubernetes.io."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
        return False
    # The kubelet validates "requests.<name>" as a qualified name (quota key form).
    prefix, _, short = f"requests.{name}".rpartition("/")
    return (
        0 < len(short) <= 63
        and _QUALIFIED_NAME_PART.match(short) is not None
        and 0 < len(prefix) <= 253
        and _DNS1123_SUBDOMAIN.match(prefix) is not None
    )


# Go's names of gRPC codes, as a Go status error prints them ("rpc error: code = Unknown ...").
_GO_CODE_NAMES = {
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
}


def unexpected_admission_message(error: grpc.aio.AioRpcError) -> str:
    """The message of the kubelet's ``UnexpectedAdmissionError`` for a failed Allocate (the pod
    fails with reason UnexpectedAdmissionError and this text in its status and Event)."""
    code = _GO_CODE_NAMES.get(error.code(), error.code().name.title())
    return (
        f"Allocate failed due to rpc error: code = {code} desc = {error.details()}, "
        "which is unexpected"
    )


class DevicePluginConnection:
    """The kubelet's client of one registered device plugin (one resource name)."""

    def __init__(
        self,
        request: dp.pb2.RegisterRequest,
        socket_path: Path,
        channel: grpc.aio.Channel,
        options: dp.pb2.DevicePluginOptions,
    ) -> None:
        self.request = request
        self.resource_name = request.resource_name
        self.socket_path = socket_path
        self.options = options
        self._channel = channel
        self._stub: DevicePluginAsyncStub = dp.pb2_grpc.DevicePluginStub(channel)
        self.devices: list[dp.pb2.Device] = []
        self.list_count = 0
        # Every ListAndWatch response, in order; tests consume it to see each transition.
        self.updates: asyncio.Queue[list[dp.pb2.Device]] = asyncio.Queue()
        self.stream_error: grpc.aio.AioRpcError | None = None
        self.stream_closed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._watch_task: asyncio.Task[None] | None = None

    def start_watching(self) -> None:
        self._watch_task = asyncio.create_task(
            self._list_and_watch(), name=f"kubelet-peer-listandwatch-{self.resource_name}"
        )

    async def _list_and_watch(self) -> None:
        call = self._stub.ListAndWatch(dp.pb2.Empty())
        try:
            async for response in call:
                devices = list(response.devices)
                async with self._changed:
                    self.devices = devices
                    self.list_count += 1
                    self.updates.put_nowait(devices)
                    self._changed.notify_all()
                log.debug(
                    "deviceplugin.peer.list", resource=self.resource_name, devices=len(devices)
                )
        except grpc.aio.AioRpcError as exc:
            # The kubelet logs "ListAndWatch ended unexpectedly" and drops the endpoint.
            self.stream_error = exc
        finally:
            call.cancel()
            self.stream_closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def wait_for_devices(
        self,
        predicate: Callable[[list[dp.pb2.Device]], bool] | None = None,
        timeout_seconds: float = 10.0,
    ) -> list[dp.pb2.Device]:
        """Wait until a device list has arrived (and satisfies ``predicate``, if given)."""

        def ready() -> bool:
            if self.list_count and (predicate is None or predicate(self.devices)):
                return True
            if self.stream_closed.is_set():
                raise PeerError(
                    f"ListAndWatch of {self.resource_name} ended: {self.stream_error!r}"
                )
            return False

        async with asyncio.timeout(timeout_seconds), self._changed:
            await self._changed.wait_for(ready)
        return self.devices

    def healthy_ids(self) -> list[str]:
        return [d.ID for d in self.devices if d.health == dp.HEALTHY]

    async def get_device_plugin_options(self) -> dp.pb2.DevicePluginOptions:
        return await self._stub.GetDevicePluginOptions(dp.pb2.Empty())

    async def allocate(self, device_ids: Sequence[str]) -> dp.pb2.ContainerAllocateResponse:
        """Allocate for one container, as the kubelet does (one request per container)."""
        response = await self.allocate_raw(
            dp.pb2.AllocateRequest(
                container_requests=[dp.pb2.ContainerAllocateRequest(devices_ids=list(device_ids))]
            )
        )
        if not response.container_responses:
            # Same check as the kubelet's device manager.
            raise PeerError(f"no containers return in allocation response {response}")
        return response.container_responses[0]

    async def allocate_raw(self, request: dp.pb2.AllocateRequest) -> dp.pb2.AllocateResponse:
        return await self._stub.Allocate(request)

    async def get_preferred_allocation(
        self,
        available: Sequence[str],
        size: int,
        must_include: Sequence[str] = (),
        *,
        force: bool = False,
    ) -> list[str]:
        """Ask for a preferred set of ``size`` devices; the kubelet only asks if advertised."""
        if not (force or self.options.get_preferred_allocation_available):
            raise PeerError(f"{self.resource_name} does not advertise GetPreferredAllocation")
        response = await self._stub.GetPreferredAllocation(
            dp.pb2.PreferredAllocationRequest(
                container_requests=[
                    dp.pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=list(available),
                        must_include_deviceIDs=list(must_include),
                        allocation_size=size,
                    )
                ]
            )
        )
        if len(response.container_responses) != 1:
            raise PeerError(f"expected one container response, got {response}")
        return list(response.container_responses[0].deviceIDs)

    async def pre_start_container(
        self, device_ids: Sequence[str], *, force: bool = False
    ) -> dp.pb2.PreStartContainerResponse:
        if not (force or self.options.pre_start_required):
            raise PeerError(f"{self.resource_name} does not require PreStartContainer")
        return await self._stub.PreStartContainer(
            dp.pb2.PreStartContainerRequest(devices_ids=list(device_ids)),
            timeout=dp.PRE_START_CONTAINER_TIMEOUT_SECONDS,
        )

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self._channel.close(None)


class _RegistrationServicer(dp.pb2_grpc.RegistrationServicer):
    def __init__(self, peer: DevicePluginKubeletPeer) -> None:
        self._peer = peer

    async def Register(  # noqa: N802 - gRPC method name
        self, request: dp.pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dp.pb2.Empty:
        error = await self._peer._on_register(request)
        if error is not None:
            # The kubelet returns a plain Go error, which gRPC sends as UNKNOWN.
            await context.abort(grpc.StatusCode.UNKNOWN, error)
        return dp.pb2.Empty()


class DevicePluginKubeletPeer:
    """Serves the kubelet side of the device plugin protocol in ``socket_dir``."""

    def __init__(
        self,
        socket_dir: Path | str,
        *,
        dial_timeout_seconds: float = 10.0,
        cleanup_plugin_sockets: bool = True,
    ) -> None:
        self.socket_dir = Path(socket_dir)
        self.socket_path = self.socket_dir / dp.KUBELET_SOCKET_NAME
        self.dial_timeout_seconds = dial_timeout_seconds
        # The kubelet removes every socket in the directory when it starts; plugins must notice
        # and come back. Tests of other behaviour can turn that off.
        self.cleanup_plugin_sockets = cleanup_plugin_sockets
        # Every Register call ever received (accepted or not), and the rejected ones with why.
        self.registrations: list[dp.pb2.RegisterRequest] = []
        self.rejections: list[tuple[dp.pb2.RegisterRequest, str]] = []
        self.plugins: dict[str, DevicePluginConnection] = {}
        self.restarts = 0
        self._server: grpc.aio.Server | None = None
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> DevicePluginKubeletPeer:
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
        if self._server is not None:
            raise PeerError("peer already started")
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.cleanup_plugin_sockets:
            for entry in self.socket_dir.iterdir():
                remove_socket(entry)
        remove_socket(self.socket_path)
        server = grpc.aio.server()
        dp.pb2_grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), server)
        server.add_insecure_port(unix_target(self.socket_path))
        await server.start()
        self._server = server
        log.info("deviceplugin.peer.started", socket=str(self.socket_path))

    async def stop(self) -> None:
        """Stop serving and drop every plugin connection (like the kubelet process dying)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=None)
        plugins, self.plugins = self.plugins, {}
        for connection in plugins.values():
            await connection.close()
        remove_socket(self.socket_path)

    async def restart(self, downtime_seconds: float = 0.0) -> None:
        """Kubelet restart: sockets vanish, then a new kubelet.sock appears."""
        await self.stop()
        if downtime_seconds > 0:
            await asyncio.sleep(downtime_seconds)
        self.restarts += 1
        await self.start()

    async def _on_register(self, request: dp.pb2.RegisterRequest) -> str | None:
        """Validate and connect like the kubelet; returns an error message or None."""
        self.registrations.append(request)
        bound = log.bind(resource=request.resource_name, endpoint=request.endpoint)
        error: str | None = None
        if request.version not in dp.SUPPORTED_VERSIONS:
            error = (
                f'requested API version "{request.version}" is not supported by kubelet. '
                f'Supported version is ["{dp.VERSION}"]'
            )
        elif not is_extended_resource_name(request.resource_name):
            error = f'the ResourceName "{request.resource_name}" is invalid'
        else:
            error = await self._connect(request)
        async with self._changed:
            if error is not None:
                self.rejections.append((request, error))
                bound.warning("deviceplugin.peer.rejected", error=error)
            self._changed.notify_all()
        return error

    async def _connect(self, request: dp.pb2.RegisterRequest) -> str | None:
        socket_path = self.socket_dir / request.endpoint
        try:
            channel = insecure_unix_channel(socket_path)
        except PeerError as exc:
            return str(exc)
        try:
            async with asyncio.timeout(self.dial_timeout_seconds):
                await channel.channel_ready()
            stub: DevicePluginAsyncStub = dp.pb2_grpc.DevicePluginStub(channel)
            options = await stub.GetDevicePluginOptions(
                dp.pb2.Empty(), timeout=self.dial_timeout_seconds
            )
        except TimeoutError:
            await channel.close(None)
            return f"failed to dial device plugin: timed out dialing {socket_path}"
        except grpc.aio.AioRpcError as exc:
            await channel.close(None)
            return f"failed to get device plugin options: {exc.details()}"
        connection = DevicePluginConnection(request, socket_path, channel, options)
        old = self.plugins.get(request.resource_name)
        self.plugins[request.resource_name] = connection
        connection.start_watching()
        if old is not None:
            await old.close()
        log.info(
            "deviceplugin.peer.registered",
            resource=request.resource_name,
            endpoint=request.endpoint,
            pre_start_required=options.pre_start_required,
            preferred_allocation=options.get_preferred_allocation_available,
        )
        return None

    async def wait_for_plugin(
        self, resource_name: str | None = None, timeout_seconds: float = 10.0
    ) -> DevicePluginConnection:
        """Wait until a plugin (for ``resource_name``, or any) is registered and connected."""

        def found() -> DevicePluginConnection | None:
            if resource_name is None:
                return next(iter(self.plugins.values()), None)
            return self.plugins.get(resource_name)

        async with asyncio.timeout(timeout_seconds), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        connection = found()
        assert connection is not None
        return connection

    async def wait_for_registrations(self, count: int, timeout_seconds: float = 10.0) -> None:
        """Wait until ``count`` Register calls have been received in total."""
        async with asyncio.timeout(timeout_seconds), self._changed:
            await self._changed.wait_for(lambda: len(self.registrations) >= count)

    def plugin(self, resource_name: str | None = None) -> DevicePluginConnection:
        if resource_name is not None:
            try:
                return self.plugins[resource_name]
            except KeyError:
                raise PeerError(f"no device plugin registered for {resource_name}") from None
        if len(self.plugins) != 1:
            raise PeerError(f"expected exactly one registered plugin, have {sorted(self.plugins)}")
        return next(iter(self.plugins.values()))

    # Shortcuts for the common single-plugin case.

    @property
    def devices(self) -> list[dp.pb2.Device]:
        return self.plugin().devices

    @property
    def updates(self) -> asyncio.Queue[list[dp.pb2.Device]]:
        return self.plugin().updates

    async def allocate(
        self, device_ids: Sequence[str], resource_name: str | None = None
    ) -> dp.pb2.ContainerAllocateResponse:
        return await self.plugin(resource_name).allocate(device_ids)

    async def get_preferred_allocation(
        self,
        available: Sequence[str],
        size: int,
        must_include: Sequence[str] = (),
        resource_name: str | None = None,
    ) -> list[str]:
        return await self.plugin(resource_name).get_preferred_allocation(
            available, size, must_include
        )

    async def pre_start_container(
        self, device_ids: Sequence[str], resource_name: str | None = None
    ) -> dp.pb2.PreStartContainerResponse:
        return await self.plugin(resource_name).pre_start_container(device_ids)
