"""What the fake kubelet podresources API (v1) answers for one node: pure functions.

Inputs are the node's record (which GPU sits in which NUMA zone, who holds it), its pool's
``numa`` block, the Node's allocatable and the node's pods; outputs are the v1 messages
(``List``, ``GetAllocatableResources``, ``Get``). CPU ids are synthetic and contiguous per zone;
the zones' CPUs and memory and each pod's split over its zones follow ``fgo_common.nrt``, so the
NodeResourceTopology object and this API tell one story (docs/numa.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fgo_common.config import NumaConfig
from fgo_common.nrt import container_request, split_largest_remainder, zone_capacity
from fgo_common.topology import (
    HOLDER_DEVICE_PLUGIN,
    HOLDER_RESERVATION,
    Holder,
    NodeTopology,
)
from fgo_common.units import format_millis
from fgo_kubelet_api import podresources_v1 as podres

pb2 = podres.pb2
GPU_RESOURCE = "nvidia.com/gpu"
MEMORY_TYPE = (
    "memory"  # ContainerMemory.memory_type of regular memory (hugepages: hugepages-<size>)
)
_TERMINAL = ("Succeeded", "Failed")

Obj = Mapping[str, Any]


class PodResourcesError(Exception):
    """The node's answers cannot be built (no record yet, a numa block the node cannot hold)."""


@dataclass(frozen=True, slots=True)
class NumaLayout:
    """A node's NUMA zones: synthetic CPU ids (contiguous per zone) and memory per zone."""

    cpu_ids: tuple[tuple[int, ...], ...]
    memory_bytes: tuple[int, ...] | None
    distances: tuple[tuple[int, ...], ...]

    @property
    def zones(self) -> int:
        return len(self.cpu_ids)

    @property
    def all_cpu_ids(self) -> list[int]:
        return [cpu for ids in self.cpu_ids for cpu in ids]


def numa_layout(pool: str, numa: NumaConfig, allocatable: Mapping[str, Any]) -> NumaLayout:
    """The zones of a node of ``pool``. Each zone needs whole CPUs (a CPU id is a whole CPU):
    an explicit ``cpuPerZone`` must be a whole number of at least one; an even share of the
    Node's allocatable is truncated to whole CPUs."""
    cpu_zone, mem_zone = zone_capacity(numa, allocatable)
    field_path = f"nodePools.{pool}.numa.cpuPerZone"
    if cpu_zone is None:
        raise PodResourcesError(
            f"{field_path}: not set and the Node reports no allocatable cpu; CPU ids per zone "
            "cannot be numbered"
        )
    if numa.cpu_per_zone_millis is not None and cpu_zone % 1000:
        raise PodResourcesError(
            f"{field_path}: {format_millis(cpu_zone)} is not a whole number of CPUs; CPU ids "
            "(podresources cpu_ids, sysfs cpulist) need whole CPUs per zone"
        )
    cores = cpu_zone // 1000
    if cores < 1:
        source = "cpuPerZone" if numa.cpu_per_zone_millis is not None else "allocatable cpu / zones"
        raise PodResourcesError(
            f"{field_path}: {format_millis(cpu_zone)} per zone ({source}) is less than one whole "
            f"CPU for each of the {numa.zones} zones"
        )
    cpu_ids = tuple(tuple(range(z * cores, (z + 1) * cores)) for z in range(numa.zones))
    distances = tuple(
        tuple(numa.distance_self if a == b else numa.distance_remote for b in range(numa.zones))
        for a in range(numa.zones)
    )
    memory = None if mem_zone is None else (mem_zone,) * numa.zones
    return NumaLayout(cpu_ids, memory, distances)


# --- sysfs ----------------------------------------------------------------------------------------


