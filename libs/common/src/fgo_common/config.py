"""The cluster topology config: node pools and their GPUs, from any of the accepted shapes.

Three shapes are accepted per pool (a file may mix them) and normalised into one model:

(a) the seed README's ``nodePools.<pool>.gpus: [{type, memory, count}]`` (several types per pool);
(b) the reference's legacy ``gpuProduct`` / ``gpuCount`` / ``gpuMemory`` (+ ``otherDevices``);
(c) the reference's profile form ``gpu: {backend, profile, overrides}`` (+ ``resources``, ``numa``).

Every error names the offending field by its path (``nodePools.a.gpus[0].count``) and the allowed
values, because the topology is typed by hand into Helm values and a vague error costs an hour.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from fgo_common import dpsharing, migstate
from fgo_common.identity import pci_bus_id
from fgo_common.profiles import BUILTIN_CATALOG, DEFAULT_PROFILE_KEY, GpuProfile, ProfileCatalog
from fgo_common.profiles.mig_layout import MigLayoutError
from fgo_common.topology import OtherDevice
from fgo_common.units import (
    MAX_CPU_MILLIS,
    MAX_MEMORY_BYTES,
    MemoryParseError,
    QuantityError,
    parse_memory_mib,
    quantity_bytes,
    quantity_millis,
)

DEFAULT_NODE_POOL_LABEL_KEY = "run.ai/simulated-gpu-node-pool"
MIG_STRATEGIES = ("none", "single", "mixed")
BACKENDS = ("fake",)
# The reference's nvml-mock backend: accepted, run as fake, with a warning (see _profile_pool).
MOCK_BACKEND = "mock"
MAX_GPUS_PER_NODE = 64
MAX_OTHER_DEVICE_COUNT = 1024

_TOP_KEYS = (
    "nodePools",
    "nodePoolLabelKey",
    "migStrategy",
    "gpuOperator",
    "migConfigs",
    "devicePluginConfig",
)
_SEED_POOL_KEYS = (
    "gpus",
    "otherDevices",
    "resources",
    "numa",
    "mig",
    "nvlinkDomain",
    "driverVersion",
    "cudaVersion",
)
_LEGACY_POOL_KEYS = (
    "gpuProduct",
    "gpuCount",
    "gpuMemory",
    "otherDevices",
    "numa",
    "mig",
    "nvlinkDomain",
    "driverVersion",
    "cudaVersion",
)
_PROFILE_POOL_KEYS = ("gpu", "resources", "numa", "otherDevices", "mig", "nvlinkDomain")
_GPU_KEYS = ("type", "memory", "count", "profile")
_PROFILE_GPU_KEYS = ("backend", "profile", "overrides")
_OVERRIDE_KEYS = (
    "device_defaults",
    "system",
    "device_count",
    "devices",
    "version",
    "nvlink",
    "infiniband",
    "pcie_topology",
)
# The nvml-mock profile schema the profile form's overrides follow (../shared/spec, 1.4): keys
# we know but do not use are accepted with a warning naming them; anything else is a typo.
_DEVICE_DEFAULT_KEYS = (
    "name",
    "memory",
    "brand",
    "serial",
    "board_part_number",
    "vbios_version",
    "architecture",
    "compute_capability",
    "num_gpu_cores",
    "inforom",
    "bar1_memory",
    "pci",
    "pcie",
    "power",
    "thermal",
    "fan",
    "clocks",
    "clocks_throttle_reasons",
    "supported_clocks",
    "performance_state",
    "utilization",
    "encoder_stats",
    "fbc_stats",
    "ecc",
    "retired_pages",
    "remapped_rows",
    "display",
    "persistence_mode",
    "compute_mode",
    "mig",
    "gpu_operation_mode",
    "driver_model",
    "accounting",
    "virtualization",
    "gsp_firmware",
    "processes",
    "features",
    "fabric",
    "grace_superchip",
)
_DEVICE_DEFAULTS_USED = ("name", "memory")
_MEMORY_KEYS = ("total_bytes", "reserved_bytes", "free_bytes", "used_bytes", "memory_bus_width")
_SYSTEM_KEYS = (
    "driver_version",
    "nvml_version",
    "cuda_version",
    "cuda_version_major",
    "cuda_version_minor",
)
_DEVICE_KEYS = ("index", "uuid", "serial", "pci", "minor_number", "grace_cpu_pair")
_PCIE_TOPOLOGY_KEYS = ("root_complexes",)
_ROOT_COMPLEX_KEYS = ("id", "numa_node", "devices")
PROFILE_SCHEMA_VERSION = "1.0"
MAX_MINOR_NUMBER = 255
_BUS_ID = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<device>[0-1][0-9a-fA-F])"
    r"\.(?P<function>[0-7])$"
)
_NUMA_KEYS = (
    "zones",
    "gpusPerZone",
    "topologyManagerPolicy",
    "topologyManagerScope",
    "cpuPerZone",
    "memPerZone",
    "distances",
)


class ConfigError(ValueError):
    """An invalid topology config; ``path`` names the field."""

    # Messages go into Events (1 KiB note limit) and logs; a 1 MiB value must not be echoed.
    MAX_MESSAGE = 600

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        text = f"{path}: {message}" if path else message
        if len(text) > self.MAX_MESSAGE:
            text = f"{text[: self.MAX_MESSAGE]}... ({len(text)} characters in all)"
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class GpuGroup:
    """``count`` identical GPUs of one product in a pool."""

    profile: GpuProfile
    count: int

    @property
    def product(self) -> str:
        return self.profile.name

    @property
    def memory_mib(self) -> int:
        return self.profile.memory_mib


# Kubelet Topology Manager policies and scopes (``--topology-manager-policy`` / ``-scope``).
TOPOLOGY_MANAGER_POLICIES = ("none", "best-effort", "restricted", "single-numa-node")
TOPOLOGY_MANAGER_SCOPES = ("container", "pod")
MAX_NUMA_ZONES = 16


@dataclass(frozen=True, slots=True)
class NumaConfig:
    """A pool's ``numa`` block: the NUMA layout every node of the pool reports (GPU NUMA ids,
    NodeResourceTopology zones). ``cpu_per_zone_millis`` / ``mem_per_zone_bytes`` None: an even
    share of the node's allocatable."""

    zones: int
    gpus_per_zone: tuple[int, ...] = ()
    topology_manager_policy: str = "single-numa-node"
    topology_manager_scope: str = "container"
    cpu_per_zone_millis: int | None = None
    mem_per_zone_bytes: int | None = None
    distance_self: int = 10
    distance_remote: int = 21


