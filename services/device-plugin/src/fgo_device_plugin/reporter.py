"""Tell the status-updater which GPUs the kubelet gave each pod on this node.

On a real node the kubelet, not us, picks the device IDs for a pod (we only suggest through
GetPreferredAllocation). It publishes its choice through the pod resources API, and only after
Allocate succeeded. So shortly after every Allocate (and every ``interval_seconds`` to catch
anything missed, e.g. across our restart) we ``List`` it and write, per pod holding our GPU or
MIG devices, annotation ``fake-gpu-operator/allocated-devices`` (format in
``fgo_common.annotations``); the status-updater records exactly those GPUs for the pod.

Writes are merge patches of one annotation, skipped when the value we last wrote is unchanged,
so the steady state costs one local gRPC call per interval and no API traffic. If IDs we just
allocated do not show up yet, the List is retried with backoff (the kubelet records them right
after Allocate returns).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from fgo_common.annotations import ALLOCATED_DEVICES, format_allocated_devices
from fgo_common.kube.errors import is_not_found, raise_for_status
from fgo_common.kube.retry import retrying
from fgo_kubelet_api import podresources_v1 as podres
from kubernetes_asyncio import client

from fgo_device_plugin.metrics import Metrics

log = structlog.get_logger(__name__)

PatchPod = Callable[[str, str, str], Awaitable[None]]
LIST_TIMEOUT_SECONDS = 10.0
_FIRST_DELAY_SECONDS = 0.1
_MAX_PENDING_RETRIES = 8


def pod_annotation_patcher(api: client.ApiClient) -> PatchPod:
    """A PatchPod that merge-patches the annotation onto the pod through the API server."""
    # Typed as Any: the generated stubs do not declare the _content_type/_preload_content kwargs.
    patch_pod: Any = client.CoreV1Api(api).patch_namespaced_pod

    async def patch(namespace: str, name: str, value: str) -> None:
        body = {"metadata": {"annotations": {ALLOCATED_DEVICES: value}}}

        async def call() -> None:
            resp = await patch_pod(
                name,
                namespace,
                body,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
            await raise_for_status(resp)
            resp.release()

        await retrying(call, what=f"annotate pod {namespace}/{name}")

    return patch


def allocations_by_pod(
    response: podres.pb2.ListPodResourcesResponse, resources: Collection[str]
) -> dict[tuple[str, str], dict[str, list[str]]]:
    """(namespace, pod) -> resource -> device IDs (containers merged, order kept, no repeats)."""
    out: dict[tuple[str, str], dict[str, list[str]]] = {}
    for pod in response.pod_resources:
        by_resource: dict[str, list[str]] = {}
        for container in pod.containers:
            for devices in container.devices:
                if devices.resource_name not in resources:
                    continue
                ids = by_resource.setdefault(devices.resource_name, [])
                ids.extend(d for d in devices.device_ids if d not in ids)
        if by_resource:
            out[(pod.namespace, pod.name)] = by_resource
    return out


class AllocationReporter:
    """Mirrors the kubelet's device assignments of our resources into pod annotations."""

    def __init__(
        self,
        socket_path: Path,
        patch_pod: PatchPod,
        metrics: Metrics,
        *,
        resources: Callable[[], Collection[str]],
        interval_seconds: float = 30.0,
    ) -> None:
        self.socket_path = socket_path
        self._patch_pod = patch_pod
        self._metrics = metrics
        self._resources = resources
        self._interval = interval_seconds
        self._written: dict[tuple[str, str], str] = {}
        self._pending: set[str] = set()
        self._kick = asyncio.Event()
        self.syncs = 0

    def allocated(self, resource_name: str, device_ids: Sequence[str]) -> None:
        """Called from Allocate: look for these IDs soon."""
        self._pending.update(device_ids)
        self._kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        channel: grpc.aio.Channel | None = None
        stopped = asyncio.ensure_future(stop.wait())
        retries = 0
        try:
            while not stop.is_set():
                delay = self._interval
                if self._pending:
                    delay = min(self._interval, _FIRST_DELAY_SECONDS * 2**retries)
                kicked = asyncio.ensure_future(self._kick.wait())
                await asyncio.wait(
                    {stopped, kicked}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                kicked.cancel()
                if stop.is_set():
                    return
                if self._kick.is_set():
                    # Let the kubelet finish recording the allocation (and coalesce a burst).
                    self._kick.clear()
                    retries = 0
                    await asyncio.sleep(_FIRST_DELAY_SECONDS)
                if channel is None:
                    channel = grpc.aio.insecure_channel(
                        f"unix:{self.socket_path.absolute()}",
                        options=[("grpc.default_authority", "localhost")],
                    )
                seen = await self.sync(channel)
                if seen is None:
                    retries = min(retries + 1, _MAX_PENDING_RETRIES)
                    continue
                self._pending -= seen
                retries = retries + 1 if self._pending else 0
                if retries > _MAX_PENDING_RETRIES:
                    log.warning("podresources.not_reported", devices=sorted(self._pending))
                    self._pending.clear()
                    retries = 0
        finally:
            stopped.cancel()
            if channel is not None:
                await channel.close(None)

    async def sync(self, channel: grpc.aio.Channel) -> set[str] | None:
        """One List + annotate pass; returns every device ID seen, None if List failed."""
        stub = podres.pb2_grpc.PodResourcesListerStub(channel)
        try:
            response = await stub.List(
                podres.pb2.ListPodResourcesRequest(), timeout=LIST_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "podresources.list_failed", socket=str(self.socket_path), code=exc.code().name
            )
            return None
        self.syncs += 1
        current = allocations_by_pod(response, set(self._resources()))
        seen: set[str] = set()
        for (namespace, name), by_resource in current.items():
            for ids in by_resource.values():
                seen.update(ids)
            value = format_allocated_devices(by_resource)
            if self._written.get((namespace, name)) == value:
                continue
            try:
                await self._patch_pod(namespace, name, value)
            except Exception as exc:
                if is_not_found(exc):
                    self._metrics.annotations.labels("gone").inc()
                    continue
                self._metrics.annotations.labels("error").inc()
                log.warning(
                    "pod.annotate_failed", namespace=namespace, name=name, error=str(exc)[:200]
                )
                continue
            self._written[(namespace, name)] = value
            self._metrics.annotations.labels("ok").inc()
            log.info("pod.annotated", namespace=namespace, name=name, devices=value)
        # Forget pods that left the node, so a re-created pod of the same name is written.
        for key in set(self._written) - set(current):
            del self._written[key]
        return seen
