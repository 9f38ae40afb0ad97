"""The per-node topology record: the single source of truth about one node's GPUs.

Written only by the status-updater (as ConfigMap ``topology-<node>``, key ``topology.yml``) and
read by every other service. The YAML keeps the reference implementation's keys (``gpuProduct``,
``gpuMemory``, ``gpus[].id``, ``status.allocatedBy``, ``podGpuUsageStatus`` ...) so tools written
for it keep working; what we add (per-GPU index, product, bus id, NUMA node, health, every holder
of a shared GPU, MIG layout, faults) lives in extra keys it ignores.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

TOPOLOGY_DATA_KEY = "topology.yml"
NODE_TOPOLOGY_LABEL = "node-topology"
NODE_NAME_LABEL = "node-name"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

HOLDER_DEVICE_PLUGIN = "device-plugin"
HOLDER_DRA = "dra"
HOLDER_RESERVATION = "reservation"


def node_topology_configmap_name(prefix: str, node_name: str) -> str:
    """``<prefix>-<node>``: the reference's naming (prefix = cluster topology CM name)."""
    return f"{prefix}-{node_name}"


class TopologyFormatError(ValueError):
    """A per-node topology document that cannot be read."""


@dataclass(slots=True)
class UtilizationRange:
    """Percent range a pod drives a GPU to; ``min == max`` pins it."""

    min: int = 0
    max: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "max": self.max}


@dataclass(slots=True)
class PodUsage:
    """What one pod does to one GPU: utilisation range and framebuffer use."""

    utilization: UtilizationRange = field(default_factory=UtilizationRange)
    fb_used_mib: int = 0
    use_knative: bool = False
    namespace: str = ""
    pod: str = ""
    since: float = 0.0  # unix time the pod started using the GPU (drives energy accounting)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "utilization": self.utilization.to_dict(),
            "fbUsed": self.fb_used_mib,
            "useKnativeUtilization": self.use_knative,
        }
        if self.pod:
            out["namespace"] = self.namespace
            out["pod"] = self.pod
        if self.since:
            out["since"] = round(self.since, 3)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PodUsage:
        util = raw.get("utilization") or {}
        return cls(
            utilization=UtilizationRange(int(util.get("min", 0)), int(util.get("max", 0))),
            fb_used_mib=int(raw.get("fbUsed", 0)),
            use_knative=bool(raw.get("useKnativeUtilization", False)),
            namespace=str(raw.get("namespace", "")),
            pod=str(raw.get("pod", "")),
            since=float(raw.get("since", 0.0)),
        )


@dataclass(slots=True, frozen=True)
class Holder:
    """A pod (container) holding a GPU, and through which path it got it."""

    namespace: str
    pod: str
    container: str = ""
    pod_uid: str = ""
    kind: str = HOLDER_DEVICE_PLUGIN
    claim: str = ""  # "<namespace>/<name>" of the ResourceClaim for DRA holders
    resource: str = ""  # extended resource name for device-plugin holders ("nvidia.com/gpu")
    # How the holder shares the GPU with others, when a config says so: a DRA claim's opaque
    # sharing strategy (fgo_common.sharing: "TimeSlicing", "MPS", "SpacePartitioning"), or the
    # node's device-plugin sharing for a replica holder ("TimeSlicing", "MPS"; one entry per
    # replica held, fgo_common.dpsharing).
    sharing: str = ""

    def to_dict(self) -> dict[str, str]:
        out = {"namespace": self.namespace, "pod": self.pod, "container": self.container}
        for key, value in (
            ("podUid", self.pod_uid),
            ("kind", self.kind),
            ("claim", self.claim),
            ("resource", self.resource),
            ("sharing", self.sharing),
        ):
            if value:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Holder:
        return cls(
            namespace=str(raw.get("namespace", "")),
            pod=str(raw.get("pod", "")),
            container=str(raw.get("container", "")),
            pod_uid=str(raw.get("podUid", "")),
            kind=str(raw.get("kind", HOLDER_DEVICE_PLUGIN)),
            claim=str(raw.get("claim", "")),
            resource=str(raw.get("resource", "")),
            sharing=str(raw.get("sharing", "")),
        )