MAX_CLIQUE_SIZE = 72  # nodes per NVLink domain (GB200 NVL72: 18 trays of 4 GPUs)
_NVLINK_DOMAIN_KEYS = ("cliqueSize", "clusterUUID")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class NvlinkDomainConfig:
    """A pool's ``nvlinkDomain`` block: its nodes form NVLink cliques of ``clique_size`` nodes
    (multi-node NVLink, GB200/GB300 NVL72), labelled ``nvidia.com/gpu.clique`` =
    ``<cluster_uuid>.<clique id>`` as GPU feature discovery labels them."""

    clique_size: int
    cluster_uuid: str


@dataclass(frozen=True, slots=True)
class DeviceOverride:
    """One GPU's identity as the profile form sets it (``devices[]``, ``pcie_topology``); None
    keeps the simulator's default for that index. Bus ids are in NVML form."""

    bus_id: str | None = None
    minor: int | None = None
    numa_node: int | None = None


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    groups: tuple[GpuGroup, ...]
    other_devices: tuple[OtherDevice, ...] = ()
    driver_version: str = ""
    cuda_version: str = ""
    numa: NumaConfig | None = None
    mig_config: str = ""  # name of a MIG layout applied to the pool's GPUs ("" = MIG disabled)
    # Dynamic MIG: GPUs start without MIG; DRA claims for MIG devices create instances, and the
    # DRA publishers offer every placement through shared counters (``mig: {dynamic: true}``).
    mig_dynamic: bool = False
    # Per-GPU identity by index (may be shorter than the GPU count); profile form only.
    devices: tuple[DeviceOverride, ...] = ()
    nvlink_domain: NvlinkDomainConfig | None = None

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.groups)

    def gpu_profiles(self) -> list[GpuProfile]:
        """The profile of every GPU of a node in this pool, in index order."""
        return [g.profile for g in self.groups for _ in range(g.count)]

    @property
    def effective_driver_version(self) -> str:
        return self.driver_version or (self.groups[0].profile.driver_version if self.groups else "")

    @property
    def effective_cuda_version(self) -> str:
        return self.cuda_version or (self.groups[0].profile.cuda_version if self.groups else "")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    node_pool_label_key: str = DEFAULT_NODE_POOL_LABEL_KEY
    mig_strategy: str = "none"
    pools: Mapping[str, PoolConfig] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # Custom MIG configs (mig-parted ``mig-configs`` format, top-level key ``migConfigs``) that
    # pool ``mig.config`` and the ``nvidia.com/mig.config`` node label may name.
    mig_configs: migstate.CustomConfigs = field(default_factory=dict)
    # Device-plugin time-slicing / MPS configs (top-level ``devicePluginConfig``), selected per
    # node by the nvidia.com/device-plugin.config label (fgo_common.dpsharing).
    device_plugin: dpsharing.DevicePluginConfigs = field(
        default_factory=dpsharing.DevicePluginConfigs
    )


