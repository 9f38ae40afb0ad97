"""What the NVIDIA DRA driver ``gpu.nvidia.com`` publishes as devices: names, attributes,
capacities, taints and the shared counters of dynamic MIG.

Two publishers use this module: the dra-plugin on nodes with a kubelet and the kwok-dra-plugin
for KWOK nodes. Both build a node's devices here, from the node's topology record plus the
built-in profile data, so a device looks the same whichever path published it (design principle
4) and a DeviceClass or CEL expression written for the real driver matches ours. How devices are
packed into ResourceSlices is ``fgo_common.draslices``; the DeviceClasses are
``fgo_common.draclasses``.

Conformance (../shared/spec/peers-and-standards.md §3.5, driver 0.4 / 95932046):

* full GPU ``gpu-<minor>``: string attributes ``type`` (``gpu``), ``uuid``, ``productName``,
  ``brand`` (NVML brand name such as ``Nvidia`` or ``Tesla``), ``architecture`` (``Hopper``),
  version attributes ``cudaComputeCapability`` / ``driverVersion`` / ``cudaDriverVersion``
  (semver: ``580.159.04`` becomes ``580.159.4``), the standard attributes
  ``resource.kubernetes.io/pciBusID`` / ``pcieRoot`` / ``numaNode``, capacity ``memory``;
* a GPU in MIG mode is not allocatable itself; its MIG devices
  ``gpu-<minor>-mig-<profile without dots>-<giProfileId>-<placementStart>`` are, with ``type``
  ``mig``, ``uuid``, ``parentUUID``, ``profile``, the parent's product attributes and
  capacities ``multiprocessors``, engine counts, ``memory`` and ``memorySlice<i>``.

Dynamic MIG (pool ``mig: {dynamic: true}``, record ``migDynamic``; KEP-4815 partitionable
devices, the driver's ``DynamicMIG`` gate): every MIG-capable GPU is published as the full GPU
*and* every MIG device it could create (each profile at each valid placement), all consuming the
GPU's shared counter set ``gpu-<minor>-counter-set``. Its counters are the driver's MIG
capacities turned into counter names (lower case: ``multiprocessors``, ``copyengines``,
``decoders``, ``encoders``, ``jpegengines``, ``ofaengines``, ``memory``) plus one
``memory-slice-<i>`` per memory slice. A MIG device consumes its profile's capacities and the
memory slices of its placement; the full GPU consumes the whole set. So the scheduler never
hands out overlapping placements, more engines or SMs than the GPU has, or the full GPU together
with any of its MIG devices.

Unhealthy GPUs (and MIG devices) are tainted the way the real driver taints them on NVML health
events: ``gpu.nvidia.com/xid=<code>`` when the record names a critical XID fault, else
``gpu.nvidia.com/gpu-lost``; ``NoExecute`` for a lost GPU or XID 79, else ``NoSchedule``
(``fgo_common.faults``). Existing allocations are left alone; new claims do not get the GPU
unless they tolerate the taint. ``unhealthy="omit"`` drops them from the slice instead (for
clusters without the DRADeviceTaints feature, where the API server would silently drop taints).

Device names (``DeviceOptions.naming``): ``nvidia`` (default) names a full GPU ``gpu-<minor>``
as the real driver does; ``reference`` names it ``gpu-<lower-case UUID without GPU->``, as
run-ai/fake-gpu-operator 0.2 does, for users whose selectors or tests depend on that. MIG devices
and counter sets keep NVIDIA's names in both modes (the reference has no MIG devices). Readers of
claims (:func:`full_gpu_key`) accept both forms, so allocations made before a switch are still
understood. Both modes also publish the reference's ``model`` attribute (the product name).

Simulated facts the record does not hold are pure functions of what it does hold, documented where
they are computed (``pcie_root``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from fgo_common import faults, migstate
from fgo_common.names import DRA_NAMES, DraNames
from fgo_common.profiles import BUILTIN_CATALOG, DEFAULT_PROFILE_KEY, ProfileCatalog
from fgo_common.profiles.mig_layout import MigInstance, memory_slice_count, possible_instances
from fgo_common.profiles.model import GpuProfile, MigProfile
from fgo_common.runtime.settings import env_field
from fgo_common.topology import HEALTHY, GpuRecord, MigDevice, NodeTopology

Obj = dict[str, Any]

RESOURCE_API_VERSION = "resource.k8s.io/v1"

# k8s.io/api v0.36 resource/v1 limits on a device (types.go).
MAX_ATTRIBUTES_AND_CAPACITIES_PER_DEVICE = 32
MAX_ATTRIBUTE_VALUE_LENGTH = 64
MAX_COUNTERS_PER_SET = 32
MAX_COUNTER_CONSUMPTIONS_PER_DEVICE = 2


TAINT_EFFECT_NO_SCHEDULE = "NoSchedule"

UnhealthyPolicy = Literal["taint", "omit", "publish"]
UNHEALTHY_POLICIES: tuple[str, ...] = ("taint", "omit", "publish")

DeviceNaming = Literal["nvidia", "reference"]
DEVICE_NAMINGS: tuple[str, ...] = ("nvidia", "reference")


def device_naming_setting() -> Any:
    """The ``DEVICE_NAMING`` setting, declared once for both publishers (they must agree)."""
    return env_field(
        "DEVICE_NAMING", "nvidia",
        "names of full-GPU devices: `nvidia` (`gpu-<minor>`, as NVIDIA's DRA driver) or "
        "`reference` (`gpu-<uuid>`, as run-ai/fake-gpu-operator 0.2); MIG devices keep NVIDIA's "
        "names; the dra-plugin and the kwok-dra-plugin must agree (chart: draPlugin.deviceNaming)",
        choices=DEVICE_NAMINGS,
    )  # fmt: skip


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NOT_DEVICE_NAME_CHARS = re.compile(r"[^a-z0-9-]")

# NVML brand names as nvidia-smi prints them -> go-nvlib's GetBrandAsString(), which the real
# driver publishes. Unlisted brands fall back to the name without spaces.
_DRA_BRANDS: dict[str, str] = {
    "nvidia": "Nvidia",
    "tesla": "Tesla",
    "quadro": "Quadro",
    "geforce": "GeForce",
    "titan": "Titan",
    "nvs": "NVS",
    "grid": "Grid",
    "nvidia rtx": "NvidiaRTX",
    "quadro rtx": "QuadroRTX",
    "nvidia cloud gaming": "NvidiaCloudGaming",
    "nvidia virtual applications": "NvidiaVApps",
    "nvidia virtual pc": "NvidiaVPC",
    "nvidia virtual compute server": "NvidiaVCS",
    "nvidia rtx virtual workstation": "NvidiaVWS",
    "unknown": "Unknown",
}

# Our profiles name architectures in lower case; go-nvlib's GetArchitectureAsString() spelling.
_DRA_ARCHITECTURES: dict[str, str] = {
    "kepler": "Kepler",
    "maxwell": "Maxwell",
    "pascal": "Pascal",
    "volta": "Volta",
    "turing": "Turing",
    "ampere": "Ampere",
    "ada": "Ada Lovelace",
    "adalovelace": "Ada Lovelace",
    "hopper": "Hopper",
    "blackwell": "Blackwell",
    "rubin": "Rubin",
}

_NVML_BUS_ID = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<device>[0-9a-fA-F]{2})\.(?P<function>[0-7])$"
)


class DeviceBuildError(ValueError):
    """A record whose devices cannot be published (the message names the GPU and the field)."""


# --------------------------------------------------------------------------------------------
# Value conversions
# --------------------------------------------------------------------------------------------


def semver(version: str) -> str:
    """The semantic-version form the real driver publishes (Masterminds semver's String()).

    >>> semver("580.159.04"), semver("13.0"), semver("9")
    ('580.159.4', '13.0.0', '9.0.0')
    """
    parts = version.strip().lstrip("vV").split(".")
    if not parts or len(parts) > 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a version: {version!r}")
    numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
    return ".".join(str(n) for n in numbers)


def dra_brand(brand: str) -> str:
    key = " ".join(brand.lower().split())
    return _DRA_BRANDS.get(key, brand.replace(" ", ""))


def dra_architecture(architecture: str) -> str:
    key = re.sub(r"[^a-z]", "", architecture.lower())
    return _DRA_ARCHITECTURES.get(key, architecture.strip().title() or "Unknown")


def pci_bus_id(nvml_bus_id: str) -> str | None:
    """NVML's ``00000000:18:00.0`` as the standard attribute wants it: ``0000:18:00.0``
    (four-digit domain, lower case). None when the record holds no usable bus id."""
    match = _NVML_BUS_ID.match(nvml_bus_id.strip())
    if not match:
        return None
    domain = int(match["domain"] or "0", 16)
    if domain > 0xFFFF:
        return None
    return f"{domain:04x}:{match['bus'].lower()}:{match['device'].lower()}.{match['function']}"


def pcie_root(bus_id: str) -> str:
    """The simulated PCIe root complex (``pci<domain>:<bus>``) of a device at ``bus_id``.

    Real servers hang one or two GPUs below each root complex, whose root bus number is below
    theirs. We model 32-bus windows: devices whose bus numbers share the upper three bits share
    a root (on our 8-GPU board GPUs 1+2 and 5+6 do, the others sit alone), so CEL constraints
    on ``pcieRoot`` have both outcomes to work with.
    """
    domain, bus, _ = bus_id.split(":", 2)
    return f"pci{domain}:{int(bus, 16) & 0xE0:02x}"


def binary_quantity(n_bytes: int) -> str:
    """``n_bytes`` as the canonical binary-SI quantity the API server stores (``81559Mi``)."""
    if n_bytes <= 0:
        return "0"
    for suffix, factor in (("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30),
                           ("Mi", 1 << 20), ("Ki", 1 << 10)):  # fmt: skip
        if n_bytes % factor == 0:
            return f"{n_bytes // factor}{suffix}"
    return str(n_bytes)


def _string(value: str) -> Obj:
    if len(value) > MAX_ATTRIBUTE_VALUE_LENGTH:
        value = value[:MAX_ATTRIBUTE_VALUE_LENGTH]
    return {"string": value}


def _version(value: str) -> Obj:
    return {"version": value}


def _int(value: int) -> Obj:
    return {"int": value}


def _capacity(value: int | str) -> Obj:
    return {"value": str(value)}


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


def resolve_profile(
    gpu: GpuRecord, node: NodeTopology, catalog: ProfileCatalog = BUILTIN_CATALOG
) -> GpuProfile:
    """The profile behind ``gpu``: by its profile key, else its product name. A product we have
    no data for borrows the default profile's numbers under its own name and memory size."""
    for name in (gpu.profile, gpu.product, node.profile, node.gpu_product):
        if name:
            found = catalog.find(name)
            if found is not None:
                return found
    base = catalog.get(DEFAULT_PROFILE_KEY)
    return dataclasses.replace(
        base,
        name=gpu.product or base.name,
        memory_mib=gpu.memory_mib or base.memory_mib,
        mig_profiles=(),
    )


@dataclass(frozen=True, slots=True)
class GpuFacts:
    """The product attributes a full GPU and its MIG devices share."""

    product_name: str
    brand: str
    architecture: str
    cuda_compute_capability: str
    driver_version: str
    cuda_driver_version: str
    pci_bus_id: str | None
    pcie_root: str | None


def gpu_facts(gpu: GpuRecord, node: NodeTopology, profile: GpuProfile) -> GpuFacts:
    driver = node.driver_version or profile.driver_version
    cuda = node.cuda_version or profile.cuda_version
    bus = pci_bus_id(gpu.bus_id)
    try:
        return GpuFacts(
            product_name=gpu.product or profile.name,
            brand=dra_brand(profile.brand),
            architecture=dra_architecture(profile.architecture),
            cuda_compute_capability=semver("{}.{}".format(*profile.compute_capability)),
            driver_version=semver(driver),
            cuda_driver_version=semver(cuda),
            pci_bus_id=bus,
            pcie_root=pcie_root(bus) if bus else None,
        )
    except ValueError as exc:
        raise DeviceBuildError(f"GPU {gpu.index} ({gpu.id}) of {node.node_name}: {exc}") from exc


def _common_attributes(facts: GpuFacts, names: DraNames) -> Obj:
    attrs: Obj = {
        names.attr_product_name: _string(facts.product_name),
        **({names.attr_model: _string(facts.product_name)} if names.attr_model else {}),
        names.attr_brand: _string(facts.brand),
        names.attr_architecture: _string(facts.architecture),
        names.attr_cuda_compute_capability: _version(facts.cuda_compute_capability),
        names.attr_driver_version: _version(facts.driver_version),
        names.attr_cuda_driver_version: _version(facts.cuda_driver_version),
    }
    if facts.pci_bus_id:
        attrs[names.attr_pci_bus_id] = _string(facts.pci_bus_id)
        if names.attr_legacy_pcie_bus_id:
            attrs[names.attr_legacy_pcie_bus_id] = _string(facts.pci_bus_id)
    if facts.pcie_root:
        attrs[names.attr_pcie_root] = _string(facts.pcie_root)
    return attrs


def unhealthy_taints(
    gpu: GpuRecord, names: DraNames = DRA_NAMES, mig: MigDevice | None = None
) -> list[Obj]:
    """The taints the real driver would have put on this GPU (or on one of its MIG devices):
    none when healthy; rules in ``fgo_common.faults.device_taints`` (NoExecute for a lost GPU
    or XID 79, else NoSchedule)."""
    healthy = gpu.healthy and (mig is None or mig.health == HEALTHY)
    return [
        dict(t)
        for t in faults.device_taints(
            gpu.faults,
            healthy,
            driver=names.driver,
            xid_key=names.taint_xid,
            lost_key=names.taint_gpu_lost,
            mig=mig.uuid if mig is not None else "",
        )
    ]


def reference_device_name(gpu_id: str) -> str:
    """run-ai/fake-gpu-operator's device name: the GPU id in lower case (``gpu-<uuid>``); an id
    without the ``GPU-`` prefix gets it, characters a device name may not hold become ``-``."""
    body = _NOT_DEVICE_NAME_CHARS.sub("-", gpu_id.lower().removeprefix("gpu-"))
    return f"gpu-{body}"


def full_gpu_device_name(
    gpu: GpuRecord, naming: DeviceNaming = "nvidia", names: DraNames = DRA_NAMES
) -> str:
    """The name a full GPU is published under: ``gpu-<minor>`` or, in ``reference`` naming,
    ``gpu-<uuid>``."""
    if naming == "reference":
        return reference_device_name(gpu.id)
    return names.gpu_device_name(gpu.minor)


def full_gpu_key(device: str) -> int | str | None:
    """What a claim's device name says about a full GPU, in either naming: the minor of
    ``gpu-<minor>``, the name itself for ``gpu-<uuid>``, None for anything else (MIG devices,
    other drivers' names)."""
    prefix, _, rest = device.partition("-")
    if prefix != "gpu":
        return None
    if rest.isdigit():
        return int(rest)
    if _UUID.match(rest):
        return device
    return None


def find_full_gpu(device: str, gpus: Iterable[GpuRecord]) -> tuple[bool, GpuRecord | None]:
    """(is ``device`` a full-GPU name in either naming, the GPU of ``gpus`` it names or None)."""
    key = full_gpu_key(device)
    if key is None:
        return False, None
    for gpu in gpus:
        if gpu.minor == key if isinstance(key, int) else reference_device_name(gpu.id) == key:
            return True, gpu
    return True, None


def gpu_device(
    gpu: GpuRecord,
    node: NodeTopology,
    profile: GpuProfile,
    names: DraNames = DRA_NAMES,
    naming: DeviceNaming = "nvidia",
) -> Obj:
    """The full-GPU device ``gpu-<minor>`` (``gpu-<uuid>`` in reference naming)."""
    facts = gpu_facts(gpu, node, profile)
    attributes: Obj = {
        names.attr_type: _string(names.type_gpu),
        names.attr_uuid: _string(gpu.id),
        **_common_attributes(facts, names),
        names.attr_numa_node: _int(gpu.numa_node),
    }
    if names.attr_index:
        attributes[names.attr_index] = _int(gpu.index)
    if names.attr_minor:
        attributes[names.attr_minor] = _int(gpu.minor)
    memory_mib = gpu.memory_mib or profile.memory_mib
    return {
        "name": full_gpu_device_name(gpu, naming, names),
        "attributes": attributes,
        "capacity": {names.cap_memory: _capacity(binary_quantity(memory_mib << 20))},
    }


def _mig_profile(profile: GpuProfile, name: str) -> MigProfile | None:
    try:
        return profile.mig_profile(name)
    except KeyError:
        return None


def mig_device(
    gpu: GpuRecord,
    mig: MigDevice,
    node: NodeTopology,
    profile: GpuProfile,
    names: DraNames = DRA_NAMES,
) -> Obj:
    """A MIG device of ``gpu``, named and described as the real driver's static MIG devices."""
    facts = gpu_facts(gpu, node, profile)
    table = _mig_profile(profile, mig.profile)
    attributes: Obj = {
        names.attr_type: _string(names.type_mig),
        names.attr_uuid: _string(mig.uuid),
        names.attr_parent_uuid: _string(gpu.id),
        names.attr_profile: _string(mig.profile),
        **_common_attributes(facts, names),
    }
    capacity: Obj = {
        names.cap_multiprocessors: _capacity(mig.sm_count or (table.sm_count if table else 0)),
    }
    if table is not None:
        capacity[names.cap_copy_engines] = _capacity(table.copy_engines)
        capacity[names.cap_decoders] = _capacity(table.decoders)
        capacity[names.cap_encoders] = _capacity(table.encoders)
        capacity[names.cap_jpeg_engines] = _capacity(table.jpeg)
        capacity[names.cap_ofa_engines] = _capacity(table.ofa)
    memory_mib = mig.memory_mib or (table.memory_mib if table else 0)
    capacity[names.cap_memory] = _capacity(binary_quantity(memory_mib << 20))
    size = mig.placement_size or (table.memory_slices if table else 1)
    for i in range(mig.placement_start, mig.placement_start + size):
        capacity[f"{names.cap_memory_slice_prefix}{i}"] = _capacity(1)
    return {
        "name": names.mig_device_name(
            gpu.minor, mig.profile, mig.gi_profile_id, mig.placement_start
        ),
        "attributes": attributes,
        "capacity": capacity,
    }


# --------------------------------------------------------------------------------------------
# Dynamic MIG: shared counters
# --------------------------------------------------------------------------------------------


def counter_name(capacity: str) -> str:
    """A capacity name as a counter name: counters must be lower-case RFC 1123 labels, so the
    driver lower-cases its camelCase capacity names (``copyEngines`` -> ``copyengines``)."""
    return re.sub(r"[^a-z0-9-]", "-", capacity.lower()).strip("-")


def _engine_capacities(table: MigProfile, names: DraNames) -> dict[str, int]:
    return {
        names.cap_multiprocessors: table.sm_count,
        names.cap_copy_engines: table.copy_engines,
        names.cap_decoders: table.decoders,
        names.cap_encoders: table.encoders,
        names.cap_jpeg_engines: table.jpeg,
        names.cap_ofa_engines: table.ofa,
    }


def _full_mig_profile(profile: GpuProfile) -> MigProfile:
    """The profile spanning the whole GPU (``7g.80gb`` on H100): its engine counts are the GPU's."""
    return max(
        profile.mig_profiles, key=lambda m: (m.memory_slices, m.compute_slices, m.memory_mib)
    )


def gpu_counters(
    gpu: GpuRecord, profile: GpuProfile, names: DraNames = DRA_NAMES
) -> dict[str, int]:
    """The counter set of a dynamic-MIG GPU: counter name -> total (memory in bytes)."""
    full = _full_mig_profile(profile)
    capacities = _engine_capacities(full, names)
    capacities[names.cap_multiprocessors] = max(profile.sm_count, full.sm_count)
    memory_mib = max(gpu.memory_mib or profile.memory_mib, full.memory_mib)
    capacities[names.cap_memory] = memory_mib << 20
    # Engines a product lacks (H100 has no NVENC) are left out rather than counted as zero.
    counters = {counter_name(k): v for k, v in capacities.items() if v > 0}
    for i in range(memory_slice_count(profile)):
        counters[f"{names.counter_memory_slice_prefix}{i}"] = 1
    return counters


def instance_counters(instance: MigInstance, names: DraNames = DRA_NAMES) -> dict[str, int]:
    """What a MIG device at ``instance``'s placement consumes from its GPU's counter set."""
    capacities = _engine_capacities(instance.profile, names)
    capacities[names.cap_memory] = instance.memory_mib << 20
    counters = {counter_name(k): v for k, v in capacities.items() if v > 0}
    for i in instance.memory_slices:
        counters[f"{names.counter_memory_slice_prefix}{i}"] = 1
    return counters


def _counter_values(counters: dict[str, int], memory: str) -> Obj:
    return {
        name: {"value": binary_quantity(value) if name == memory else str(value)}
        for name, value in sorted(counters.items())
    }


def _consumes(gpu: GpuRecord, counters: dict[str, int], names: DraNames) -> list[Obj]:
    return [
        {
            "counterSet": names.counter_set_name(gpu.minor),
            "counters": _counter_values(counters, counter_name(names.cap_memory)),
        }
    ]


def counter_set(gpu: GpuRecord, profile: GpuProfile, names: DraNames = DRA_NAMES) -> Obj:
    """The ``sharedCounters`` entry of one dynamic-MIG GPU."""
    return {
        "name": names.counter_set_name(gpu.minor),
        "counters": _counter_values(
            gpu_counters(gpu, profile, names), counter_name(names.cap_memory)
        ),
    }


def dynamic_gpu_devices(
    gpu: GpuRecord,
    node: NodeTopology,
    profile: GpuProfile,
    names: DraNames = DRA_NAMES,
    naming: DeviceNaming = "nvidia",
) -> list[PublishedDevice]:
    """The full GPU and every MIG device it could create, all consuming its counter set.

    The full GPU carries the GPU's MIG capacities too (as the real driver's partitionable full
    device does) and consumes every counter; a MIG device's UUID is the one the status-updater
    records when a claim creates it (GI id from the placement alone, see
    ``mig_layout.dynamic_gi_id``).
    """
    full = gpu_device(gpu, node, profile, names, naming)
    totals = gpu_counters(gpu, profile, names)
    for capacity in _engine_capacities(_full_mig_profile(profile), names):
        full["capacity"][capacity] = _capacity(totals.get(counter_name(capacity), 0))
    full["consumesCounters"] = _consumes(gpu, totals, names)
    out = [PublishedDevice(full["name"], gpu.id, gpu.index, full)]
    migs = []
    for instance in possible_instances(profile):
        record = migstate.mig_device_of(gpu, instance)
        device = mig_device(gpu, record, node, profile, names)
        device["consumesCounters"] = _consumes(gpu, instance_counters(instance, names), names)
        migs.append(PublishedDevice(device["name"], record.uuid, gpu.index, device))
    return out + sorted(migs, key=lambda d: d.name)


def is_dynamic(gpu: GpuRecord, node: NodeTopology, profile: GpuProfile) -> bool:
    """True when ``gpu`` is published the dynamic-MIG way."""
    return node.mig_dynamic and profile.mig_capable


@dataclass(frozen=True, slots=True)
class DeviceOptions:
    """How a node's record becomes devices."""

    names: DraNames = DRA_NAMES
    unhealthy: UnhealthyPolicy = "taint"
    catalog: ProfileCatalog = BUILTIN_CATALOG
    naming: DeviceNaming = "nvidia"


@dataclass(frozen=True, slots=True)
class PublishedDevice:
    """One published device and what the node plugin needs to prepare it."""

    name: str
    uuid: str  # GPU or MIG UUID: what the container's visible-devices list names
    gpu_index: int
    device: Obj  # the ResourceSlice device entry

    @property
    def tainted(self) -> bool:
        return bool(self.device.get("taints"))


def node_devices(
    topology: NodeTopology, options: DeviceOptions = DeviceOptions()
) -> list[PublishedDevice]:
    """Every device of ``topology`` in the order the real driver lists them (by minor, each
    GPU's MIG devices by canonical name). GPUs without an id are skipped (the reference does
    the same); a duplicate device name keeps its first GPU."""
    names = options.names
    out: dict[str, PublishedDevice] = {}
    for gpu in sorted(topology.gpus, key=lambda g: (g.minor, g.index)):
        if not gpu.id:
            continue
        if not gpu.healthy and options.unhealthy == "omit":
            continue
        taint = options.unhealthy == "taint"
        taints = unhealthy_taints(gpu, names) if taint else []
        profile = resolve_profile(gpu, topology, options.catalog)
        entries: list[PublishedDevice] = []
        if is_dynamic(gpu, topology, profile):
            # The record's current instances are not looked at: every possible device is
            # always published, and the counters keep allocations apart.
            entries = dynamic_gpu_devices(gpu, topology, profile, names, options.naming)
        elif gpu.mig_enabled:
            for mig in gpu.mig_devices:
                if mig.health != HEALTHY and options.unhealthy == "omit":
                    continue
                device = mig_device(gpu, mig, topology, profile, names)
                mig_taints = unhealthy_taints(gpu, names, mig) if taint else []
                if mig_taints:
                    device["taints"] = mig_taints
                entries.append(PublishedDevice(device["name"], mig.uuid, gpu.index, device))
            entries.sort(key=lambda e: e.name)
        else:
            device = gpu_device(gpu, topology, profile, names, options.naming)
            entries.append(PublishedDevice(device["name"], gpu.id, gpu.index, device))
        for entry in entries:
            if taints and "taints" not in entry.device:
                entry.device["taints"] = [dict(t) for t in taints]
            out.setdefault(entry.name, entry)
    return list(out.values())


def node_counter_sets(
    topology: NodeTopology, options: DeviceOptions = DeviceOptions()
) -> list[Obj]:
    """The shared counter sets of ``topology``'s dynamic-MIG GPUs (those :func:`node_devices`
    publishes), by minor; empty for a node without dynamic MIG."""
    if not topology.mig_dynamic:
        return []
    out: dict[str, Obj] = {}
    for gpu in sorted(topology.gpus, key=lambda g: (g.minor, g.index)):
        if not gpu.id or (not gpu.healthy and options.unhealthy == "omit"):
            continue
        profile = resolve_profile(gpu, topology, options.catalog)
        if is_dynamic(gpu, topology, profile):
            entry = counter_set(gpu, profile, options.names)
            out.setdefault(entry["name"], entry)
    return list(out.values())