@dataclass(slots=True)
class MigDevice:
    """One MIG device (a GPU instance with its compute instance) on a MIG-enabled GPU."""

    uuid: str
    profile: str  # "1g.10gb"
    gi_id: int
    ci_id: int
    gi_profile_id: int
    ci_profile_id: int
    placement_start: int
    placement_size: int
    memory_mib: int
    sm_count: int
    holders: list[Holder] = field(default_factory=list)
    usage: dict[str, PodUsage] = field(default_factory=dict)
    health: str = HEALTHY

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "profile": self.profile,
            "giId": self.gi_id,
            "ciId": self.ci_id,
            "giProfileId": self.gi_profile_id,
            "ciProfileId": self.ci_profile_id,
            "placement": {"start": self.placement_start, "size": self.placement_size},
            "memory": self.memory_mib,
            "smCount": self.sm_count,
            "health": self.health,
        }
        if self.holders:
            out["holders"] = [h.to_dict() for h in self.holders]
        if self.usage:
            out["podGpuUsageStatus"] = {uid: u.to_dict() for uid, u in sorted(self.usage.items())}
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MigDevice:
        placement = raw.get("placement") or {}
        return cls(
            uuid=str(raw["uuid"]),
            profile=str(raw["profile"]),
            gi_id=int(raw["giId"]),
            ci_id=int(raw.get("ciId", 0)),
            gi_profile_id=int(raw.get("giProfileId", 0)),
            ci_profile_id=int(raw.get("ciProfileId", 0)),
            placement_start=int(placement.get("start", 0)),
            placement_size=int(placement.get("size", 0)),
            memory_mib=int(raw.get("memory", 0)),
            sm_count=int(raw.get("smCount", 0)),
            holders=[Holder.from_dict(h) for h in raw.get("holders") or []],
            usage={
                str(k): PodUsage.from_dict(v)
                for k, v in (raw.get("podGpuUsageStatus") or {}).items()
            },
            health=str(raw.get("health", HEALTHY)),
        )


@dataclass(slots=True)
class GpuStatus:
    """Who holds a GPU and what each holder does with it."""

    holders: list[Holder] = field(default_factory=list)
    usage: dict[str, PodUsage] = field(default_factory=dict)  # keyed by pod UID
    # Energy (J) accumulated by holders that have gone, so total energy never decreases.
    energy_banked_j: float = 0.0
    # SW power capping time (ns) of holders that have gone, so that counter never decreases.
    sw_cap_banked_ns: int = 0

    @property
    def allocated_by(self) -> Holder | None:
        return self.holders[0] if self.holders else None

    @property
    def is_free(self) -> bool:
        return not self.holders

    def to_dict(self) -> dict[str, Any]:
        first = self.allocated_by
        out: dict[str, Any] = {
            "allocatedBy": (
                {"namespace": first.namespace, "pod": first.pod, "container": first.container}
                if first
                else {"namespace": "", "pod": "", "container": ""}
            ),
            "podGpuUsageStatus": {uid: u.to_dict() for uid, u in sorted(self.usage.items())},
        }
        if self.holders:
            out["holders"] = [h.to_dict() for h in self.holders]
        if self.energy_banked_j:
            out["energyBankedJ"] = round(self.energy_banked_j, 3)
        if self.sw_cap_banked_ns:
            out["swPowerCapBankedNs"] = self.sw_cap_banked_ns
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> GpuStatus:
        raw = raw or {}
        holders = [Holder.from_dict(h) for h in raw.get("holders") or []]
        first = raw.get("allocatedBy") or {}
        if not holders and first.get("pod"):
            # Written by the reference implementation: only the first holder is known.
            holders = [Holder.from_dict(first)]
        return cls(
            holders=holders,
            usage={
                str(k): PodUsage.from_dict(v)
                for k, v in (raw.get("podGpuUsageStatus") or {}).items()
            },
            energy_banked_j=float(raw.get("energyBankedJ", 0.0)),
            sw_cap_banked_ns=int(raw.get("swPowerCapBankedNs", 0)),
        )


