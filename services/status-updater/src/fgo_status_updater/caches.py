"""The controller's view of the cluster: watched objects plus the indexes that say which node a
change concerns. Pure bookkeeping (no I/O): each ``on_*`` method applies one watch event and
returns the nodes whose records may have to change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fgo_common import annotations as ann
from fgo_common.kube.watch import (
    DELETED,
    WatchEvent,
    drop_managed_fields,
    identity_stub,
    object_key,
)
from fgo_common.topology import KWOK_NODE_ANNOTATION, NODE_NAME_LABEL

from fgo_status_updater.knative import KnativePod
from fgo_status_updater.podinfo import (
    Obj,
    annotations_of,
    claim_devices,
    claim_refs,
    is_gpu_relevant,
    is_running,
    labels_of,
    meta,
    pod_node,
    pod_uid,
)
from fgo_status_updater.usage import is_knative


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int(meta(obj).get("resourceVersion", ""))
    except ValueError:
        return -1


def _freeze(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (mapping or {}).items()))


def _pod_signature(pod: Obj) -> tuple[object, ...]:
    """The parts of a pod the reconciler reads; other changes (conditions, IPs) are noise."""
    status = pod.get("status") or {}
    return (
        pod_uid(pod),
        pod_node(pod),
        status.get("phase"),
        status.get("startTime"),
        _freeze(annotations_of(pod)),
        _freeze(labels_of(pod)),
        str(status.get("resourceClaimStatuses")),
    )


def _node_signature(node: Obj) -> tuple[object, ...]:
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return (
        meta(node).get("uid"),
        _freeze(labels_of(node)),
        annotations_of(node).get(KWOK_NODE_ANNOTATION),
        annotations_of(node).get("run.ai/mig.config"),  # the reference's MIG request
        # CPUs and memory: a NodeResourceTopology's zones default to shares of them.
        tuple(str(allocatable.get(k)) for k in ("cpu", "memory")),
    )


_CONTAINER_FIELDS = ("name", "resources", "restartPolicy")
_POD_SPEC_FIELDS = ("nodeName", "resourceClaims", "priorityClassName")
_POD_STATUS_FIELDS = ("phase", "startTime", "resourceClaimStatuses")


def _slim_containers(containers: Any) -> list[dict[str, Any]]:
    return [
        {k: c[k] for k in _CONTAINER_FIELDS if k in c}
        for c in containers or []
        if isinstance(c, dict)
    ]


def slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """A GPU pod as the reconciler reads it: metadata, where it runs, what its containers
    request (and their restart policy: sidecars), its claims and priority class, its phase.
    Images, env, volumes, tolerations and conditions are most of a pod and never read."""
    drop_managed_fields(pod)
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    slim_spec: dict[str, Any] = {k: spec[k] for k in _POD_SPEC_FIELDS if k in spec}
    slim_spec["containers"] = _slim_containers(spec.get("containers"))
    if spec.get("initContainers"):
        slim_spec["initContainers"] = _slim_containers(spec.get("initContainers"))
    return {
        "metadata": pod.get("metadata") or {},
        "spec": slim_spec,
        "status": {k: status[k] for k in _POD_STATUS_FIELDS if k in status},
    }


def pod_view(reservation_namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    """What the pods watch keeps of a pod (its Reflector transform). The watch sees every
    scheduled pod of the cluster; GPU pods are kept as :func:`slim_pod`, the rest as identity
    stubs, which :meth:`Caches.on_pod` treats as what they are: pods of no interest."""
    if is_gpu_relevant(pod, reservation_namespace):
        return slim_pod(pod)
    return identity_stub(pod)


@dataclass
class Caches:
    reservation_namespace: str
    record_prefix: str  # "<TOPOLOGY_CM_NAME>-"
    nodes: dict[str, Obj] = field(default_factory=dict)
    pods_by_node: dict[str, dict[str, Obj]] = field(default_factory=dict)
    pod_node: dict[str, str] = field(default_factory=dict)  # pod key -> node (GPU pods only)
    pod_sig: dict[str, tuple[object, ...]] = field(default_factory=dict)
    pod_claims: dict[str, list[str]] = field(default_factory=dict)  # pod key -> claim keys
    claim_users: dict[str, set[str]] = field(default_factory=dict)  # claim key -> pod keys
    claims: dict[str, Obj] = field(default_factory=dict)
    pod_groups: dict[str, str] = field(default_factory=dict)  # "ns/name" -> priority class
    records: dict[str, Obj] = field(default_factory=dict)  # node -> topology ConfigMap

    # --- nodes -----------------------------------------------------------------------------
    def on_node(self, event: WatchEvent) -> set[str]:
        name = str(meta(event.obj).get("name", ""))
        if event.type == DELETED:
            self.nodes.pop(name, None)
            return {name}
        old = self.nodes.get(name)
        self.nodes[name] = event.obj
        if old is not None and _node_signature(old) == _node_signature(event.obj):
            return set()
        return {name}

    # --- pods ------------------------------------------------------------------------------
    def on_pod(self, event: WatchEvent) -> set[str]:
        pod = event.obj
        key = object_key(pod)
        old_node = self.pod_node.get(key)
        dirty: set[str] = set()
        if event.type == DELETED or not is_gpu_relevant(pod, self.reservation_namespace):
            if old_node is not None:
                self._forget_pod(key, old_node)
                dirty.add(old_node)
            return dirty
        node = pod_node(pod)
        signature = _pod_signature(pod)
        unchanged = old_node == node and self.pod_sig.get(key) == signature
        if old_node is not None and old_node != node:
            self._forget_pod(key, old_node)
            dirty.add(old_node)
        self.pods_by_node.setdefault(node, {})[key] = pod
        self.pod_node[key] = node
        self.pod_sig[key] = signature
        self._index_claims(key, pod)
        if not unchanged:
            dirty.add(node)
        return dirty

    def _forget_pod(self, key: str, node: str) -> None:
        on_node = self.pods_by_node.get(node)
        if on_node is not None:
            on_node.pop(key, None)
            if not on_node:
                del self.pods_by_node[node]
        self.pod_node.pop(key, None)
        self.pod_sig.pop(key, None)
        for claim in self.pod_claims.pop(key, []):
            users = self.claim_users.get(claim)
            if users is not None:
                users.discard(key)
                if not users:
                    del self.claim_users[claim]

    def _index_claims(self, key: str, pod: Obj) -> None:
        namespace = str(meta(pod).get("namespace", ""))
        wanted = [f"{namespace}/{claim}" for _, claim in claim_refs(pod)]
        for claim in self.pod_claims.get(key, []):
            if claim not in wanted:
                self.claim_users.get(claim, set()).discard(key)
        for claim in wanted:
            self.claim_users.setdefault(claim, set()).add(key)
        if wanted:
            self.pod_claims[key] = wanted
        else:
            self.pod_claims.pop(key, None)

    def pods_on(self, node: str) -> list[Obj]:
        return list(self.pods_by_node.get(node, {}).values())

    # --- ResourceClaims --------------------------------------------------------------------
    def _claim_nodes(self, key: str, claim: Obj | None) -> set[str]:
        nodes = {self.pod_node[p] for p in self.claim_users.get(key, ()) if p in self.pod_node}
        if claim is not None:
            nodes.update(d.pool for d in claim_devices(claim) if d.pool in self.nodes)
        return nodes

    def on_claim(self, event: WatchEvent) -> set[str]:
        key = object_key(event.obj)
        old = self.claims.get(key)
        if event.type == DELETED:
            self.claims.pop(key, None)
        else:
            self.claims[key] = event.obj
            if old is not None and claim_devices(old) == claim_devices(event.obj):
                return set()
        return self._claim_nodes(key, old) | self._claim_nodes(key, event.obj)

    # --- PodGroups -------------------------------------------------------------------------
    def on_pod_group(self, event: WatchEvent) -> set[str]:
        key = object_key(event.obj)
        before = self.pod_groups.get(key)
        if event.type == DELETED:
            self.pod_groups.pop(key, None)
        else:
            spec = event.obj.get("spec") or {}
            self.pod_groups[key] = str(spec.get("priorityClassName") or "")
        if self.pod_groups.get(key) == before:
            return set()
        namespace, _, name = key.partition("/")
        return {
            self.pod_node[k]
            for k, node_pods in self._pods_in(namespace)
            if annotations_of(node_pods).get(ann.POD_GROUP_NAME) == name
        }

    def _pods_in(self, namespace: str) -> Iterable[tuple[str, Obj]]:
        for pods in self.pods_by_node.values():
            for key, pod in pods.items():
                if key.startswith(namespace + "/"):
                    yield key, pod

    # --- topology records ------------------------------------------------------------------
    def record_node(self, cm: Obj) -> str | None:
        name = str(meta(cm).get("name", ""))
        if not name.startswith(self.record_prefix):
            return None
        return labels_of(cm).get(NODE_NAME_LABEL) or name.removeprefix(self.record_prefix)

    def on_record(self, event: WatchEvent) -> set[str]:
        node = self.record_node(event.obj)
        if node is None:
            return set()
        known = self.records.get(node)
        if event.type == DELETED:
            if known is not None and _rv(known) > _rv(event.obj) >= 0:
                return set()  # an older incarnation; we already hold a newer one
            self.records.pop(node, None)
            return {node}
        if known is not None and _rv(known) >= _rv(event.obj) >= 0:
            return set()  # our own write (or older): nothing new
        self.records[node] = event.obj
        return {node}

    def store_record(self, node: str, cm: Obj | None) -> None:
        """What a write (or a fresh read) returned: newer than anything the watch has said."""
        if cm is None:
            self.records.pop(node, None)
        else:
            self.records[node] = cm

    # --- Knative ---------------------------------------------------------------------------
    def knative_pods(self) -> list[KnativePod]:
        out = []
        for node, pods in self.pods_by_node.items():
            for pod in pods.values():
                if is_running(pod) and is_knative(pod, self.pod_groups):
                    m = meta(pod)
                    out.append(
                        KnativePod(pod_uid(pod), str(m.get("namespace")), str(m.get("name")), node)
                    )
        return out

    def all_nodes(self) -> set[str]:
        return set(self.nodes) | set(self.records)