def _expect_mapping(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _check_keys(raw: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}." if path else ""
            raise ConfigError(
                f"{where}{key}", f"unknown key; allowed keys here: {', '.join(allowed)}"
            )


def _positive_int(value: object, path: str, *, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"must be an integer between 1 and {maximum}, got {value!r}")
    if not 1 <= value <= maximum:
        raise ConfigError(path, f"must be between 1 and {maximum}, got {value}")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _memory(value: object, path: str) -> int:
    try:
        return parse_memory_mib(value)
    except MemoryParseError as exc:
        raise ConfigError(path, str(exc)) from None


def _with_memory(profile: GpuProfile, memory_mib: int | None) -> GpuProfile:
    if memory_mib is None or memory_mib == profile.memory_mib:
        return profile
    return dataclasses.replace(
        profile,
        memory_mib=memory_mib,
        memory_reserved_mib=min(profile.memory_reserved_mib, memory_mib // 8),
    )


def _custom_product(name: str, memory_mib: int, catalog: ProfileCatalog) -> GpuProfile:
    """A product we have no data for: generic physics, the user's name and memory."""
    base = catalog.get(DEFAULT_PROFILE_KEY)
    return dataclasses.replace(
        base,
        key=f"custom:{name}",
        name=name,
        aliases=(),
        memory_mib=memory_mib,
        memory_reserved_mib=0,
        sources={"all": "custom product: generic values, name and memory from the topology config"},
    )


def _other_devices(raw: object, path: str) -> list[OtherDevice]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(path, "must be a list of {name, count}")
    out = []
    for i, item in enumerate(raw):
        item_path = f"{path}[{i}]"
        entry = _expect_mapping(item, item_path)
        _check_keys(entry, ("name", "count"), item_path)
        out.append(
            OtherDevice(
                _string(entry.get("name"), f"{item_path}.name"),
                _positive_int(
                    entry.get("count"), f"{item_path}.count", maximum=MAX_OTHER_DEVICE_COUNT
                ),
            )
        )
    return out


def _resources(raw: object, path: str) -> list[OtherDevice]:
    """The profile form's ``resources: [{<name>: <count>}]``; nvidia.com/gpu entries ignored."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(
            path, "must be a list of single-key mappings such as {nvidia.com/mig-1g.10gb: 7}"
        )
    out = []
    for i, item in enumerate(raw):
        entry = _expect_mapping(item, f"{path}[{i}]")
        if len(entry) != 1:
            raise ConfigError(f"{path}[{i}]", "each entry must have exactly one key")
        ((name, count),) = entry.items()
        if name == "nvidia.com/gpu":
            continue
        out.append(
            OtherDevice(
                _string(name, f"{path}[{i}]"),
                _positive_int(count, f"{path}[{i}].{name}", maximum=MAX_OTHER_DEVICE_COUNT),
            )
        )
    return out


def _numa(raw: object, path: str, gpu_count: int) -> NumaConfig | None:
    if raw is None:
        return None
    entry = _expect_mapping(raw, path)
    _check_keys(entry, _NUMA_KEYS, path)
    zones = entry.get("zones", 0)
    if zones in (0, None):
        return None
    zones = _positive_int(zones, f"{path}.zones", maximum=MAX_NUMA_ZONES)
    if zones > gpu_count:
        raise ConfigError(
            f"{path}.zones",
            f"{zones} NUMA zones for {gpu_count} GPU(s); at most one zone per GPU",
        )
    per_zone = entry.get("gpusPerZone")
    if per_zone is not None:
        if (
            not isinstance(per_zone, list)
            or len(per_zone) != zones
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in per_zone)
        ):
            raise ConfigError(
                f"{path}.gpusPerZone", f"must list {zones} non-negative integers, got {per_zone!r}"
            )
        if sum(per_zone) != gpu_count:
            raise ConfigError(
                f"{path}.gpusPerZone",
                f"must sum to the pool's GPU count {gpu_count}, got {sum(per_zone)}",
            )
    policy = _choice(
        entry.get("topologyManagerPolicy"),
        f"{path}.topologyManagerPolicy",
        TOPOLOGY_MANAGER_POLICIES,
        "single-numa-node",
    )
    scope = _choice(
        entry.get("topologyManagerScope"),
        f"{path}.topologyManagerScope",
        TOPOLOGY_MANAGER_SCOPES,
        "container",
    )
    cpu = entry.get("cpuPerZone")
    mem = entry.get("memPerZone")
    distances = entry.get("distances")
    d_self, d_remote = 10, 21
    if distances is not None:
        d = _expect_mapping(distances, f"{path}.distances")
        _check_keys(d, ("self", "remote"), f"{path}.distances")
        d_self = _positive_int(d.get("self", 10), f"{path}.distances.self", maximum=255)
        d_remote = _positive_int(d.get("remote", 21), f"{path}.distances.remote", maximum=255)
    return NumaConfig(
        zones,
        tuple(per_zone) if per_zone is not None else (),
        topology_manager_policy=policy,
        topology_manager_scope=scope,
        cpu_per_zone_millis=None if cpu is None else _cpu_quantity(cpu, f"{path}.cpuPerZone"),
        mem_per_zone_bytes=None if mem is None else _byte_quantity(mem, f"{path}.memPerZone"),
        distance_self=d_self,
        distance_remote=d_remote,
    )


def _choice(value: object, path: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(path, f"must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _cpu_quantity(value: object, path: str) -> int:
    try:
        millis = quantity_millis(value)
    except QuantityError as exc:
        raise ConfigError(path, f"{exc} (a CPU quantity such as 16 or 15500m)") from None
    if millis <= 0 or millis > MAX_CPU_MILLIS:
        raise ConfigError(path, f"must be more than 0 and at most {MAX_CPU_MILLIS // 1000} CPUs")
    return millis


def _byte_quantity(value: object, path: str) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A bare number is bytes, as in a Kubernetes quantity (the reference reads it so).
        value = str(value)
    try:
        n = quantity_bytes(value)
    except QuantityError as exc:
        raise ConfigError(path, f"{exc} (a memory quantity such as 64Gi)") from None
    if n <= 0 or n > MAX_MEMORY_BYTES:
        raise ConfigError(path, "must be more than 0 and at most 1Pi")
    return n


def _mig(raw: object, path: str) -> str:
    if raw is None:
        return ""
    entry = _expect_mapping(raw, path)
    _check_keys(entry, ("config", "dynamic"), path)
    if _mig_dynamic(raw, path):
        if "config" in entry:
            raise ConfigError(
                f"{path}.config",
                "not allowed with dynamic: true (a dynamic pool's GPUs get MIG instances from "
                "DRA claims, not from a static layout)",
            )
        return ""
    return _string(entry.get("config"), f"{path}.config")


def _mig_dynamic(raw: object, path: str) -> bool:
    """``mig.dynamic`` (default false); ``_mig`` has checked the mapping's keys."""
    if not isinstance(raw, dict) or "dynamic" not in raw:
        return False
    value = raw["dynamic"]
    if not isinstance(value, bool):
        raise ConfigError(f"{path}.dynamic", f"must be true or false, got {value!r}")
    return value


def _seed_pool(
    name: str, raw: dict[str, Any], path: str, catalog: ProfileCatalog, warnings: list[str]
) -> PoolConfig:
    _check_keys(raw, _SEED_POOL_KEYS, path)
    gpus = raw.get("gpus")
    if not isinstance(gpus, list) or not gpus:
        raise ConfigError(f"{path}.gpus", "must be a non-empty list of {type, memory, count}")
    groups = []
    for i, item in enumerate(gpus):
        gpath = f"{path}.gpus[{i}]"
        entry = _expect_mapping(item, gpath)
        _check_keys(entry, _GPU_KEYS, gpath)
        count = _positive_int(entry.get("count", 1), f"{gpath}.count", maximum=MAX_GPUS_PER_NODE)
        memory = _memory(entry["memory"], f"{gpath}.memory") if "memory" in entry else None
        wanted = entry.get("profile") or entry.get("type")
        if wanted is None:
            raise ConfigError(
                f"{gpath}.type", f"required; known types: {', '.join(catalog.keys())}"
            )
        wanted = _string(wanted, f"{gpath}.type")
        profile = catalog.find(wanted)
        if profile is None:
            if memory is None:
                raise ConfigError(
                    f"{gpath}.type",
                    f"unknown GPU type {wanted!r}; known: {', '.join(catalog.keys())} "
                    "(or give `memory` to simulate a product we have no data for)",
                )
            warnings.append(
                f"{gpath}.type: {wanted!r} is not a built-in product; "
                "using generic values with the given name and memory"
            )
            profile = _custom_product(wanted, memory, catalog)
        groups.append(GpuGroup(_with_memory(profile, memory), count))
    _check_total(groups, path)
    others = _other_devices(raw.get("otherDevices"), f"{path}.otherDevices")
    others += _resources(raw.get("resources"), f"{path}.resources")
    return PoolConfig(
        name=name,
        groups=tuple(groups),
        other_devices=tuple(sorted(others, key=lambda d: d.name)),
        driver_version=_optional_str(raw, "driverVersion", path),
        cuda_version=_optional_str(raw, "cudaVersion", path),
        numa=_numa(raw.get("numa"), f"{path}.numa", sum(g.count for g in groups)),
        mig_config=_mig(raw.get("mig"), f"{path}.mig"),
        mig_dynamic=_mig_dynamic(raw.get("mig"), f"{path}.mig"),
        nvlink_domain=_nvlink_domain(raw.get("nvlinkDomain"), f"{path}.nvlinkDomain", name),
    )


def _nvlink_domain(raw: object, path: str, pool_name: str) -> NvlinkDomainConfig | None:
    """``nvlinkDomain: {cliqueSize, clusterUUID}``; the cluster UUID defaults to one derived
    from the pool's name (stable across restarts and installs)."""
    if raw is None:
        return None
    block = _expect_mapping(raw, path)
    _check_keys(block, _NVLINK_DOMAIN_KEYS, path)
    if "cliqueSize" not in block:
        raise ConfigError(f"{path}.cliqueSize", "required: nodes per NVLink clique (e.g. 18)")
    size = _positive_int(block["cliqueSize"], f"{path}.cliqueSize", maximum=MAX_CLIQUE_SIZE)
    cluster = block.get("clusterUUID")
    if cluster is None:
        cluster = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-gpu-operator/nvlink/{pool_name}"))
    else:
        cluster = _string(cluster, f"{path}.clusterUUID").lower()
        if not _UUID.match(cluster):
            raise ConfigError(
                f"{path}.clusterUUID",
                f"{_short(cluster)} is not a UUID (8-4-4-4-12 hex digits, as NVML reports it)",
            )
    return NvlinkDomainConfig(size, cluster)


def _optional_str(raw: Mapping[str, Any], key: str, path: str) -> str:
    if key not in raw or raw[key] is None:
        return ""
    return _string(
        str(raw[key]) if isinstance(raw[key], int | float) else raw[key], f"{path}.{key}"
    )


def _check_total(groups: list[GpuGroup], path: str) -> None:
    total = sum(g.count for g in groups)
    if total > MAX_GPUS_PER_NODE:
        raise ConfigError(
            f"{path}.gpus",
            f"a node can have at most {MAX_GPUS_PER_NODE} GPUs, this pool has {total}",
        )


def _legacy_pool(
    name: str, raw: dict[str, Any], path: str, catalog: ProfileCatalog, warnings: list[str]
) -> PoolConfig:
    _check_keys(raw, _LEGACY_POOL_KEYS, path)
    product = _string(raw.get("gpuProduct", "Tesla-K80"), f"{path}.gpuProduct")
    count = _positive_int(raw.get("gpuCount"), f"{path}.gpuCount", maximum=MAX_GPUS_PER_NODE)
    memory = _memory(raw["gpuMemory"], f"{path}.gpuMemory") if "gpuMemory" in raw else None
    profile = catalog.find(product)
    if profile is None:
        # The reference accepted any product string here; keep accepting it.
        warnings.append(
            f"{path}.gpuProduct: {product!r} is not a built-in product; "
            "using generic values with the given name"
        )
        profile = _custom_product(
            product, memory or catalog.get(DEFAULT_PROFILE_KEY).memory_mib, catalog
        )
    elif profile.name != product:
        # The reference writes gpuProduct into the record and metrics as written ("Tesla-K80"
        # stays "Tesla-K80"); the matched profile only supplies the physics.
        profile = dataclasses.replace(profile, name=product)
    return PoolConfig(
        name=name,
        groups=(GpuGroup(_with_memory(profile, memory), count),),
        other_devices=tuple(
            sorted(
                _other_devices(raw.get("otherDevices"), f"{path}.otherDevices"),
                key=lambda d: d.name,
            )
        ),
        driver_version=_optional_str(raw, "driverVersion", path),
        cuda_version=_optional_str(raw, "cudaVersion", path),
        numa=_numa(raw.get("numa"), f"{path}.numa", count),
        mig_config=_mig(raw.get("mig"), f"{path}.mig"),
        mig_dynamic=_mig_dynamic(raw.get("mig"), f"{path}.mig"),
        nvlink_domain=_nvlink_domain(raw.get("nvlinkDomain"), f"{path}.nvlinkDomain", name),
    )


def _profile_pool(
    name: str, raw: dict[str, Any], path: str, catalog: ProfileCatalog, warnings: list[str]
) -> PoolConfig:
    _check_keys(raw, _PROFILE_POOL_KEYS, path)
    gpu = _expect_mapping(raw.get("gpu"), f"{path}.gpu")
    _check_keys(gpu, _PROFILE_GPU_KEYS, f"{path}.gpu")
    backend = gpu.get("backend", "fake")
    if backend == MOCK_BACKEND:
        # Per pool, never the whole config: the other pools keep working, and this one gets the
        # simulated GPUs of its profile instead of NVIDIA's nvml-mock, which we do not deploy.
        warnings.append(
            f"{path}.gpu.backend: mock (NVIDIA's nvml-mock per pool) is not deployed by this "
            f"operator; pool {name!r} runs with the fake backend instead (simulated GPUs of its "
            "profile, seen through our device plugin, DRA plugin, exporter and nvidia-smi)"
        )
    elif backend not in BACKENDS:
        raise ConfigError(
            f"{path}.gpu.backend",
            f"unsupported backend {backend!r}; allowed: {', '.join((*BACKENDS, MOCK_BACKEND))}",
        )
    opath = f"{path}.gpu.overrides"
    overrides = _expect_mapping(gpu.get("overrides") or {}, opath)
    _check_keys(overrides, _OVERRIDE_KEYS, opath)
    defaults = _expect_mapping(overrides.get("device_defaults") or {}, f"{opath}.device_defaults")
    _check_keys(defaults, _DEVICE_DEFAULT_KEYS, f"{opath}.device_defaults")
    system = _expect_mapping(overrides.get("system") or {}, f"{opath}.system")
    _check_keys(system, _SYSTEM_KEYS, f"{opath}.system")
    _unsimulated_overrides(overrides, opath, warnings)

    profile_name = gpu.get("profile")
    product_override = defaults.get("name")
    if profile_name is not None:
        profile = catalog.find(_string(profile_name, f"{path}.gpu.profile"))
        if profile is None:
            raise ConfigError(
                f"{path}.gpu.profile",
                f"unknown profile {profile_name!r}; known: {', '.join(catalog.keys())}",
            )
    elif product_override is not None:
        profile = catalog.find(_string(product_override, f"{opath}.device_defaults.name"))
        if profile is None:
            profile = _custom_product(product_override, 0, catalog)
    else:
        raise ConfigError(f"{path}.gpu", "needs `profile` or `overrides.device_defaults.name`")
    if product_override is not None and product_override != profile.name:
        profile = dataclasses.replace(
            profile, name=_string(product_override, f"{opath}.device_defaults.name")
        )

    memory = _device_defaults_memory(defaults, f"{opath}.device_defaults", profile, warnings)
    if profile.memory_mib == 0 and memory is None:
        raise ConfigError(
            f"{opath}.device_defaults.memory.total_bytes",
            "required for a product without a built-in profile",
        )

    devices_raw = overrides.get("devices")
    if devices_raw is not None and not isinstance(devices_raw, list):
        raise ConfigError(f"{opath}.devices", "must be a list of {index, pci: {bus_id}, ...}")
    if overrides.get("device_count"):
        count = _positive_int(
            overrides["device_count"], f"{opath}.device_count", maximum=MAX_GPUS_PER_NODE
        )
    elif devices_raw:
        count = _positive_int(len(devices_raw), f"{opath}.devices", maximum=MAX_GPUS_PER_NODE)
    else:
        count = 8  # the reference's profiles describe 8-GPU systems (4 for T4)
        if profile.key in ("t4",):
            count = 4
    numa = _numa(raw.get("numa"), f"{path}.numa", count)
    devices = _device_overrides(devices_raw or [], f"{opath}.devices", count, warnings)
    devices = _pcie_topology(
        overrides.get("pcie_topology"), f"{opath}.pcie_topology", devices, numa, warnings
    )
    if all(device == DeviceOverride() for device in devices):
        devices = ()  # nothing set per GPU: the defaults, as in the other forms
    driver, cuda = _system_versions(system, f"{opath}.system", warnings)
    return PoolConfig(
        name=name,
        groups=(GpuGroup(_with_memory(profile, memory), count),),
        other_devices=tuple(
            sorted(
                _resources(raw.get("resources"), f"{path}.resources")
                + _other_devices(raw.get("otherDevices"), f"{path}.otherDevices"),
                key=lambda d: d.name,
            )
        ),
        driver_version=driver,
        cuda_version=cuda,
        numa=numa,
        mig_config=_mig(raw.get("mig"), f"{path}.mig"),
        mig_dynamic=_mig_dynamic(raw.get("mig"), f"{path}.mig"),
        devices=devices,
        nvlink_domain=_nvlink_domain(raw.get("nvlinkDomain"), f"{path}.nvlinkDomain", name),
    )


# The profile form's overrides ----------------------------------------------------------------


def _unsimulated_overrides(overrides: Mapping[str, Any], path: str, warnings: list[str]) -> None:
    """Warn about the overrides that describe what this simulator has no model for."""
    for key, what in (
        ("nvlink", "NVLink links and their counters"),
        ("infiniband", "InfiniBand adapters"),
    ):
        if overrides.get(key) is not None:
            warnings.append(
                f"{path}.{key}: ignored: {what} are not simulated (the GPUs' profile supplies "
                "what the exporter and nvidia-smi report)"
            )
    version = overrides.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, str | float)):
        raise ConfigError(
            f"{path}.version", f'must be a version string such as "1.0", got {version!r}'
        )
    if version is not None and str(version) != PROFILE_SCHEMA_VERSION:
        warnings.append(
            f"{path}.version: {_short(version)} is not a profile schema version this operator "
            "knows; "
            f"the overrides are read as version {PROFILE_SCHEMA_VERSION}"
        )