@dataclass(slots=True)
class GpuRecord:
    """One simulated GPU of a node."""

    id: str  # GPU UUID, "GPU-..."
    index: int
    product: str
    memory_mib: int
    profile: str  # profile key, see fgo_common.profiles
    bus_id: str
    numa_node: int = 0
    minor: int = -1
    health: str = HEALTHY
    mig_enabled: bool = False
    mig_devices: list[MigDevice] = field(default_factory=list)
    status: GpuStatus = field(default_factory=GpuStatus)
    faults: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.minor < 0:
            self.minor = self.index

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "index": self.index,
            "minor": self.minor,
            "product": self.product,
            "memory": self.memory_mib,
            "profile": self.profile,
            "busId": self.bus_id,
            "numaNode": self.numa_node,
            "health": self.health,
        }
        if self.mig_enabled:
            out["mig"] = {"enabled": True, "devices": [d.to_dict() for d in self.mig_devices]}
        if self.faults:
            out["faults"] = self.faults
        out["status"] = self.status.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], position: int, defaults: NodeTopology) -> GpuRecord:
        mig = raw.get("mig") or {}
        return cls(
            id=str(raw["id"]),
            index=int(raw.get("index", position)),
            minor=int(raw.get("minor", raw.get("index", position))),
            product=str(raw.get("product", defaults.gpu_product)),
            memory_mib=int(raw.get("memory", defaults.gpu_memory_mib)),
            profile=str(raw.get("profile", defaults.profile)),
            bus_id=str(raw.get("busId", "")),
            numa_node=int(raw.get("numaNode", 0)),
            health=str(raw.get("health", HEALTHY)),
            mig_enabled=bool(mig.get("enabled", False)),
            mig_devices=[MigDevice.from_dict(d) for d in mig.get("devices") or []],
            status=GpuStatus.from_dict(raw.get("status")),
            faults=list(raw.get("faults") or []),
        )


@dataclass(slots=True, frozen=True)
class OtherDevice:
    """An extra extended resource a pool advertises (``otherDevices`` / ``resources``)."""

    name: str
    count: int
    # How many of them pods on the node hold right now (written by the status-updater; the
    # reference has no such key and ignores it).
    allocated: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "count": self.count}
        if self.allocated:
            out["allocated"] = self.allocated
        return out


@dataclass(slots=True)
class MigConfigStatus:
    """Where the node is in NVIDIA mig-manager's protocol (``nvidia.com/mig.config`` label ->
    ``nvidia.com/mig.config.state``): ``applied`` is the config the GPUs have, ``requested`` the
    one asked for, ``state`` ``pending``/``success``/``failed`` and, since ``since`` (unix time)."""

    applied: str = ""
    requested: str = ""
    state: str = ""
    since: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "applied": self.applied,
            "requested": self.requested,
            "state": self.state,
            "since": round(self.since, 3),
        }
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MigConfigStatus:
        return cls(
            applied=str(raw.get("applied", "")),
            requested=str(raw.get("requested", "")),
            state=str(raw.get("state", "")),
            since=float(raw.get("since", 0.0)),
            reason=str(raw.get("reason", "")),
        )


@dataclass(slots=True, frozen=True)
class SharedResource:
    """One replicated resource of a device-plugin sharing config: every device of ``name`` is
    advertised ``replicas`` times, under ``advertised`` (``name`` or ``<name>.shared``)."""

    name: str
    replicas: int
    advertised: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "replicas": self.replicas, "advertised": self.advertised}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SharedResource:
        name = str(raw["name"])
        return cls(name, int(raw.get("replicas", 1)), str(raw.get("advertised") or name))