def cpulist(ids: Iterable[int]) -> str:
    """Linux cpulist format: ``0-3,8,10-11`` (empty for no CPU)."""
    out: list[str] = []
    ordered = sorted(set(ids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def cpumask(ids: Iterable[int], nr_cpus: int) -> str:
    """Linux cpumap format: the mask in 32-bit hex words, most significant first, comma separated
    (``00000000,0000ffff`` for CPUs 0-15 of 64)."""
    mask = 0
    for cpu in ids:
        mask |= 1 << cpu
    words = max(1, (nr_cpus + 31) // 32)
    return ",".join(f"{(mask >> (32 * w)) & 0xFFFFFFFF:08x}" for w in reversed(range(words)))


def sysfs_files(layout: NumaLayout) -> dict[str, str]:
    """The sysfs files of the layout, relative to the sysfs root (``/sys``), with their content
    (one line, newline-terminated, as the kernel prints them)."""
    nodes = cpulist(range(layout.zones))
    all_cpus = cpulist(layout.all_cpu_ids)
    nr_cpus = len(layout.all_cpu_ids)
    # The zones first, the lists naming them last: written in this order, a reader that goes
    # by ``online`` never finds a zone it names without its files.
    files: dict[str, str] = {}
    for z, ids in enumerate(layout.cpu_ids):
        base = f"devices/system/node/node{z}"
        files[f"{base}/cpulist"] = cpulist(ids)
        files[f"{base}/cpumap"] = cpumask(ids, nr_cpus)
        files[f"{base}/distance"] = " ".join(str(d) for d in layout.distances[z])
    files.update(
        {
            "devices/system/cpu/present": all_cpus,
            "devices/system/cpu/possible": all_cpus,
            "devices/system/cpu/online": all_cpus,
            "devices/system/node/has_memory": nodes,
            "devices/system/node/has_cpu": nodes,
            "devices/system/node/possible": nodes,
            "devices/system/node/online": nodes,
        }
    )
    return {path: text + "\n" for path, text in files.items()}


# --- podresources answers -------------------------------------------------------------------------


def _topology(zone: int | None) -> pb2.TopologyInfo | None:
    return None if zone is None else pb2.TopologyInfo(nodes=[pb2.NUMANode(ID=zone)])


def _zone(layout: NumaLayout | None, numa_node: int) -> int | None:
    if layout is None:
        return None
    return min(max(numa_node, 0), layout.zones - 1)


def _device_entry(resource: str, device_id: str, zone: int | None) -> pb2.ContainerDevices:
    # One entry per device, each with its own NUMA node, as the kubelet reports them.
    entry = pb2.ContainerDevices(resource_name=resource, device_ids=[device_id])
    topology = _topology(zone)
    if topology is not None:
        entry.topology.CopyFrom(topology)
    return entry


def _memory_entry(size: int, zone: int) -> pb2.ContainerMemory:
    return pb2.ContainerMemory(memory_type=MEMORY_TYPE, size=size, topology=_topology(zone))


def _mig_resource(record: NodeTopology, profile: str) -> str:
    return GPU_RESOURCE if record.mig_strategy == "single" else f"nvidia.com/mig-{profile}"


def allocatable_response(
    record: NodeTopology, layout: NumaLayout | None
) -> pb2.AllocatableResourcesResponse:
    """Every device the node's device plugin advertises healthy, every CPU id, each zone's
    memory."""
    devices: list[pb2.ContainerDevices] = []
    for gpu in record.gpus:
        zone = _zone(layout, gpu.numa_node)
        if gpu.mig_enabled:
            for mig in gpu.mig_devices:
                if mig.health == "Healthy" and gpu.healthy:
                    resource = _mig_resource(record, mig.profile)
                    devices.append(_device_entry(resource, mig.uuid, zone))
        elif gpu.healthy:
            devices.append(_device_entry(GPU_RESOURCE, gpu.id, zone))
    response = pb2.AllocatableResourcesResponse(devices=devices)
    if layout is not None:
        response.cpu_ids.extend(layout.all_cpu_ids)
        if layout.memory_bytes is not None:
            response.memory.extend(
                _memory_entry(size, z) for z, size in enumerate(layout.memory_bytes)
            )
    return response


@dataclass
class _Held:
    """Device-plugin devices one container holds: (resource, device id, NUMA node)."""

    devices: list[tuple[str, str, int]] = field(default_factory=list)


def _uid(pod: Obj) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def _name(pod: Obj) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _created(pod: Obj) -> tuple[str, str, str, str]:
    # RFC 3339 UTC timestamps sort as strings.
    meta = pod.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), *_name(pod), _uid(pod))


def listed_containers(pod: Obj) -> list[Obj]:
    """The containers the kubelet lists: restartable init containers (sidecars), then the
    app containers."""
    spec = pod.get("spec") or {}
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return [*sidecars, *(spec.get("containers") or [])]


def active_pods(pods: Iterable[Obj]) -> list[Obj]:
    """Pods the kubelet still lists (not Succeeded or Failed), in a stable order."""
    out = [p for p in pods if (p.get("status") or {}).get("phase") not in _TERMINAL]
    return sorted(out, key=lambda p: (*_name(p), _uid(p)))


def _holdings(record: NodeTopology) -> dict[str, dict[str, _Held]]:
    """Pod key (uid, else ``namespace/name``) -> container -> device-plugin devices held.
    A holder without a container name is charged to the pod's first container (key "")."""
    out: dict[str, dict[str, _Held]] = {}

    def add(holder: Holder, resource: str, device_id: str, numa_node: int) -> None:
        if holder.kind not in (HOLDER_DEVICE_PLUGIN, HOLDER_RESERVATION):
            return  # DRA devices are reported by the DRA path, not as device-plugin devices
        key = holder.pod_uid or f"{holder.namespace}/{holder.pod}"
        held = out.setdefault(key, {}).setdefault(holder.container, _Held())
        held.devices.append((resource, device_id, numa_node))

    for gpu in record.gpus:
        for holder in gpu.status.holders:
            add(holder, holder.resource or GPU_RESOURCE, gpu.id, gpu.numa_node)
        for mig in gpu.mig_devices:
            for holder in mig.holders:
                resource = holder.resource or _mig_resource(record, mig.profile)
                add(holder, resource, mig.uuid, gpu.numa_node)
    return out


class CpuAssigner:
    """Exclusive CPU ids per container, kept stable while the container exists (as the kubelet's
    CPU manager keeps them): a container keeps its ids as long as it asks the same per zone;
    new ones get the lowest free ids of each zone. State lives in memory only (a restart
    renumbers oldest pod first, as a kubelet without its checkpoint would)."""

    def __init__(self) -> None:
        self._given: dict[tuple[str, str], dict[int, tuple[int, ...]]] = {}
        self._layout: NumaLayout | None = None

    def assign(
        self, layout: NumaLayout, wants: Mapping[tuple[str, str], Mapping[int, int]]
    ) -> dict[tuple[str, str], dict[int, tuple[int, ...]]]:
        if layout != self._layout:
            self._given = {}
            self._layout = layout
        kept: dict[tuple[str, str], dict[int, tuple[int, ...]]] = {}
        for key, per_zone in wants.items():
            old = self._given.get(key)
            if old is not None and {z: len(ids) for z, ids in old.items()} == {
                z: n for z, n in per_zone.items() if n
            }:
                kept[key] = old
        used = {cpu for given in kept.values() for ids in given.values() for cpu in ids}
        for key, per_zone in wants.items():
            if key in kept:
                continue
            given: dict[int, tuple[int, ...]] = {}
            for z, n in sorted(per_zone.items()):
                if n <= 0:
                    continue
                free = [cpu for cpu in layout.cpu_ids[z] if cpu not in used][:n]
                used.update(free)
                given[z] = tuple(free)
            kept[key] = given
        self._given = kept
        return kept


@dataclass(frozen=True, slots=True)
class _ContainerPlan:
    devices: tuple[tuple[str, str, int], ...]
    cpu_ids: tuple[int, ...]
    memory: tuple[tuple[int, int], ...]  # (zone, bytes)


class NodeAnswers:
    """The podresources answers of one node at one moment (built per request: the node's pods
    number tens, a build costs well under a millisecond per pod)."""

    def __init__(
        self,
        record: NodeTopology,
        layout: NumaLayout | None,
        pods: Sequence[Obj],
        cpus: CpuAssigner,
    ) -> None:
        self.record = record
        self.layout = layout
        self.pods = active_pods(pods)
        self._plans = self._plan(cpus)

    def _plan(self, cpus: CpuAssigner) -> dict[tuple[str, str], _ContainerPlan]:
        held = _holdings(self.record)
        layout = self.layout
        wants: dict[tuple[str, str], dict[int, int]] = {}
        memory: dict[tuple[str, str], list[tuple[int, int]]] = {}
        devices: dict[tuple[str, str], tuple[tuple[str, str, int], ...]] = {}
        # Oldest first: CPU ids are handed out in the order the pods came, so a restart (ids
        # not checkpointed) gives the same ids back as long as no pod left meanwhile.
        for pod in sorted(self.pods, key=_created):
            ns, name = _name(pod)
            by_container = held.get(_uid(pod)) or held.get(f"{ns}/{name}") or {}
            if not by_container:
                continue
            containers = [str(c.get("name", "")) for c in listed_containers(pod)]
            first = (pod.get("spec") or {}).get("containers") or [{}]
            first_name = str(first[0].get("name", ""))
            per_container: dict[str, list[tuple[str, str, int]]] = {}
            for cname, h in by_container.items():
                target = cname if cname in containers else first_name
                per_container.setdefault(target, []).extend(h.devices)
            pod_weights = [0] * (layout.zones if layout else 0)
            for devs in per_container.values():
                for _, _, numa_node in devs:
                    if layout is not None:
                        pod_weights[_zone(layout, numa_node) or 0] += 1
            for c in listed_containers(pod):
                cname = str(c.get("name", ""))
                key = (_uid(pod) or f"{ns}/{name}", cname)
                devs = per_container.get(cname, [])
                devices[key] = tuple(devs)
                if layout is None:
                    continue
                weights = [0] * layout.zones
                for _, _, numa_node in devs:
                    weights[_zone(layout, numa_node) or 0] += 1
                if not any(weights):
                    weights = pod_weights  # a GPU pod's other containers sit on its zones
                cores = container_request(c, "cpu", millis=True) // 1000
                wants[key] = dict(enumerate(split_largest_remainder(cores, weights)))
                mem = container_request(c, "memory", millis=False)
                memory[key] = [
                    (z, n) for z, n in enumerate(split_largest_remainder(mem, weights)) if n
                ]
        given = cpus.assign(layout, wants) if layout is not None else {}
        return {
            key: _ContainerPlan(
                devs,
                tuple(cpu for _, ids in sorted(given.get(key, {}).items()) for cpu in ids),
                tuple(memory.get(key, ())),
            )
            for key, devs in devices.items()
        }

    def pod_resources(self, pod: Obj) -> pb2.PodResources:
        ns, name = _name(pod)
        out = pb2.PodResources(name=name, namespace=ns)
        for c in listed_containers(pod):
            cname = str(c.get("name", ""))
            entry = out.containers.add(name=cname)
            plan = self._plans.get((_uid(pod) or f"{ns}/{name}", cname))
            if plan is None:
                continue
            entry.devices.extend(
                _device_entry(res, dev, _zone(self.layout, numa_node))
                for res, dev, numa_node in plan.devices
            )
            entry.cpu_ids.extend(plan.cpu_ids)
            entry.memory.extend(_memory_entry(size, z) for z, size in plan.memory)
        return out

    def list_response(self) -> pb2.ListPodResourcesResponse:
        return pb2.ListPodResourcesResponse(
            pod_resources=[self.pod_resources(p) for p in self.pods]
        )

    def get_response(self, namespace: str, name: str) -> pb2.GetPodResourcesResponse | None:
        for pod in self.pods:
            if _name(pod) == (namespace, name):
                return pb2.GetPodResourcesResponse(pod_resources=self.pod_resources(pod))
        return None

    def allocatable_response(self) -> pb2.AllocatableResourcesResponse:
        return allocatable_response(self.record, self.layout)


def not_found_message(name: str, namespace: str) -> str:
    """The kubelet's text for ``Get`` of a pod it does not run."""
    return f"pod {name} in namespace {namespace} not found"


__all__ = [
    "CpuAssigner",
    "NodeAnswers",
    "NumaLayout",
    "PodResourcesError",
    "active_pods",
    "allocatable_response",
    "cpulist",
    "cpumask",
    "listed_containers",
    "not_found_message",
    "numa_layout",
    "sysfs_files",
]