def _short(value: object) -> str:
    """``value`` for a warning: warnings become Events and log lines, never a 1 MiB echo."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:80]}..."


def _device_defaults_memory(
    defaults: Mapping[str, Any], path: str, profile: GpuProfile, warnings: list[str]
) -> int | None:
    """``memory.total_bytes`` in MiB (None: the profile's); warns about the keys not used."""
    ignored = [key for key in defaults if key not in _DEVICE_DEFAULTS_USED]
    memory = None
    mem_block = defaults.get("memory")
    if mem_block is not None:
        mem_block = _expect_mapping(mem_block, f"{path}.memory")
        _check_keys(mem_block, _MEMORY_KEYS, f"{path}.memory")
        ignored += [f"memory.{key}" for key in mem_block if key != "total_bytes"]
        if "total_bytes" in mem_block:
            total = mem_block["total_bytes"]
            if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
                raise ConfigError(
                    f"{path}.memory.total_bytes",
                    f"must be a positive integer number of bytes, got {total!r}",
                )
            memory = total // (1024 * 1024)
    if ignored:
        warnings.append(
            f"{path}: ignored: {', '.join(ignored)} (the built-in profile of {profile.name} "
            "supplies them, and the telemetry model the moving values; used here: name, "
            "memory.total_bytes)"
        )
    return memory


def _system_versions(system: Mapping[str, Any], path: str, warnings: list[str]) -> tuple[str, str]:
    """(driver, CUDA) versions; ``cuda_version_major/minor`` stand in for a missing
    ``cuda_version``."""

    def version(key: str) -> str:
        value = system.get(key)
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}.{key}", f"must be a version string, got {value!r}")
        return str(value).strip()

    driver, cuda = version("driver_version"), version("cuda_version")
    major, minor = version("cuda_version_major"), version("cuda_version_minor")
    if major or minor:
        if not (major.isdigit() and minor.isdigit()):
            raise ConfigError(
                f"{path}.cuda_version_major",
                f"cuda_version_major and cuda_version_minor must both be integers, got "
                f"{major or None!r} and {minor or None!r}",
            )
        split = f"{int(major)}.{int(minor)}"
        if not cuda:
            cuda = split
        elif cuda != split:
            warnings.append(
                f"{path}.cuda_version_major: {split} disagrees with cuda_version "
                f"{_short(cuda)}; the cuda_version is reported"
            )
    if system.get("nvml_version") is not None:
        warnings.append(
            f"{path}.nvml_version: ignored: nvidia-smi reports the NVML version that goes with "
            "the driver version"
        )
    return driver, cuda


