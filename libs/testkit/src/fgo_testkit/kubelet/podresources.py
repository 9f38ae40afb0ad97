"""A kubelet stand-in for the pod resources API (v1), for tests and benchmarks.

Serves ``PodResourcesLister`` on a unix socket, as the kubelet does on
``/var/lib/kubelet/pod-resources/kubelet.sock``. Tests say which container holds which device
IDs (``assign``), typically the IDs they just passed to a device plugin's ``Allocate`` — the
kubelet records its choice only after ``Allocate`` succeeded, and so does a test using this
peer. ``Get`` answers NOT_FOUND for unknown pods like the kubelet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import structlog
from fgo_kubelet_api import podresources_v1 as podres

from fgo_testkit.kubelet._unix import PeerError, remove_socket, unix_target

__all__ = ["PodResourcesKubeletPeer"]

log = structlog.get_logger("fgo_testkit.kubelet.podresources")

_Key = tuple[str, str]  # (namespace, pod name)


class _ListerServicer(podres.pb2_grpc.PodResourcesListerServicer):
    def __init__(self, peer: PodResourcesKubeletPeer) -> None:
        self._peer = peer

    async def List(  # noqa: N802 - gRPC method name
        self,
        request: podres.pb2.ListPodResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> podres.pb2.ListPodResourcesResponse:
        await self._peer._count_list()
        return podres.pb2.ListPodResourcesResponse(
            pod_resources=[self._peer._pod(key) for key in sorted(self._peer._pods)]
        )

    async def GetAllocatableResources(  # noqa: N802 - gRPC method name
        self,
        request: podres.pb2.AllocatableResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> podres.pb2.AllocatableResourcesResponse:
        return podres.pb2.AllocatableResourcesResponse(
            devices=[
                podres.pb2.ContainerDevices(resource_name=name, device_ids=list(ids))
                for name, ids in sorted(self._peer.allocatable.items())
            ]
        )

    async def Get(  # noqa: N802 - gRPC method name
        self,
        request: podres.pb2.GetPodResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> podres.pb2.GetPodResourcesResponse:
        key = (request.pod_namespace, request.pod_name)
        if key not in self._peer._pods:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"pod {request.pod_name} not found in {request.pod_namespace}",
            )
        return podres.pb2.GetPodResourcesResponse(pod_resources=self._peer._pod(key))


class PodResourcesKubeletPeer:
    """Serves the kubelet's pod resources API on ``socket_path`` with test-controlled content."""

    def __init__(self, socket_path: Path | str) -> None:
        self.socket_path = Path(socket_path)
        # (namespace, pod) -> container -> resource name -> device IDs, in assignment order.
        self._pods: dict[_Key, dict[str, dict[str, list[str]]]] = {}
        # Resource name -> device IDs, for GetAllocatableResources.
        self.allocatable: dict[str, list[str]] = {}
        self.list_calls = 0
        self._listed = asyncio.Condition()
        self._server: grpc.aio.Server | None = None

    async def __aenter__(self) -> PodResourcesKubeletPeer:
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
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        remove_socket(self.socket_path)
        server = grpc.aio.server()
        podres.pb2_grpc.add_PodResourcesListerServicer_to_server(_ListerServicer(self), server)
        server.add_insecure_port(unix_target(self.socket_path))
        await server.start()
        self._server = server
        log.info("podresources.peer.started", socket=str(self.socket_path))

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=None)
        remove_socket(self.socket_path)

    def assign(
        self,
        namespace: str,
        pod: str,
        container: str,
        resource_name: str,
        device_ids: Sequence[str],
    ) -> None:
        """Record that ``container`` of ``namespace/pod`` holds ``device_ids`` of a resource."""
        containers = self._pods.setdefault((namespace, pod), {})
        containers.setdefault(container, {})[resource_name] = list(device_ids)

    def remove_pod(self, namespace: str, pod: str) -> None:
        self._pods.pop((namespace, pod), None)

    def _pod(self, key: _Key) -> podres.pb2.PodResources:
        namespace, name = key
        return podres.pb2.PodResources(
            name=name,
            namespace=namespace,
            containers=[
                podres.pb2.ContainerResources(
                    name=container,
                    devices=[
                        podres.pb2.ContainerDevices(resource_name=res, device_ids=ids)
                        for res, ids in sorted(resources.items())
                    ],
                )
                for container, resources in sorted(self._pods[key].items())
            ],
        )

    async def _count_list(self) -> None:
        async with self._listed:
            self.list_calls += 1
            self._listed.notify_all()

    async def wait_for_list_calls(self, count: int, timeout_seconds: float = 10.0) -> None:
        """Wait until ``List`` has been called ``count`` times in total."""
        async with asyncio.timeout(timeout_seconds), self._listed:
            await self._listed.wait_for(lambda: self.list_calls >= count)
