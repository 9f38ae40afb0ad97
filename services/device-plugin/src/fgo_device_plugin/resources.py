"""What a node advertises: extended resources and their devices, derived from the topology record.

One pure function shared by both modes (design principle 4): on a real node each resource becomes
a kubelet device plugin; on a KWOK node the same devices become ``status.capacity`` (all devices)
and ``status.allocatable`` (healthy devices), which is what the kubelet itself would publish.

MIG strategies follow NVIDIA's device plugin:

* ``none``   every GPU is ``nvidia.com/gpu``; MIG layouts are ignored;
* ``single`` MIG devices are advertised as ``nvidia.com/gpu``. NVIDIA refuses a node that mixes
  MIG-enabled and plain GPUs under this strategy; we advertise the plain GPUs too, so a half
  configured simulated node still schedules, and say so in the README;
* ``mixed``  plain GPUs are ``nvidia.com/gpu``, MIG devices ``nvidia.com/mig-<profile>``
  (``+`` becomes ``.``).

``otherDevices`` of the pool become resources of their own with deterministic IDs; an entry
naming a resource that GPUs or MIG devices already provide is ignored (the real layout wins).

Device-plugin sharing (the record's ``sharing``, NVIDIA's time-slicing / MPS): every device of a
replicated resource is advertised ``replicas`` times as ``<uuid>::<n>`` (NVIDIA's annotated
IDs), under the advertised name (``nvidia.com/gpu.shared`` when renamed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from fgo_common import dpsharing
from fgo_common.names import RESOURCE_NAMES
from fgo_common.topology import HEALTHY, GpuRecord, NodeSharing, NodeTopology

DeviceKind = Literal["gpu", "mig", "other"]
STRATEGIES = ("none", "single", "mixed")

_SOCKET_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class PluginDevice:
    """One device as the kubelet sees it."""

    id: str
    healthy: bool
    # NUMA node for the kubelet's Topology Manager; None for devices without locality.
    numa_node: int | None
    # Preference order inside a NUMA node: (GPU index, MIG placement start / device number).
    rank: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Resource:
    """An extended resource and its devices, in a stable order."""

    name: str
    kind: DeviceKind
    devices: tuple[PluginDevice, ...]
    # Replicated (shared) with NVIDIA's failRequestsGreaterThanOne: Allocate refuses a
    # container asking for more than one replica.
    fail_requests_greater_than_one: bool = False

    @property
    def capacity(self) -> int:
        return len(self.devices)

    @property
    def allocatable(self) -> int:
        return sum(1 for d in self.devices if d.healthy)

    @property
    def reports_allocations(self) -> bool:
        """GPU and MIG devices are GPUs the status-updater must attribute to pods."""
        return self.kind != "other"


def effective_strategy(topology: NodeTopology, override: str = "") -> str:
    strategy = override or topology.mig_strategy or "none"
    return strategy if strategy in STRATEGIES else "none"


def _gpu_device(gpu: GpuRecord) -> PluginDevice:
    return PluginDevice(gpu.id, gpu.healthy, gpu.numa_node, (gpu.index, 0))


def _mig_devices(gpu: GpuRecord) -> list[tuple[str, PluginDevice]]:
    """(profile, device) for every MIG device of ``gpu``, in placement order."""
    out = []
    for mig in sorted(gpu.mig_devices, key=lambda m: (m.placement_start, m.gi_id)):
        healthy = gpu.healthy and mig.health == HEALTHY
        out.append(
            (mig.profile, PluginDevice(mig.uuid, healthy, gpu.numa_node, (gpu.index, mig.gi_id)))
        )
    return out


def other_device_id(resource_name: str, number: int) -> str:
    """Deterministic ID of the ``number``-th device of an ``otherDevices`` resource."""
    return f"{_SOCKET_UNSAFE.sub('_', resource_name.replace('/', '_'))}-{number}"


def node_resources(topology: NodeTopology, strategy_override: str = "") -> dict[str, Resource]:
    """Every resource the node advertises (only non-empty ones), keyed by name."""
    strategy = effective_strategy(topology, strategy_override)
    gpus = sorted(topology.gpus, key=lambda g: g.index)
    gpu_devices: list[PluginDevice] = []
    mig_by_resource: dict[str, list[PluginDevice]] = {}
    for gpu in gpus:
        uses_mig = strategy != "none" and gpu.mig_enabled and bool(gpu.mig_devices)
        if not uses_mig:
            gpu_devices.append(_gpu_device(gpu))
            continue
        for profile, device in _mig_devices(gpu):
            if strategy == "single":
                gpu_devices.append(device)
            else:
                mig_by_resource.setdefault(RESOURCE_NAMES.mig(profile), []).append(device)

    out: dict[str, Resource] = {}
    if gpu_devices:
        out[RESOURCE_NAMES.gpu] = Resource(RESOURCE_NAMES.gpu, "gpu", tuple(gpu_devices))
    for name in sorted(mig_by_resource):
        out[name] = Resource(name, "mig", tuple(mig_by_resource[name]))
    if topology.sharing is not None:
        out = _replicated(out, topology.sharing)
    for other in topology.other_devices:
        if other.name in out or other.count <= 0:
            continue
        devices = tuple(
            PluginDevice(other_device_id(other.name, i), True, None, (i, 0))
            for i in range(other.count)
        )
        out[other.name] = Resource(other.name, "other", devices)
    return out


def _replicated(resources: dict[str, Resource], sharing: NodeSharing) -> dict[str, Resource]:
    """``resources`` with each shared one replaced by its replicas, under its advertised name."""
    out: dict[str, Resource] = {}
    for name, resource in resources.items():
        entry = sharing.resource(name)
        if entry is None or entry.replicas < 2:
            out[name] = resource
            continue
        devices = tuple(
            PluginDevice(
                dpsharing.replica_id(d.id, n),
                d.healthy,
                d.numa_node,
                # replica number first: the preferred allocation then takes each replica from
                # the least shared GPU (NVIDIA's distributed policy for shared devices)
                (n, d.rank[0] * 4096 + d.rank[1]),
            )
            for d in resource.devices
            for n in range(entry.replicas)
        )
        advertised = entry.advertised or name
        out[advertised] = Resource(
            advertised, resource.kind, devices, sharing.fail_requests_greater_than_one
        )
    return out


def socket_name(resource_name: str) -> str:
    """Our socket file for a resource, e.g. ``fake-nvidia.com-mig-1g.10gb.sock``.

    The ``fake-`` prefix keeps us clear of the real NVIDIA plugin's ``nvidia-gpu.sock`` on a node
    running both, and lets a restart find and remove our own stale sockets. The whole domain is
    kept so that two resources can never share a socket.
    """
    return f"{SOCKET_PREFIX}{_SOCKET_UNSAFE.sub('-', resource_name.replace('/', '-'))}.sock"


SOCKET_PREFIX = "fake-"


def capacity_of(resources: dict[str, Resource]) -> dict[str, tuple[int, int]]:
    """``{name: (capacity, allocatable)}`` as the kubelet computes them from device lists."""
    return {name: (r.capacity, r.allocatable) for name, r in resources.items()}
