"""The per-node record ConfigMaps: reading them back, building their metadata, writing them.

A record is replaced *with its resourceVersion*: on 409 (or a 404 on replace) it is re-read into
the cache and the node queued again, never forced. The record we wrote last is kept as an object
so the next reconcile does not parse its YAML again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import structlog
from fgo_common.kube.errors import is_conflict, is_not_found, status_of
from fgo_common.kube.retry import retrying
from fgo_common.topology import (
    KWOK_NODE_ANNOTATION,
    NODE_NAME_LABEL,
    NODE_TOPOLOGY_LABEL,
    TOPOLOGY_DATA_KEY,
    NodeTopology,
    TopologyFormatError,
    node_topology_configmap_name,
)
from kubernetes_asyncio import client

from fgo_status_updater.caches import Caches
from fgo_status_updater.findings import Finding, ObjectRef
from fgo_status_updater.metrics import Metrics
from fgo_status_updater.podinfo import Obj, annotations_of, meta
from fgo_status_updater.rawapi import raw_json

log = structlog.get_logger(__name__)

_LABEL_VALUE_MAX = 63


def _valid_label_value(value: str) -> bool:
    return (
        len(value) <= _LABEL_VALUE_MAX
        and all(c.isalnum() or c in "-_." for c in value)
        and (not value or (value[0].isalnum() and value[-1].isalnum()))
    )


class RecordStore:
    """Reads and writes the record ConfigMaps of one status-updater."""

    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        cm_prefix: str,
        caches: Caches,
        metrics: Metrics,
        *,
        requeue: Callable[[str], None],
        report: Callable[[Finding], None],
    ) -> None:
        self.core = core
        self.namespace = namespace
        self.cm_prefix = cm_prefix  # records are named <prefix>-<node>
        self.caches = caches
        self.metrics = metrics
        self._requeue = requeue  # after a conflict: reconcile the node again at once
        self._report = report
        self._parsed: dict[str, tuple[str, NodeTopology]] = {}  # node -> (resourceVersion, record)

    def parse(self, name: str, cm: Obj | None) -> NodeTopology | None:
        """The stored record as an object; the one we wrote last is kept, not re-parsed (the
        reconciler never mutates its input)."""
        if cm is None:
            self._parsed.pop(name, None)
            return None
        version = str(meta(cm).get("resourceVersion", ""))
        cached = self._parsed.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        text = (cm.get("data") or {}).get(TOPOLOGY_DATA_KEY)
        try:
            if not isinstance(text, str):
                raise TopologyFormatError(f"no {TOPOLOGY_DATA_KEY} key")
            record = NodeTopology.from_yaml(text, name)
            self._parsed[name] = (version, record)
            return record
        except TopologyFormatError as exc:
            m = meta(cm)
            self._report(
                Finding(
                    ObjectRef("ConfigMap", str(m.get("name")), self.namespace, str(m.get("uid"))),
                    "InvalidTopologyRecord",
                    f"the stored record cannot be read ({exc}); rebuilding it from the pods",
                )
            )
            return None

    def body(self, name: str, node: Obj, cm: Obj | None) -> dict[str, Any]:
        """The record ConfigMap's metadata (``data`` is added only when a write is due)."""
        old_meta = meta(cm) if cm else {}
        labels = dict(old_meta.get("labels") or {})
        labels[NODE_TOPOLOGY_LABEL] = "true"
        if _valid_label_value(name):
            labels[NODE_NAME_LABEL] = name
        notes = dict(old_meta.get("annotations") or {})
        kwok = annotations_of(node).get(KWOK_NODE_ANNOTATION)
        if kwok is None:
            notes.pop(KWOK_NODE_ANNOTATION, None)
        else:
            notes[KWOK_NODE_ANNOTATION] = kwok
        owners = [o for o in old_meta.get("ownerReferences") or [] if o.get("kind") != "Node"]
        # The Node owns its record: if we are down when the Node goes, the garbage collector
        # removes the record.
        owners.append(
            {"apiVersion": "v1", "kind": "Node", "name": name, "uid": meta(node).get("uid")}
        )
        metadata: dict[str, Any] = {
            "name": node_topology_configmap_name(self.cm_prefix, name),
            "namespace": self.namespace,
            "labels": labels,
            "annotations": notes,
            "ownerReferences": owners,
        }
        if cm is not None:
            metadata["resourceVersion"] = old_meta.get("resourceVersion")
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}

    async def write(
        self, name: str, body: dict[str, Any], record: NodeTopology, *, create: bool
    ) -> str:
        cm_name = body["metadata"]["name"]

        async def write() -> dict[str, Any]:
            if create:
                return await raw_json(
                    self.core.create_namespaced_config_map(
                        self.namespace, cast("Any", body), _preload_content=False
                    )
                )
            return await raw_json(
                self.core.replace_namespaced_config_map(
                    cm_name, self.namespace, cast("Any", body), _preload_content=False
                )
            )

        try:
            stored = await retrying(write, what=f"record {cm_name}")
        except Exception as exc:
            if not is_conflict(exc) and not (is_not_found(exc) and not create):
                raise
            # Someone else wrote (or deleted) it since we read it: re-read, recompute.
            self.metrics.conflicts.inc()
            log.info("record.conflict", node=name, status=status_of(exc))
            await self._reread(name, cm_name)
            self._requeue(name)
            return "conflict"
        self.metrics.writes.labels("ConfigMap", "create" if create else "update").inc()
        self.caches.store_record(name, stored)
        self._parsed[name] = (str(meta(stored).get("resourceVersion", "")), record)
        log.debug("record.written", node=name, created=create)
        return "created" if create else "written"

    async def _reread(self, name: str, cm_name: str) -> None:
        async def read() -> dict[str, Any]:
            return await raw_json(
                self.core.read_namespaced_config_map(
                    cm_name, self.namespace, _preload_content=False
                )
            )

        try:
            self.caches.store_record(name, await retrying(read, what=f"read {cm_name}"))
        except Exception as exc:
            if not is_not_found(exc):
                raise
            self.caches.store_record(name, None)

    async def delete(self, name: str, cm: Obj) -> str:
        cm_name = str(meta(cm).get("name"))
        options = {"preconditions": {"resourceVersion": meta(cm).get("resourceVersion")}}

        async def delete() -> object:
            return await raw_json(
                self.core.delete_namespaced_config_map(
                    cm_name, self.namespace, body=cast("Any", options), _preload_content=False
                )
            )

        try:
            await retrying(delete, what=f"delete {cm_name}")
        except Exception as exc:
            if is_not_found(exc):
                self.caches.store_record(name, None)
                return "deleted"
            if not is_conflict(exc):
                raise
            self.metrics.conflicts.inc()
            await self._reread(name, cm_name)
            self._requeue(name)
            return "conflict"
        self.metrics.writes.labels("ConfigMap", "delete").inc()
        self.caches.store_record(name, None)
        log.info("record.deleted", node=name)
        return "deleted"


def same_record(
    cm: Obj, body: dict[str, Any], previous: NodeTopology, record: NodeTopology
) -> bool:
    """Nothing to write: same record content (compared as data, not as YAML text, so a record
    written by another YAML emitter is not rewritten) and same metadata."""
    old, new = meta(cm), body["metadata"]
    return (
        previous.to_dict() == record.to_dict()
        and (old.get("labels") or {}) == new["labels"]
        and (old.get("annotations") or {}) == new["annotations"]
        and [(o.get("kind"), o.get("name"), o.get("uid")) for o in old.get("ownerReferences") or []]
        == [(o.get("kind"), o.get("name"), o.get("uid")) for o in new["ownerReferences"]]
    )