@dataclass(slots=True, frozen=True)
class NodeSharing:
    """The node's device-plugin sharing (NVIDIA k8s-device-plugin ``sharing.timeSlicing`` /
    ``sharing.mps``), as the status-updater selected and validated it (fgo_common.dpsharing).
    ``strategy`` is GFD's ``time-slicing`` | ``mps``; ``config`` the name of the selected config."""

    strategy: str
    resources: tuple[SharedResource, ...] = ()
    config: str = ""
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False

    def resource(self, name: str) -> SharedResource | None:
        for entry in self.resources:
            if entry.name == name:
                return entry
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "strategy": self.strategy,
            "renameByDefault": self.rename_by_default,
            "failRequestsGreaterThanOne": self.fail_requests_greater_than_one,
            "resources": [r.to_dict() for r in self.resources],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NodeSharing:
        return cls(
            strategy=str(raw["strategy"]),
            resources=tuple(SharedResource.from_dict(r) for r in raw.get("resources") or []),
            config=str(raw.get("config") or ""),
            rename_by_default=raw.get("renameByDefault") is True,
            fail_requests_greater_than_one=raw.get("failRequestsGreaterThanOne") is True,
        )


@dataclass(slots=True)
class NodeTopology:
    """All simulated GPU facts of one node."""

    node_name: str
    pool: str
    gpu_product: str  # product of GPU 0 (reference field; per-GPU product is authoritative)
    gpu_memory_mib: int
    profile: str
    driver_version: str
    cuda_version: str
    mig_strategy: str = "none"
    other_devices: list[OtherDevice] = field(default_factory=list)
    gpus: list[GpuRecord] = field(default_factory=list)
    kwok: bool = False
    # Bumped by the writer on every change of the GPU set (not of allocations): consumers that
    # publish capacity or slices compare it to skip no-op updates.
    generation: int = 1
    mig_config: MigConfigStatus | None = None
    # Dynamic MIG (pool ``mig.dynamic``): DRA claims create and destroy MIG instances, and the
    # DRA publishers offer every possible placement through shared counters.
    mig_dynamic: bool = False
    # The NVLink clique of the node's GPUs, "<cluster uuid>.<clique id>" (pool nvlinkDomain;
    # GFD's nvidia.com/gpu.clique); "" without multi-node NVLink.
    nvlink_clique: str = ""
    # Device-plugin time-slicing / MPS (config selected by the node label
    # nvidia.com/device-plugin.config); None: GPUs are not replicated.
    sharing: NodeSharing | None = None

    def gpu_by_id(self, gpu_id: str) -> GpuRecord | None:
        wanted = gpu_id.lower()
        for gpu in self.gpus:
            if gpu.id.lower() == wanted:
                return gpu
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "gpuMemory": self.gpu_memory_mib,
            "gpuProduct": self.gpu_product,
        }
        if self.driver_version:
            out["driverVersion"] = self.driver_version
        if self.cuda_version:
            out["cudaVersion"] = self.cuda_version
        out["migStrategy"] = self.mig_strategy
        if self.other_devices:
            out["otherDevices"] = [d.to_dict() for d in self.other_devices]
        out["nodeName"] = self.node_name
        out["pool"] = self.pool
        out["profile"] = self.profile
        out["kwok"] = self.kwok
        out["generation"] = self.generation
        if self.mig_config is not None:
            out["migConfig"] = self.mig_config.to_dict()
        if self.mig_dynamic:
            out["migDynamic"] = True
        if self.nvlink_clique:
            out["nvlinkClique"] = self.nvlink_clique
        if self.sharing is not None:
            out["sharing"] = self.sharing.to_dict()
        out["gpus"] = [g.to_dict() for g in self.gpus]
        return out

    def to_yaml(self) -> str:
        """The record's document: the ConfigMap's ``topology.yml`` (libyaml, see ``_codec``)."""
        codec = _codec()
        return str(
            codec.yaml.dump(
                self.to_dict(), Dumper=codec.dumper, sort_keys=False, default_flow_style=False
            )
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any], node_name: str = "") -> NodeTopology:
        if not isinstance(raw, dict):
            raise TopologyFormatError(f"topology must be a mapping, got {type(raw).__name__}")
        try:
            node = cls(
                node_name=str(raw.get("nodeName", node_name)),
                pool=str(raw.get("pool", "")),
                gpu_product=str(raw.get("gpuProduct", "")),
                gpu_memory_mib=int(raw.get("gpuMemory", 0)),
                profile=str(raw.get("profile", "")),
                driver_version=str(raw.get("driverVersion", "")),
                cuda_version=str(raw.get("cudaVersion", "")),
                mig_strategy=str(raw.get("migStrategy", "none")),
                other_devices=[
                    OtherDevice(str(d["name"]), int(d["count"]), int(d.get("allocated", 0)))
                    for d in raw.get("otherDevices") or []
                ],
                kwok=bool(raw.get("kwok", False)),
                generation=int(raw.get("generation", 1)),
                mig_config=(
                    MigConfigStatus.from_dict(raw["migConfig"])
                    if isinstance(raw.get("migConfig"), dict)
                    else None
                ),
                mig_dynamic=raw.get("migDynamic") is True,
                nvlink_clique=str(raw.get("nvlinkClique") or ""),
                sharing=(
                    NodeSharing.from_dict(raw["sharing"])
                    if isinstance(raw.get("sharing"), dict)
                    else None
                ),
            )
            node.gpus = [
                GpuRecord.from_dict(g, i, node) for i, g in enumerate(raw.get("gpus") or [])
            ]
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,  # a list where a mapping belongs, or the other way round
            OverflowError,  # int(float("inf"))
            RecursionError,  # absurdly nested documents
        ) as exc:
            raise TopologyFormatError(f"malformed node topology: {exc!r}"[:500]) from exc
        return node

    @classmethod
    def from_yaml(cls, text: str, node_name: str = "") -> NodeTopology:
        """Parse a ``topology.yml`` document; ``TopologyFormatError`` for anything malformed."""
        codec = _codec()
        try:
            raw = codec.yaml.load(text, Loader=codec.loader)
        except (codec.yaml.YAMLError, RecursionError) as exc:
            raise TopologyFormatError(f"node topology is not valid YAML: {exc!r}"[:500]) from exc
        return cls.from_dict(raw, node_name)


@dataclass(frozen=True, slots=True)
class _Codec:
    yaml: ModuleType
    loader: Any
    dumper: Any
    libyaml: bool


@functools.cache
def _codec() -> _Codec:
    """The one YAML codec of the record: PyYAML's safe loader and dumper on libyaml.

    Every reader parses every node's record on each change, so the pure-Python parser (about
    8x the CPU of libyaml per record; docs/benchmarks.md) would be most of a service's CPU at
    scale. The C emitter writes the same document as the Python one (a unit test compares them
    on real records). Without libyaml the pure-Python pair is used, and one warning says so.
    PyYAML is imported on first use: the fake nvidia-smi imports this module on every
    invocation and never needs YAML (its start-up time is a user-visible number).
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", None)
    dumper = getattr(yaml, "CSafeDumper", None)
    if loader is not None and dumper is not None:
        return _Codec(yaml, loader, dumper, libyaml=True)
    import structlog

    structlog.get_logger(__name__).warning(
        "topology.yaml_without_libyaml",
        detail="PyYAML was built without libyaml: node records are parsed and written by the "
        "pure-Python codec, several times slower per record",
    )
    return _Codec(yaml, yaml.SafeLoader, yaml.SafeDumper, libyaml=False)
