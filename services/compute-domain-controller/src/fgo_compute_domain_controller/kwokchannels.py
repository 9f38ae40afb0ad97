"""IMEX channel ResourceSlices for KWOK nodes (no kubelet, so no plugin publishes them): one
slice ``kwok-<node>-compute-domain-channel`` per KWOK node, driver compute-domain.nvidia.com,
pool = node, device ``channel-0`` (``type=channel``, ``id=0``), as the reference's
kwok-compute-domain-dra-plugin. Written with the GPU publishers' code (fgo_common.drapublish:
server-side apply, content hash, pool generations), the device from fgo_common.computedomain.

A node gets its slice while it exists, is a KWOK node (annotation ``kwok.x-k8s.io/node: fake``
or label ``type: kwok``, as the reference) and has GPUs: label ``nvidia.com/gpu.present=true``,
which the status-exporter's GFD labeler sets from the node's record (NVIDIA's compute-domain
plugin runs on GPU nodes; the reference publishes on every KWOK node, so CPU-only nodes would
take ComputeDomain pods). Otherwise the slice is withdrawn (owned by the Node too, so the
garbage collector would get there as well).
"""

from __future__ import annotations

from typing import Any

import structlog
from fgo_common import computedomain as cdn
from fgo_common import draslices
from fgo_common.drapublish import publish_pool, slice_pool_node, withdraw_pool
from fgo_common.kube.errors import describe_error
from fgo_common.kube.served import SliceApi
from fgo_common.kube.watch import DELETED, SYNCED, Reflector, WatchEvent
from fgo_common.names import GFD_LABELS
from fgo_common.runtime.workqueue import WorkQueue, WorkQueueMetrics, run_worker
from fgo_common.topology import KWOK_NODE_ANNOTATION
from prometheus_client import CollectorRegistry, Counter, Gauge

from fgo_compute_domain_controller.controller import node_facts

log = structlog.get_logger(__name__)

Obj = dict[str, Any]
FIELD_MANAGER_PREFIX = "fake-gpu-operator/"


def is_kwok_node(node: Obj) -> bool:
    meta = node.get("metadata") or {}
    return (meta.get("annotations") or {}).get(KWOK_NODE_ANNOTATION) == "fake" or (
        meta.get("labels") or {}
    ).get("type") == "kwok"


def has_gpus(node: Obj) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return labels.get(GFD_LABELS.gpu_present) == "true"


def channel_target(node: Obj, publisher: str) -> draslices.PoolTarget | None:
    """Where ``node``'s channel goes, or None when it should have none."""
    meta = node.get("metadata") or {}
    if meta.get("deletionTimestamp") or not is_kwok_node(node) or not has_gpus(node):
        return None
    name = str(meta["name"])
    return draslices.PoolTarget(
        node_name=name,
        node_uid=str(meta.get("uid", "")),
        base_name=cdn.kwok_channel_slice_base(name),
        publisher=publisher,
        driver=cdn.DRIVER,
    )


class KwokChannelPublisher:
    def __init__(
        self, slice_api: SliceApi, nodes: Reflector, registry: CollectorRegistry, instance: str
    ) -> None:
        self.resource = slice_api
        self.nodes = nodes
        self.instance = instance
        self.field_manager = FIELD_MANAGER_PREFIX + instance
        self.slices = Reflector(
            slice_api.list_resource_slice,
            name="channel-slices",
            label_selector=f"{draslices.PUBLISHER_LABEL}={instance}",
            transform=draslices.slice_index_view,
        )
        self.queue = WorkQueue(
            "kwok-channels", metrics=WorkQueueMetrics(registry, "fgo_compute_domain_kwok")
        )
        self.writes = Counter(
            "fgo_compute_domain_kwok_slice_writes", "Channel ResourceSlice writes by operation.",
            ["operation"], registry=registry,
        )  # fmt: skip
        self.published = Gauge(
            "fgo_compute_domain_kwok_nodes", "KWOK nodes whose channel slice we publish.",
            registry=registry,
        )  # fmt: skip
        self._published: set[str] = set()

    def on_node(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            return
        if (
            event.type != DELETED
            and event.old is not None
            and node_facts(event.old) == node_facts(event.obj)
        ):
            return
        self.queue.add(str(event.obj["metadata"]["name"]))

    def on_slice(self, event: WatchEvent) -> None:
        if event.type != SYNCED:
            self.queue.add(slice_pool_node(event.obj))

    def node_keys(self) -> set[str]:
        names = {str(n["metadata"]["name"]) for n in self.nodes.cache.values()}
        return names | {slice_pool_node(s) for s in self.slices.cache.values()}

    def _existing(self, node_name: str) -> list[Obj]:
        return [s for s in self.slices.cache.values() if slice_pool_node(s) == node_name]

    async def reconcile(self, node_name: str) -> None:
        if not node_name:
            return
        node = self.nodes.cache.get(node_name)
        target = None if node is None else channel_target(node, self.instance)
        existing = self._existing(node_name)
        if target is None:
            self._published.discard(node_name)
            if existing:
                deleted = await withdraw_pool(self.resource, existing, node=node_name)
                self.writes.labels("delete").inc(len(deleted))
                for obj in existing:
                    self.slices.cache.pop(obj["metadata"]["name"], None)
        else:
            result = await publish_pool(
                self.resource, target, [cdn.channel_device(0)], existing, self.field_manager
            )
            self._published.add(node_name)
            for stored in result.stored:
                self.writes.labels("apply").inc()
                # Ahead of the watch: a second pass must not bump the generation again.
                self.slices.cache[stored["metadata"]["name"]] = draslices.slice_index_view(stored)
            for name in result.deleted:
                self.writes.labels("delete").inc()
                self.slices.cache.pop(name, None)
        self.published.set(len(self._published))

    async def worker(self) -> None:
        await run_worker(self.queue, self.reconcile, on_failure=_log_failure)


def _log_failure(node_name: str, exc: Exception, retry_in: float | None) -> None:
    log.warning(
        "channel.publish_failed",
        node=node_name,
        error=describe_error(exc),
        retry_in=None if retry_in is None else round(retry_in, 2),
    )