def _nvml_bus_id(value: object, path: str) -> str:
    """A PCI bus id in any common spelling (``0000:1a:00.0``) in NVML's form
    (``00000000:1A:00.0``)."""
    match = _BUS_ID.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            path,
            f"must be a PCI bus id such as 0000:1a:00.0 (domain:bus:device.function), "
            f"got {value!r}",
        )
    domain = int(match["domain"] or "0", 16)
    return (
        f"{domain:08X}:{int(match['bus'], 16):02X}:{int(match['device'], 16):02X}."
        f"{match['function']}"
    )


def _device_overrides(
    raw: list[Any], path: str, count: int, warnings: list[str]
) -> tuple[DeviceOverride, ...]:
    """``devices[]``: bus id and minor number per GPU index. UUIDs and serials are not taken:
    a GPU's UUID (and the serial derived from it) comes from (node, index), so every node of
    the pool has its own, where the profile's list would repeat on every node."""
    if len(raw) > count:
        raise ConfigError(path, f"lists {len(raw)} devices for a pool of {count} GPUs per node")
    by_index: dict[int, DeviceOverride] = {}
    ignored: set[str] = set()
    for position, item in enumerate(raw):
        ipath = f"{path}[{position}]"
        entry = _expect_mapping(item, ipath)
        _check_keys(entry, _DEVICE_KEYS, ipath)
        index = entry.get("index", position)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ConfigError(
                f"{ipath}.index", f"must be an integer from 0 to {count - 1}, got {index!r}"
            )
        if index in by_index:
            raise ConfigError(f"{ipath}.index", f"GPU {index} is listed twice")
        bus_id = None
        if entry.get("pci") is not None:
            pci = _expect_mapping(entry["pci"], f"{ipath}.pci")
            _check_keys(pci, ("bus_id",), f"{ipath}.pci")
            if "bus_id" in pci:
                bus_id = _nvml_bus_id(pci["bus_id"], f"{ipath}.pci.bus_id")
        minor = entry.get("minor_number")
        if minor is not None and (
            isinstance(minor, bool)
            or not isinstance(minor, int)
            or not 0 <= minor <= MAX_MINOR_NUMBER
        ):
            raise ConfigError(
                f"{ipath}.minor_number",
                f"must be an integer from 0 to {MAX_MINOR_NUMBER}, got {minor!r}",
            )
        ignored.update(key for key in ("uuid", "serial", "grace_cpu_pair") if key in entry)
        by_index[index] = DeviceOverride(bus_id=bus_id, minor=minor)
    if ignored:
        warnings.append(
            f"{path}: ignored: {', '.join(sorted(ignored))} (a GPU's UUID and serial come from "
            "its node and index, so no two nodes of the pool share them; used here: pci.bus_id, "
            "minor_number)"
        )
    devices = tuple(by_index.get(i, DeviceOverride()) for i in range(count))
    _check_unique([d.bus_id or pci_bus_id(i) for i, d in enumerate(devices)], path, "pci.bus_id")
    _check_unique(
        [i if d.minor is None else d.minor for i, d in enumerate(devices)], path, "minor_number"
    )
    return devices


