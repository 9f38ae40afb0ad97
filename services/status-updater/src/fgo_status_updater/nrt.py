"""Publishing NodeResourceTopology objects (``NODE_RESOURCE_TOPOLOGY_ENABLED``).

The status-updater owns each node's record and already watches the node's GPU pods, so it is the
one place that knows, at every change, which zone's GPUs, CPUs and memory are taken. After a
node's record is reconciled, :meth:`NrtPublisher.sync` builds the node's NRT
(``fgo_common.nrt.build_nrt``) and writes it only when it differs from the stored one: one
server-side apply per node per change, none for a no-op. Stored objects come from a watch on the
NRTs we labelled, so a restart rewrites nothing that is already right. Objects are owned by their
Node (the garbage collector removes them with it) and deleted when the node leaves a ``numa``
pool. Without the CRD, publishing pauses (one log line) until the CRD is served again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import structlog
from fgo_common.config import ClusterConfig
from fgo_common.kube.errors import is_not_found, raise_for_status
from fgo_common.kube.retry import retrying
from fgo_common.kube.watch import DELETED, Reflector, WatchEvent
from fgo_common.nrt import (
    NRT_FIELD_MANAGER,
    NRT_GROUP,
    NRT_MANAGED_LABEL,
    NRT_MANAGED_VALUE,
    NRT_PLURAL,
    NRT_VERSION,
    build_nrt,
    nrt_content,
    pod_demand,
)
from fgo_common.topology import NodeTopology
from kubernetes_asyncio import client

from fgo_status_updater.metrics import Metrics
from fgo_status_updater.podinfo import Obj, labels_of, meta

log = structlog.get_logger(__name__)

_KIND = "NodeResourceTopology"
# Server-side apply (JSON is YAML); not in kubernetes-asyncio's stubs, hence a dict.
_APPLY_KW: dict[str, Any] = {
    "_content_type": "application/apply-patch+yaml",
    "_preload_content": False,
}


def _rv(obj: Obj) -> int:
    try:
        return int(meta(obj).get("resourceVersion", ""))
    except ValueError:
        return -1


def desired_nrt(
    name: str,
    node: Obj | None,
    config: ClusterConfig | None,
    record: NodeTopology | None,
    pods: Sequence[Obj],
) -> dict[str, Any] | None:
    """The NRT node ``name`` should have, or None (not a node of a pool with ``numa``)."""
    if node is None or config is None or record is None:
        return None
    pool = config.pools.get(labels_of(node).get(config.node_pool_label_key, ""))
    if pool is None or pool.numa is None or pool.name != record.pool:
        return None
    status = node.get("status") or {}
    return build_nrt(
        name,
        str(meta(node).get("uid", "")),
        pool.numa,
        record,
        allocatable=status.get("allocatable") or {},
        pods=[pod_demand(p) for p in pods],
    )


class NrtPublisher:
    def __init__(self, custom: client.CustomObjectsApi, metrics: Metrics) -> None:
        self.custom = custom
        self.metrics = metrics
        self.stored: dict[str, Obj] = {}  # node -> our NRT as last seen (watch or write)
        self.served = True  # False after the apiserver said the CRD is not there

    def reflector(self) -> Reflector:
        return Reflector(
            self.custom.list_cluster_custom_object,
            name="noderesourcetopologies",
            group=NRT_GROUP,
            version=NRT_VERSION,
            plural=NRT_PLURAL,
            label_selector=f"{NRT_MANAGED_LABEL}={NRT_MANAGED_VALUE}",
        )

    def on_nrt(self, event: WatchEvent) -> set[str]:
        """A watch event: the node to re-check, unless it is (an echo of) our own write."""
        name = str(meta(event.obj).get("name", ""))
        known = self.stored.get(name)
        if event.type == DELETED:
            if known is not None and _rv(known) > _rv(event.obj) >= 0:
                return set()
            self.stored.pop(name, None)
            return {name}
        if known is not None and _rv(known) >= _rv(event.obj) >= 0:
            return set()
        self.stored[name] = event.obj
        return {name}

    def on_present(self) -> None:
        self.served = True

    async def sync(self, name: str, desired: dict[str, Any] | None) -> str:
        """Make node ``name``'s NRT ``desired`` (None: no NRT); returns what was done."""
        if not self.served:
            return "not-served"
        stored = self.stored.get(name)
        if desired is None:
            if stored is None:
                return "unchanged"
            return await self._delete(name)
        if stored is not None and nrt_content(stored) == nrt_content(desired):
            return "unchanged"
        return await self._apply(name, desired)

    async def _apply(self, name: str, body: dict[str, Any]) -> str:
        async def send() -> dict[str, Any]:
            resp = await self.custom.patch_cluster_custom_object(
                NRT_GROUP,
                NRT_VERSION,
                NRT_PLURAL,
                name,
                cast("Any", body),
                field_manager=NRT_FIELD_MANAGER,
                force=True,
                **_APPLY_KW,
            )
            await raise_for_status(resp)
            try:
                return cast("dict[str, Any]", json.loads(await resp.read()))
            finally:
                resp.release()

        try:
            stored = await retrying(send, what=f"apply {_KIND} {name}")
        except Exception as exc:
            if not is_not_found(exc):
                raise
            # 404 on an apply: the CRD is not installed. Wait for the watch to see it served.
            if self.served:
                log.warning(
                    "nrt.not_served",
                    detail="the NodeResourceTopology CRD is not installed "
                    "(chart: statusExporter.nodeResourceTopology.installCRD)",
                )
            self.served = False
            return "not-served"
        self.stored[name] = stored
        self.metrics.writes.labels(_KIND, "apply").inc()
        log.debug("nrt.applied", node=name)
        return "applied"

    async def _delete(self, name: str) -> str:
        async def send() -> object:
            resp = await self.custom.delete_cluster_custom_object(
                NRT_GROUP, NRT_VERSION, NRT_PLURAL, name, _preload_content=False
            )
            await raise_for_status(resp)
            resp.release()
            return None

        try:
            await retrying(send, what=f"delete {_KIND} {name}")
        except Exception as exc:
            if not is_not_found(exc):
                raise
        self.stored.pop(name, None)
        self.metrics.writes.labels(_KIND, "delete").inc()
        log.info("nrt.deleted", node=name)
        return "deleted"


__all__ = ["NrtPublisher", "desired_nrt"]
