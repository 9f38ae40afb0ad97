"""Keeps the GFD labels of the served nodes equal to what their records say.

Labels are written with a JSON merge patch (other writers' labels are untouched, no read-modify-
write race). Which keys are ours is remembered on the Node itself, in the annotation
``fake-gpu-operator/feature-labels`` (comma-separated keys, as NFD's ``feature-labels``
annotation does), so labels that no longer apply are removed even across restarts; a node that
leaves its pool (its topology ConfigMap is deleted) loses every label we wrote.

Work goes through the shared work queue (``fgo_common.runtime.workqueue``): coalesced per node
(a burst of record changes costs one patch), one worker per node, spread over ``LABEL_WORKERS``
workers (each new node costs a read and a patch, so bring-up throughput is workers / apiserver
latency), and a failed read or patch retried with per-node back-off (it used to wait for the
next ``LABEL_RESYNC_SECONDS`` pass, 600 s). Labels only change when the GPU set or the MIG
layout does, not with allocations, so pod churn causes no writes at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fgo_common.kube.errors import is_not_found
from fgo_common.kube.retry import retrying
from fgo_common.names import FAKE_GPU_LABEL
from fgo_common.runtime.workqueue import WorkQueue, WorkQueueMetrics, run_worker
from fgo_common.topology import NodeTopology

log = structlog.get_logger(__name__)

OWNED_LABELS_ANNOTATION = "fake-gpu-operator/feature-labels"
MERGE_PATCH = "application/merge-patch+json"

Labels = dict[str, str]
NodeReader = Callable[[str], Awaitable[dict[str, Any] | None]]  # None = no such node
NodePatcher = Callable[[str, dict[str, Any]], Awaitable[bool]]  # False = no such node


def owned_keys(node: dict[str, Any]) -> set[str]:
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(OWNED_LABELS_ANNOTATION) or ""
    return {k for k in (part.strip() for part in raw.split(",")) if k}


def label_patch(desired: Labels, owned: set[str]) -> dict[str, Any]:
    """Merge patch setting ``desired``, deleting owned keys no longer desired (null removes a
    key in a merge patch) and recording the new owned set."""
    labels: dict[str, str | None] = dict.fromkeys(sorted(owned - desired.keys()))
    labels.update(desired)
    return {
        "metadata": {
            "labels": labels,
            "annotations": {OWNED_LABELS_ANNOTATION: ",".join(sorted(desired)) or None},
        }
    }


def up_to_date(node: dict[str, Any], desired: Labels) -> bool:
    current = (node.get("metadata") or {}).get("labels") or {}
    return owned_keys(node) == desired.keys() and all(
        current.get(k) == v for k, v in desired.items()
    )


class NodeLabeler:
    """Reconciles node labels for every node marked dirty."""

    def __init__(
        self,
        *,
        desired: Callable[[str], Labels],
        read_node: NodeReader,
        patch_node: NodePatcher,
        workers: int = 32,
        metrics: WorkQueueMetrics | None = None,
    ) -> None:
        self._desired = desired
        self._read = read_node
        self._patch = patch_node
        self._workers = workers
        self.queue = WorkQueue("labels", metrics=metrics)
        # What we last wrote per node; a node missing here is re-read before it is patched.
        self.applied: dict[str, Labels] = {}
        self.patches = 0
        self.errors = 0

    @property
    def idle(self) -> asyncio.Event:
        """Set while no node is waiting for a worker or being synced (one backing off after a
        failure does not count)."""
        return self.queue.idle

    def mark(self, node_name: str) -> None:
        self.queue.add(node_name)

    def forget(self, node_name: str) -> None:
        """Re-read ``node_name`` on its next sync (its Node may have been re-created)."""
        self.applied.pop(node_name, None)

    def forget_all(self) -> None:
        """Re-read every node on its next sync (periodic repair of labels edited by hand)."""
        self.applied.clear()

    async def sync(self, node_name: str) -> None:
        desired = self._desired(node_name)
        known = self.applied.get(node_name)
        if known is not None and known == desired:
            return
        if known is None:
            node = await retrying(lambda: self._read(node_name), what=f"read node {node_name}")
            if node is None:
                return  # not (or no longer) a Node: nothing to label
            if up_to_date(node, desired):
                if desired:
                    self.applied[node_name] = desired
                return
            owned = owned_keys(node)
        else:
            owned = set(known)
        patch = label_patch(desired, owned)
        found = await retrying(
            lambda: self._patch(node_name, patch), what=f"patch node {node_name} labels"
        )
        self.patches += 1
        if not found:
            self.applied.pop(node_name, None)
            return
        if desired:
            self.applied[node_name] = desired
        else:
            self.applied.pop(node_name, None)
        log.info(
            "labels.patched",
            node=node_name,
            labels=len(desired),
            removed=sorted(owned - desired.keys()),
        )

    async def _sync_counted(self, node_name: str) -> None:
        try:
            await self.sync(node_name)
        except Exception:
            self.errors += 1
            raise

    async def run(self, stop: asyncio.Event) -> None:
        """Sync marked nodes until ``stop``. Cancelled (the Lease lost), a node whose sync was
        in flight stays queued for the next run."""
        async with asyncio.TaskGroup() as group:
            workers = [
                group.create_task(
                    run_worker(self.queue, self._sync_counted, on_failure=_log_failure),
                    name=f"labeler-{i}",
                )
                for i in range(self._workers)
            ]
            await stop.wait()
            for worker in workers:
                worker.cancel()


def _log_failure(node_name: str, exc: Exception, retry_in: float | None) -> None:
    log.warning(
        "labels.failed",
        node=node_name,
        error=str(exc)[:300],
        retry_in=None if retry_in is None else round(retry_in, 2),
    )


def kube_node_access(api: Any) -> tuple[NodeReader, NodePatcher]:
    """Read and merge-patch Nodes through a kubernetes_asyncio ApiClient (raw JSON, no model
    deserialisation)."""
    from kubernetes_asyncio.client import CoreV1Api

    core: Any = CoreV1Api(api)  # untyped use: raw responses (_preload_content=False)

    async def read(name: str) -> dict[str, Any] | None:
        try:
            resp = await core.read_node(name, _preload_content=False)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        try:
            body: dict[str, Any] = await resp.json()
        finally:
            resp.release()
        return body

    async def patch(name: str, body: dict[str, Any]) -> bool:
        try:
            resp = await core.patch_node(
                name, body, _content_type=MERGE_PATCH, _preload_content=False
            )
        except Exception as exc:
            if is_not_found(exc):
                return False
            raise
        resp.release()
        return True

    return read, patch


async def orphaned_nodes(
    api: Any, served: Callable[[dict[str, Any]], bool], known: set[str]
) -> list[str]:
    """Nodes that carry our labels (``run.ai/fake.gpu=true``) and that we serve but have no
    record for: they left their pool while we were not watching."""
    from kubernetes_asyncio.client import CoreV1Api

    core: Any = CoreV1Api(api)  # untyped use: raw responses (_preload_content=False)

    async def list_labelled() -> dict[str, Any]:
        resp = await core.list_node(label_selector=f"{FAKE_GPU_LABEL}=true", _preload_content=False)
        try:
            body: dict[str, Any] = await resp.json()
        finally:
            resp.release()
        return body

    body = await retrying(list_labelled, what="list labelled nodes")
    out = []
    for node in body.get("items") or []:
        name = str(node["metadata"]["name"])
        if name not in known and served(node) and owned_keys(node):
            out.append(name)
    return out


def desired_labels_fn(
    nodes: dict[str, NodeTopology], compute: Callable[[NodeTopology], Labels]
) -> Callable[[str], Labels]:
    """``node name -> labels`` over the store's current records (no record -> no labels)."""

    def desired(node_name: str) -> Labels:
        topology = nodes.get(node_name)
        return compute(topology) if topology is not None else {}

    return desired
