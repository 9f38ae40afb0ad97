"""Patches the status-updater sends besides the records: the GPU Operator's deploy labels and
the MIG state on Nodes, the GPU index on reservation pods. Each sends only what differs and
remembers what it sent until the watch brings the patched object back."""

from __future__ import annotations

from typing import Any, cast

import structlog
from fgo_common import annotations as ann
from fgo_common.kube.errors import is_not_found
from fgo_common.kube.retry import retrying
from fgo_common.names import GPU_OPERATOR_LABELS
from kubernetes_asyncio import client

from fgo_status_updater.metrics import Metrics
from fgo_status_updater.podinfo import Obj, labels_of, meta
from fgo_status_updater.rawapi import MERGE_PATCH, raw_json

log = structlog.get_logger(__name__)

DEPLOY_ALL = ("dcgm-exporter",)
DEPLOY_KUBELET = ("device-plugin", "dra-plugin-gpu", "compute-domain-dra-plugin")
# Reservation pods annotated (and not yet seen again by the watch) we remember, at most.
_MAX_REMEMBERED_RESERVATIONS = 50_000


def deploy_labels(kwok: bool) -> dict[str, str]:
    """The NVIDIA GPU Operator's per-operand deploy labels the reference sets on pool nodes:
    all get the DCGM exporter; only nodes with a kubelet get the node agents."""
    operands = DEPLOY_ALL if kwok else DEPLOY_ALL + DEPLOY_KUBELET
    return {GPU_OPERATOR_LABELS.deploy(o): "true" for o in operands}


class NodeWriter:
    def __init__(self, core: client.CoreV1Api, metrics: Metrics, *, labeling: bool) -> None:
        self.core = core
        self.metrics = metrics
        self.labeling = labeling  # False: DISABLE_NODE_LABELING, no deploy labels
        self._patched_reservations: set[tuple[str, str, str]] = set()

    async def set_deploy_labels(self, node: Obj, kwok: bool | None) -> None:
        """Add the deploy labels to a GPU node (``kwok`` True/False) or remove them from a node
        that stops being one (None). Only labels that differ are sent."""
        if not self.labeling:
            return
        current = labels_of(node)
        if kwok is None:
            wanted: dict[str, str | None] = {k: None for k in deploy_labels(False) if k in current}
        else:
            wanted = {k: v for k, v in deploy_labels(kwok).items() if current.get(k) != v}
        if wanted:
            await self.patch_node(node, {"labels": wanted}, what="label")

    async def patch_node(
        self, node: Obj, changes: dict[str, dict[str, str | None]], *, what: str = "patch"
    ) -> None:
        """Merge-patch labels/annotations of a Node (the MIG state ``mig.node_patch`` wants)."""
        if not changes:
            return
        name = str(meta(node).get("name"))

        async def send() -> object:
            patch = {"metadata": changes}
            return await raw_json(self.core.patch_node(name, cast("Any", patch), **MERGE_PATCH))

        try:
            await retrying(send, what=f"{what} node {name}")
        except Exception as exc:
            if is_not_found(exc):
                return
            raise
        self.metrics.writes.labels("Node", "patch").inc()
        # Until the watch brings the patched Node, remember the change to avoid sending it again.
        node_meta = cast("dict[str, Any]", node).setdefault("metadata", {})
        for section, values in changes.items():
            merged = dict(node_meta.get(section) or {})
            for key, value in values.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            node_meta[section] = merged

    async def annotate_reservation(self, namespace: str, pod: str, gpu: str) -> None:
        key = (namespace, pod, gpu)
        if key in self._patched_reservations:
            return
        patch = {"metadata": {"annotations": {ann.RESERVE_FOR_GPU_INDEX: gpu}}}

        async def send() -> object:
            return await raw_json(
                self.core.patch_namespaced_pod(pod, namespace, cast("Any", patch), **MERGE_PATCH)
            )

        try:
            await retrying(send, what=f"annotate reservation pod {namespace}/{pod}")
        except Exception as exc:
            if is_not_found(exc):
                return
            raise
        self._patched_reservations.add(key)
        if len(self._patched_reservations) > _MAX_REMEMBERED_RESERVATIONS:
            self._patched_reservations.clear()
        self.metrics.writes.labels("Pod", "patch").inc()
        log.info("reservation.annotated", namespace=namespace, pod=pod, gpu=gpu)
