"""Kubernetes Events (core v1), each reported once.

An Event's name is derived from (object UID, reason, message), so reporting the same finding
again — on the next reconcile, or after a restart — hits ``409 AlreadyExists`` instead of adding
a duplicate. An in-memory set skips the API call for findings already reported by this process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from typing import Any, cast

import structlog
from fgo_common.kube.errors import is_conflict
from fgo_common.kube.leader import NotLeading
from fgo_common.kube.retry import retrying
from kubernetes_asyncio import client

from fgo_status_updater.findings import Finding
from fgo_status_updater.metrics import Metrics

log = structlog.get_logger(__name__)

COMPONENT = "fake-gpu-operator/status-updater"
# Events about cluster-scoped objects (Nodes) live here, where kubectl describe finds them.
CLUSTER_EVENTS_NAMESPACE = "default"
_MAX_MESSAGE = 1000
_REMEMBERED = 20_000


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_name(finding: Finding) -> str:
    digest = hashlib.sha256(
        "|".join(
            (
                finding.obj.kind,
                finding.obj.namespace,
                finding.obj.name,
                finding.obj.uid,
                finding.reason,
                finding.message,
            )
        ).encode()
    ).hexdigest()[:16]
    base = finding.obj.name[:200] or finding.obj.kind.lower()
    return f"{base}.fgo.{digest}"


class EventRecorder:
    def __init__(self, core: client.CoreV1Api, metrics: Metrics, instance: str) -> None:
        self._core = core
        self._metrics = metrics
        self._instance = instance
        self._sent: OrderedDict[str, None] = OrderedDict()

    async def report(self, finding: Finding, *, once: bool = True) -> None:
        """Create the Event for ``finding`` unless it was reported before (``once``)."""
        name = event_name(finding)
        if once and name in self._sent:
            return
        self._remember(name)
        log_fn = log.warning if finding.type == "Warning" else log.info
        log_fn(
            "event." + finding.reason,
            kind=finding.obj.kind,
            namespace=finding.obj.namespace,
            name=finding.obj.name,
            message=finding.message,
        )
        namespace = finding.obj.namespace or CLUSTER_EVENTS_NAMESPACE
        now = _now()
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"namespace": namespace},
            "involvedObject": {
                "apiVersion": finding.obj.api_version,
                "kind": finding.obj.kind,
                "name": finding.obj.name,
                "namespace": finding.obj.namespace or None,
                "uid": finding.obj.uid or None,
            },
            "reason": finding.reason,
            "message": finding.message[:_MAX_MESSAGE],
            "type": finding.type,
            "source": {"component": "status-updater"},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        if once:
            body["metadata"]["name"] = name
        else:
            body["metadata"]["generateName"] = f"{finding.obj.name[:200]}.fgo."

        async def create() -> object:
            return await self._core.create_namespaced_event(namespace, cast("Any", body))

        try:
            await retrying(create, what=f"event {finding.reason}", attempts=3)
            self._metrics.events.labels(finding.reason).inc()
            self._metrics.writes.labels("Event", "create").inc()
        except NotLeading:
            # A standby sees the same inputs; the leader reports them (and logs said it).
            self._sent.pop(name, None)
            return
        except Exception as exc:
            if is_conflict(exc):
                return  # reported before this process started
            # Events are best effort: a lost Event must never stop reconciling.
            log.warning("event.failed", reason=finding.reason, error=str(exc)[:200])

    def _remember(self, name: str) -> None:
        self._sent[name] = None
        while len(self._sent) > _REMEMBERED:
            self._sent.popitem(last=False)
