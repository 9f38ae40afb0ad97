"""NodeResourceTopology (``topology.node.k8s.io/v1alpha2``) objects for pools with ``numa``.

Topology-aware schedulers read a node's NUMA zones from its NRT object: per zone the GPUs, CPUs
and memory it has (``capacity``/``allocatable``) and still has free (``available``). This module
builds that object as a pure function of the pool's ``numa`` block, the node's record (which GPU
sits in which zone, who holds it), the Node's allocatable and the CPU/memory requests of the pods
holding GPUs; the status-updater writes it. The zones are the record's ``numaNode`` values, so
the NRT, nvidia-smi ``topo -m`` and the DRA ``numaNode`` attribute tell one story.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fgo_common.config import NumaConfig
from fgo_common.topology import NodeTopology
from fgo_common.units import (
    QuantityError,
    format_bytes,
    format_millis,
    quantity_bytes,
    quantity_millis,
)

NRT_GROUP = "topology.node.k8s.io"
NRT_VERSION = "v1alpha2"
NRT_PLURAL = "noderesourcetopologies"
NRT_KIND = "NodeResourceTopology"
NRT_API_VERSION = f"{NRT_GROUP}/{NRT_VERSION}"
# Label on the NRT objects we write: the status-updater watches (and deletes) only these.
NRT_MANAGED_LABEL = "app.kubernetes.io/managed-by"
NRT_MANAGED_VALUE = "fake-gpu-operator"
NRT_FIELD_MANAGER = "fake-gpu-operator"
GPU_RESOURCE = "nvidia.com/gpu"

# The deprecated ``topologyPolicies`` enum of v1alpha1 (still read by older schedulers).
_LEGACY_POLICY = {
    "single-numa-node": "SingleNUMANode",
    "restricted": "Restricted",
    "best-effort": "BestEffort",
}


def zone_name(zone: int) -> str:
    return f"node-{zone}"


def legacy_policy(policy: str, scope: str) -> str:
    """``single-numa-node`` + ``container`` -> ``SingleNUMANodeContainerLevel``; ``none`` ->
    ``None`` (the v1alpha1 enum)."""
    base = _LEGACY_POLICY.get(policy)
    if base is None:
        return "None"
    return base + ("PodLevel" if scope == "pod" else "ContainerLevel")


@dataclass(frozen=True, slots=True)
class PodDemand:
    """What one pod asks of a node's CPUs and memory (effective requests)."""

    namespace: str
    name: str
    cpu_millis: int
    memory_bytes: int


def _request(container: Mapping[str, Any], resource: str, millis: bool) -> int:
    res = container.get("resources") or {}
    value = (res.get("requests") or {}).get(resource)
    if value is None:  # a limit alone is the request too
        value = (res.get("limits") or {}).get(resource)
    if value is None:
        return 0
    try:
        n = quantity_millis(value) if millis else quantity_bytes(value)
    except QuantityError:
        return 0  # the apiserver validated it; nothing we can read is better guessed as 0
    return max(0, n)


def container_request(container: Mapping[str, Any], resource: str, *, millis: bool) -> int:
    """One container's request of ``cpu`` (millicores, ``millis=True``) or ``memory`` (bytes);
    a limit alone counts as the request, as in Kubernetes."""
    return _request(container, resource, millis)


def _effective(spec: Mapping[str, Any], resource: str, millis: bool) -> int:
    """Kubernetes' effective pod request: max(app + sidecars, max(init_i + sidecars before))."""
    app = sum(_request(c, resource, millis) for c in spec.get("containers") or [])
    sidecars = 0
    init_peak = 0
    for c in spec.get("initContainers") or []:
        n = _request(c, resource, millis)
        if c.get("restartPolicy") == "Always":
            sidecars += n
        else:
            init_peak = max(init_peak, n + sidecars)
    return max(app + sidecars, init_peak)


def pod_demand(pod: Mapping[str, Any]) -> PodDemand:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    overhead = spec.get("overhead") or {}
    cpu = _effective(spec, "cpu", True) + _request(
        {"resources": {"requests": overhead}}, "cpu", True
    )
    mem = _effective(spec, "memory", False) + _request(
        {"resources": {"requests": overhead}}, "memory", False
    )
    return PodDemand(str(meta.get("namespace", "")), str(meta.get("name", "")), cpu, mem)


def split_largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split proportionally to ``weights`` in integers that sum to ``total`` (largest
    remainder; ties to the lower index)."""
    weight_sum = sum(weights)
    if weight_sum <= 0:
        return [0] * len(weights)
    shares = [total * w // weight_sum for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % weight_sum), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


def gpu_zones(record: NodeTopology, zones: int) -> list[int]:
    """Zone of each GPU of the record, in record order (clamped into ``0..zones-1``)."""
    return [min(max(gpu.numa_node, 0), zones - 1) for gpu in record.gpus]


def _node_quantity(allocatable: Mapping[str, Any], key: str, millis: bool) -> int | None:
    value = allocatable.get(key)
    if value is None:
        return None
    try:
        return quantity_millis(value) if millis else quantity_bytes(value)
    except QuantityError:
        return None


def zone_capacity(
    numa: NumaConfig, allocatable: Mapping[str, Any]
) -> tuple[int | None, int | None]:
    """CPU (millicores) and memory (bytes) of each zone: ``cpuPerZone``/``memPerZone``, else an
    even share of the Node's allocatable (truncated); None where neither gives it."""
    cpu_zone = numa.cpu_per_zone_millis
    if cpu_zone is None:
        node_cpu = _node_quantity(allocatable, "cpu", True)
        cpu_zone = None if node_cpu is None else node_cpu // numa.zones
    mem_zone = numa.mem_per_zone_bytes
    if mem_zone is None:
        node_mem = _node_quantity(allocatable, "memory", False)
        mem_zone = None if node_mem is None else node_mem // numa.zones
    return cpu_zone, mem_zone


