"""What the status-updater needs to know about a pod, read from the pod's JSON (a plain dict).

Pure functions, no I/O: the reconciler and the unit tests share them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fgo_common import annotations as ann

Obj = Mapping[str, Any]

GPU_RESOURCE = "nvidia.com/gpu"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def pod_key(pod: Obj) -> str:
    m = meta(pod)
    return f"{m.get('namespace', '')}/{m.get('name', '')}"


def pod_uid(pod: Obj) -> str:
    return str(meta(pod).get("uid", ""))


def pod_node(pod: Obj) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def pod_phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def is_active(pod: Obj) -> bool:
    """Bound to a node and not finished: it holds whatever it was given until it completes or
    its object is gone (a pod being deleted keeps its devices until the kubelet lets go)."""
    return bool(pod_node(pod)) and pod_phase(pod) not in TERMINAL_PHASES


def is_running(pod: Obj) -> bool:
    return pod_phase(pod) == "Running"


def labels_of(obj: Obj) -> Mapping[str, str]:
    return meta(obj).get("labels") or {}


def annotations_of(obj: Obj) -> Mapping[str, str]:
    return meta(obj).get("annotations") or {}


def parse_time(value: object) -> float:
    """RFC 3339 timestamp (as the apiserver writes them) to unix seconds; 0.0 if absent/bad."""
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def start_time(pod: Obj) -> float:
    """When the kubelet (or KWOK) started the pod: what energy accounting counts from, stored in
    the pod itself so it survives a restart of the status-updater."""
    return parse_time((pod.get("status") or {}).get("startTime"))


def sort_key(pod: Obj) -> tuple[str, str, str]:
    """Deterministic processing order: oldest first, then by name (a batch of new pods is
    assigned GPUs the same way whatever order the watch delivered them in)."""
    m = meta(pod)
    return (str(m.get("creationTimestamp", "")), str(m.get("namespace", "")), str(m.get("name")))


# --- extended-resource requests ----------------------------------------------------------------


def _quantity_int(value: object) -> int:
    """Extended resources are integers; the apiserver rejects anything else, so a value we
    cannot read is treated as 0 rather than guessed."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        for suffix, factor in (("k", 1000), ("M", 1000**2)):
            if text.endswith(suffix) and text[: -len(suffix)].isdigit():
                return int(text[: -len(suffix)]) * factor
    return 0


def container_request(container: Obj, resource: str) -> int:
    """A container's count of an extended resource: its limit (requests must equal limits for
    extended resources, and a limit alone implies the request)."""
    res = container.get("resources") or {}
    limits = res.get("limits") or {}
    if resource in limits:
        return _quantity_int(limits[resource])
    return _quantity_int((res.get("requests") or {}).get(resource))


@dataclass(frozen=True, slots=True)
class Request:
    """A pod's effective request of one resource and which containers it is for, in order."""

    total: int
    slots: tuple[tuple[str, int], ...] = ()  # (container name, count)


def _is_sidecar(container: Obj) -> bool:
    return container.get("restartPolicy") == "Always"


def effective_request(pod: Obj, resource: str) -> Request:
    """Kubernetes' effective request of ``resource`` for ``pod``.

    ``max(sum(app containers) + sum(sidecars), max over init containers i of (init_i + sidecars
    started before i))`` (KEP-753 rule; without sidecars the classic ``max(sum(app), max(init))``).
    Devices given to init containers are reused by later containers, so the pod holds exactly
    this many. ``slots`` say which container each unit is for: app containers and sidecars in
    order, then the surplus of the largest init container.
    """
    spec = pod.get("spec") or {}
    slots: list[tuple[str, int]] = []
    app_total = 0
    for container in spec.get("containers") or []:
        n = container_request(container, resource)
        if n:
            slots.append((str(container.get("name", "")), n))
            app_total += n
    sidecars_before = 0
    init_peak = 0
    init_peak_name = ""
    sidecar_slots: list[tuple[str, int]] = []
    for container in spec.get("initContainers") or []:
        n = container_request(container, resource)
        if _is_sidecar(container):
            if n:
                sidecar_slots.append((str(container.get("name", "")), n))
            sidecars_before += n
            continue
        if n and n + sidecars_before > init_peak:
            init_peak = n + sidecars_before
            init_peak_name = str(container.get("name", ""))
    steady = app_total + sum(n for _, n in sidecar_slots)
    slots.extend(sidecar_slots)
    total = max(steady, init_peak)
    if init_peak > steady:
        slots.append((init_peak_name, init_peak - steady))
    return Request(total, tuple(slots))


def requested_resources(pod: Obj) -> set[str]:
    """Every extended-looking resource any container of the pod names."""
    spec = pod.get("spec") or {}
    names: set[str] = set()
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        res = container.get("resources") or {}
        for section in ("limits", "requests"):
            names.update(k for k in (res.get(section) or {}) if "/" in k)
    return names


# --- DRA ---------------------------------------------------------------------------------------


def claim_refs(pod: Obj) -> list[tuple[str, str]]:
    """``(pod claim name, ResourceClaim name)`` for every claim of the pod whose object is known:
    named directly, or generated from a template (then the name is in the pod's status)."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    generated = {
        str(s.get("name")): s.get("resourceClaimName")
        for s in status.get("resourceClaimStatuses") or []
    }
    out: list[tuple[str, str]] = []
    for ref in spec.get("resourceClaims") or []:
        name = str(ref.get("name", ""))
        claim = ref.get("resourceClaimName") or generated.get(name)
        if claim:
            out.append((name, str(claim)))
    return out


def claim_container(pod: Obj, pod_claim_name: str) -> str:
    """The first container that uses the claim (the reference's choice), else the first one."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    for container in containers:
        for used in (container.get("resources") or {}).get("claims") or []:
            if used.get("name") == pod_claim_name:
                return str(container.get("name", ""))
    return str(containers[0].get("name", "")) if containers else ""


@dataclass(frozen=True, slots=True)
class ClaimDevice:
    driver: str
    pool: str
    device: str
    request: str


def claim_devices(claim: Obj) -> list[ClaimDevice]:
    """The devices a ResourceClaim was allocated (empty while unallocated)."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    results = (allocation.get("devices") or {}).get("results") or []
    return [
        ClaimDevice(
            driver=str(r.get("driver", "")),
            pool=str(r.get("pool", "")),
            device=str(r.get("device", "")),
            request=str(r.get("request", "")),
        )
        for r in results
    ]


# --- Run:ai shared GPUs ------------------------------------------------------------------------


def is_reservation_pod(pod: Obj, reservation_namespace: str) -> bool:
    return str(meta(pod).get("namespace", "")) == reservation_namespace


def is_shared_pod(pod: Obj, reservation_namespace: str) -> bool:
    """A fractional pod: it uses (part of) the GPU its reservation pod holds."""
    if is_reservation_pod(pod, reservation_namespace):
        return False
    return ann.RUNAI_GPU in annotations_of(pod) or ann.RUNAI_GPU_GROUP in labels_of(pod)


def is_gpu_relevant(pod: Obj, reservation_namespace: str) -> bool:
    """Could this pod change any node record? Filters the watch noise of ordinary pods.

    Any extended resource (a name with a ``/``) counts, not only the configured ones, so a
    live config change that adds an ``otherDevices`` entry needs no re-evaluation here.
    """
    spec = pod.get("spec") or {}
    if spec.get("resourceClaims"):
        return True
    if is_reservation_pod(pod, reservation_namespace) or is_shared_pod(pod, reservation_namespace):
        return True
    return bool(requested_resources(pod))
