"""Things the reconciler wants a human to know about: they become Kubernetes Events (and logs).

The reconciler is pure and returns findings; the controller turns them into Events, at most one
per (object, reason, message), so a bad annotation is reported once, not on every reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WARNING = "Warning"
NORMAL = "Normal"


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object an Event is about (``involvedObject``)."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    api_version: str = "v1"


@dataclass(frozen=True, slots=True)
class Finding:
    obj: ObjectRef
    reason: str
    message: str
    type: str = WARNING


def pod_ref(pod: Mapping[str, Any]) -> ObjectRef:
    meta = pod.get("metadata") or {}
    return ObjectRef(
        "Pod", str(meta.get("name", "")), str(meta.get("namespace", "")), str(meta.get("uid", ""))
    )


def node_ref(name: str, uid: str = "") -> ObjectRef:
    return ObjectRef("Node", name, "", uid)