def build_nrt(
    node_name: str,
    node_uid: str,
    numa: NumaConfig,
    record: NodeTopology,
    *,
    allocatable: Mapping[str, Any],
    pods: Iterable[PodDemand],
) -> dict[str, Any]:
    """The NodeResourceTopology object of one node (cluster-scoped, named after the node).

    Per zone: ``nvidia.com/gpu`` capacity = GPUs of the zone, allocatable = the healthy ones,
    available = healthy GPUs nobody holds; ``cpu``/``memory`` (when ``cpuPerZone``/``memPerZone``
    or the Node's allocatable give them) capacity = allocatable = the zone's share, available =
    that minus the requests of the pods holding GPUs of the zone, a pod's requests split over
    its zones in proportion to its GPUs there (largest remainder).
    """
    zones = numa.zones
    zone_of = gpu_zones(record, zones)
    gpu_cap = [0] * zones
    gpu_alloc = [0] * zones
    gpu_free = [0] * zones
    held: dict[tuple[str, str], list[int]] = {}  # (namespace, pod) -> GPUs held per zone
    for gpu, zone in zip(record.gpus, zone_of, strict=True):
        gpu_cap[zone] += 1
        holders = list(gpu.status.holders)
        for mig in gpu.mig_devices:
            holders.extend(mig.holders)
        if gpu.healthy:
            gpu_alloc[zone] += 1
            if not holders:
                gpu_free[zone] += 1
        for pod in {(h.namespace, h.pod) for h in holders}:
            held.setdefault(pod, [0] * zones)[zone] += 1

    cpu_zone, mem_zone = zone_capacity(numa, allocatable)
    cpu_used = [0] * zones
    mem_used = [0] * zones
    for demand in pods:
        per_zone = held.get((demand.namespace, demand.name))
        if per_zone is None:
            continue  # a pod without GPUs here has no zone we could name
        for z, n in enumerate(split_largest_remainder(demand.cpu_millis, per_zone)):
            cpu_used[z] += n
        for z, n in enumerate(split_largest_remainder(demand.memory_bytes, per_zone)):
            mem_used[z] += n

    out_zones: list[dict[str, Any]] = []
    for z in range(zones):
        resources = [_resource(GPU_RESOURCE, str(gpu_cap[z]), str(gpu_alloc[z]), str(gpu_free[z]))]
        if cpu_zone is not None:
            q = format_millis(cpu_zone)
            resources.append(_resource("cpu", q, q, format_millis(max(0, cpu_zone - cpu_used[z]))))
        if mem_zone is not None:
            q = format_bytes(mem_zone)
            resources.append(
                _resource("memory", q, q, format_bytes(max(0, mem_zone - mem_used[z])))
            )
        out_zones.append(
            {
                "name": zone_name(z),
                "type": "Node",
                "costs": [
                    {
                        "name": zone_name(other),
                        "value": numa.distance_self if other == z else numa.distance_remote,
                    }
                    for other in range(zones)
                ],
                "resources": resources,
            }
        )
    return {
        "apiVersion": NRT_API_VERSION,
        "kind": NRT_KIND,
        "metadata": {
            "name": node_name,
            "labels": {NRT_MANAGED_LABEL: NRT_MANAGED_VALUE},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}
            ],
        },
        "topologyPolicies": [
            legacy_policy(numa.topology_manager_policy, numa.topology_manager_scope)
        ],
        "attributes": [
            {"name": "topologyManagerPolicy", "value": numa.topology_manager_policy},
            {"name": "topologyManagerScope", "value": numa.topology_manager_scope},
        ],
        "zones": out_zones,
    }


def _resource(name: str, capacity: str, allocatable: str, available: str) -> dict[str, str]:
    return {
        "name": name,
        "capacity": capacity,
        "allocatable": allocatable,
        "available": available,
    }


def nrt_content(obj: Mapping[str, Any]) -> tuple[object, ...]:
    """What of an NRT object we own, for "is a write due": a stored object (with defaults,
    resourceVersion, managedFields) and a built one compare equal when nothing changed."""
    meta = obj.get("metadata") or {}
    owners = [
        (o.get("kind"), o.get("name"), o.get("uid")) for o in meta.get("ownerReferences") or []
    ]
    labels = (meta.get("labels") or {}).get(NRT_MANAGED_LABEL)
    return (
        labels,
        owners,
        obj.get("topologyPolicies"),
        obj.get("attributes"),
        obj.get("zones"),
    )


__all__ = [
    "NRT_API_VERSION",
    "NRT_FIELD_MANAGER",
    "NRT_GROUP",
    "NRT_KIND",
    "NRT_MANAGED_LABEL",
    "NRT_MANAGED_VALUE",
    "NRT_PLURAL",
    "NRT_VERSION",
    "PodDemand",
    "build_nrt",
    "container_request",
    "gpu_zones",
    "legacy_policy",
    "nrt_content",
    "pod_demand",
    "split_largest_remainder",
    "zone_capacity",
    "zone_name",
]