def _check_unique(values: list[Any], path: str, what: str) -> None:
    seen: dict[Any, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            raise ConfigError(
                path, f"GPUs {seen[value]} and {index} would share {what} {value} on every node"
            )
        seen[value] = index


def _pcie_topology(
    raw: object,
    path: str,
    devices: tuple[DeviceOverride, ...],
    numa: NumaConfig | None,
    warnings: list[str],
) -> tuple[DeviceOverride, ...]:
    """``pcie_topology.root_complexes[]``: each GPU below a root complex (by bus id) gets its
    NUMA node. A pool's own ``numa`` block wins over it (it also sets the NRT zones)."""
    if raw is None:
        return devices
    entry = _expect_mapping(raw, path)
    _check_keys(entry, _PCIE_TOPOLOGY_KEYS, path)
    complexes = entry.get("root_complexes") or []
    if not isinstance(complexes, list):
        raise ConfigError(f"{path}.root_complexes", "must be a list of {id, numa_node, devices}")
    numa_of: dict[str, int] = {}
    for i, item in enumerate(complexes):
        cpath = f"{path}.root_complexes[{i}]"
        rc = _expect_mapping(item, cpath)
        _check_keys(rc, _ROOT_COMPLEX_KEYS, cpath)
        node = rc.get("numa_node", 0)
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < MAX_NUMA_ZONES:
            raise ConfigError(
                f"{cpath}.numa_node",
                f"must be an integer from 0 to {MAX_NUMA_ZONES - 1}, got {node!r}",
            )
        members = rc.get("devices") or []
        if not isinstance(members, list):
            raise ConfigError(f"{cpath}.devices", "must be a list of PCI bus ids")
        for j, member in enumerate(members):
            bus = _nvml_bus_id(member, f"{cpath}.devices[{j}]")
            if bus in numa_of:
                raise ConfigError(f"{cpath}.devices[{j}]", f"{member} is below two root complexes")
            numa_of[bus] = node
    if numa is not None:
        warnings.append(
            f"{path}: NUMA nodes ignored: the pool's `numa` block sets the GPUs' NUMA nodes"
        )
        return devices
    placed = [
        dataclasses.replace(device, numa_node=numa_of.get(device.bus_id or pci_bus_id(index)))
        for index, device in enumerate(devices)
    ]
    if numa_of and all(d.numa_node is None for d in placed):
        warnings.append(
            f"{path}: no GPU of the pool has a bus id listed under a root complex; NUMA nodes "
            "stay the default (list the bus ids the GPUs have: devices[].pci.bus_id or the "
            "default 00000000:18:00.0, ...)"
        )
    return tuple(placed)


def parse_cluster_config(raw: object, catalog: ProfileCatalog = BUILTIN_CATALOG) -> ClusterConfig:
    """Validate and normalise a parsed topology document (``topology.yml`` contents)."""
    if raw is None:
        raise ConfigError("", "the topology config is empty")
    top = _expect_mapping(raw, "(top level)")
    if "topology" in top and "nodePools" not in top and len(top) == 1:
        # Pasted from Helm values with the `topology:` wrapper: accept it.
        top = _expect_mapping(top["topology"], "topology")
    _check_keys(top, _TOP_KEYS, "")
    label_key = top.get("nodePoolLabelKey", DEFAULT_NODE_POOL_LABEL_KEY)
    label_key = _string(label_key, "nodePoolLabelKey")
    strategy = top.get("migStrategy", "none")
    if strategy not in MIG_STRATEGIES:
        raise ConfigError(
            "migStrategy", f"unknown strategy {strategy!r}; allowed: {', '.join(MIG_STRATEGIES)}"
        )
    pools_raw = _expect_mapping(top.get("nodePools"), "nodePools")
    if not pools_raw:
        raise ConfigError("nodePools", "must define at least one pool")
    warnings: list[str] = []
    pools: dict[str, PoolConfig] = {}
    for name, pool_raw in pools_raw.items():
        path = f"nodePools.{name}"
        if not isinstance(name, str) or not name:
            raise ConfigError(path, "pool names must be non-empty strings")
        pool = _expect_mapping(pool_raw, path)
        if "gpu" in pool:
            pools[name] = _profile_pool(name, pool, path, catalog, warnings)
        elif "gpuProduct" in pool or "gpuCount" in pool or "gpuMemory" in pool:
            pools[name] = _legacy_pool(name, pool, path, catalog, warnings)
        elif "gpus" in pool:
            pools[name] = _seed_pool(name, pool, path, catalog, warnings)
        else:
            raise ConfigError(
                path,
                "a pool needs GPUs: `gpus: [{type, memory, count}]`, "
                "`gpuProduct/gpuCount/gpuMemory`, or `gpu: {profile}`",
            )
    mig_configs = _check_mig_configs(top.get("migConfigs"), pools)
    try:
        device_plugin = dpsharing.parse_configs(top.get("devicePluginConfig"))
    except dpsharing.DevicePluginConfigError as exc:
        raise ConfigError(exc.path, exc.message) from None
    warnings.extend(
        f"devicePluginConfig.configs.{name}: {error}"
        for name, error in sorted(device_plugin.errors.items())
    )
    return ClusterConfig(label_key, strategy, pools, tuple(warnings), mig_configs, device_plugin)


def _check_mig_configs(raw: object, pools: Mapping[str, PoolConfig]) -> migstate.CustomConfigs:
    """Parse ``migConfigs`` and check every pool's ``mig.config`` can be laid out on its GPUs."""
    try:
        custom = migstate.parse_mig_parted(raw, "migConfigs") if raw is not None else {}
    except MigLayoutError as exc:
        raise ConfigError("", str(exc)) from None
    for name, pool in pools.items():
        if pool.mig_dynamic and not any(p.mig_capable for p in pool.gpu_profiles()):
            products = ", ".join(sorted({p.name for p in pool.gpu_profiles()}))
            raise ConfigError(
                f"nodePools.{name}.mig.dynamic",
                f"needs a MIG-capable GPU in the pool; {products} is not MIG-capable",
            )
        if not pool.mig_config:
            continue
        try:
            migstate.layouts_for(pool.mig_config, pool.gpu_profiles(), custom)
        except MigLayoutError as exc:
            raise ConfigError(f"nodePools.{name}.mig.config", str(exc)) from None
    return custom


def load_cluster_config(text: str, catalog: ProfileCatalog = BUILTIN_CATALOG) -> ClusterConfig:
    """Parse ``topology.yml`` text."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError("", "not a usable topology: the YAML is nested too deeply") from None
    try:
        return parse_cluster_config(raw, catalog)
    except RecursionError:
        raise ConfigError("", "not a usable topology: the document is nested too deeply") from None
