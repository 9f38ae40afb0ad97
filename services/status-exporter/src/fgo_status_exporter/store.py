"""The served nodes' topology records, kept from the per-node ConfigMaps.

Only GPU facts the status-updater wrote reach the exporter: a ConfigMap ``<prefix>-<node>``
(label ``node-topology=true``, key ``topology.yml``). In node mode the one ConfigMap of
``NODE_NAME`` is served; in kwok mode every ConfigMap whose node is a KWOK node (annotation
``kwok.x-k8s.io/node=fake`` on the ConfigMap, or ``kwok: true`` in the record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from fgo_common.annotations import KWOK_NODE, KWOK_NODE_VALUE
from fgo_common.topology import (
    NODE_NAME_LABEL,
    TOPOLOGY_DATA_KEY,
    NodeTopology,
    TopologyFormatError,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Parsed:
    node_name: str
    topology: NodeTopology
    kwok: bool


def node_name_of(cm: dict[str, Any], prefix: str) -> str:
    """The node a topology ConfigMap describes: its ``node-name`` label, else the name minus
    ``<prefix>-``."""
    meta = cm.get("metadata") or {}
    labelled = (meta.get("labels") or {}).get(NODE_NAME_LABEL)
    if labelled:
        return str(labelled)
    return str(meta.get("name", "")).removeprefix(f"{prefix}-")


def parse_configmap(cm: dict[str, Any], prefix: str) -> Parsed:
    """Read a topology ConfigMap (as the JSON dict the apiserver sent)."""
    node_name = node_name_of(cm, prefix)
    text = (cm.get("data") or {}).get(TOPOLOGY_DATA_KEY)
    if text is None:
        raise TopologyFormatError(f"no {TOPOLOGY_DATA_KEY} key")
    topology = NodeTopology.from_yaml(text, node_name)
    if not topology.node_name:
        topology.node_name = node_name
    annotations = (cm.get("metadata") or {}).get("annotations") or {}
    kwok = annotations.get(KWOK_NODE) == KWOK_NODE_VALUE or topology.kwok
    return Parsed(node_name, topology, kwok)


class TopologyStore:
    """Current record per served node; ``version`` moves on every change."""

    def __init__(self, *, accept: Callable[[Parsed], bool]) -> None:
        self._accept = accept
        self.nodes: dict[str, NodeTopology] = {}
        self._by_cm: dict[str, str] = {}  # ConfigMap key -> node name
        self._uids: dict[str, str] = {}  # ConfigMap key -> uid of the object we last read
        self.version = 0
        self.listeners: list[Callable[[str], None]] = []
        # Called when a ConfigMap was deleted and created again (seen as one change after a
        # relist): what was derived from the old object must be re-checked, not assumed.
        self.recreated: list[Callable[[str], None]] = []

    def _changed(self, node_name: str) -> None:
        self.version += 1
        for listener in self.listeners:
            listener(node_name)

    def apply(self, cm_key: str, cm: dict[str, Any], prefix: str) -> None:
        """An added or modified ConfigMap."""
        try:
            parsed = parse_configmap(cm, prefix)
        except TopologyFormatError as exc:
            # Keep serving the last good record: a bad write must not blank a node's metrics.
            log.warning("topology.unreadable", configmap=cm_key, error=str(exc)[:300])
            return
        old_node = self._by_cm.get(cm_key)
        if not self._accept(parsed):
            if old_node is not None:
                self.delete(cm_key)
            return
        if old_node is not None and old_node != parsed.node_name:
            self.delete(cm_key)
        uid = str((cm.get("metadata") or {}).get("uid") or "")
        previous_uid = self._uids.get(cm_key)
        self._uids[cm_key] = uid
        if previous_uid is not None and previous_uid != uid:
            for listener in self.recreated:
                listener(parsed.node_name)
        self._by_cm[cm_key] = parsed.node_name
        self.nodes[parsed.node_name] = parsed.topology
        self._changed(parsed.node_name)

    def delete(self, cm_key: str) -> None:
        self._uids.pop(cm_key, None)
        node_name = self._by_cm.pop(cm_key, None)
        if node_name is None:
            return
        self.nodes.pop(node_name, None)
        self._changed(node_name)
