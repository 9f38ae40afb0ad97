"""dcgm-exporter's output, computed at scrape time from the topology records.

Why not prometheus_client: its text exposition sorts labels by name and renames counters to
``<name>_total`` in the HELP/TYPE lines, and it prints every value as a Python float. Tools built
for dcgm-exporter see ``gpu, UUID, pci_bus_id, device, modelName, ...`` in that order,
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` under its own name, and ``%d`` / ``%f`` values; so the
text is rendered here, from the names table of the configured dcgm-exporter version. Rendering is
a generator of per-family chunks so a 1000-node scrape streams instead of building one body.

Like the real exporter, a MIG-enabled GPU with MIG devices is reported per GPU instance
(``GPU_I_PROFILE``/``GPU_I_ID`` labels, the parent's ``UUID``); device-wide fields repeat the
parent's reading on each instance and the fields DCGM does not support per instance
(``DCGM_FI_DEV_GPU_UTIL`` and the other NVML utilisation counters) are absent there. Fields a
product does not support (profiling metrics before Volta, energy before Volta, row remapping
before Ampere, NVLink on boards without it) are absent as DCGM reports them blank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from fgo_common.faults import dcgm_health
from fgo_common.names import (
    CLOCK_EVENT_LABEL_VALUES,
    HEALTH_WATCH_SYSTEMS,
    DcgmExporterNames,
    DcgmField,
)
from fgo_common.profiles import BUILTIN_CATALOG, GpuProfile, ProfileCatalog
from fgo_common.telemetry import (
    CLOCK_EVENTS_WINDOW_SECONDS,
    DCGM_SAMPLE_INTERVAL_SECONDS,
    DEFAULT_BOOT_TIME,
    XID_COUNT_WINDOW_SECONDS,
    GpuSample,
    clock_event_counts,
    profile_for,
    sample_gpu,
    sample_mig_device,
    xid_counts,
)
from fgo_common.topology import GpuRecord, Holder, MigDevice, NodeTopology

Value = int | float


def _always(_: GpuProfile) -> bool:
    return True


def _volta_or_newer(profile: GpuProfile) -> bool:
    return profile.compute_capability >= (7, 0)


def _row_remapping(profile: GpuProfile) -> bool:
    return profile.compute_capability >= (8, 0) and profile.ecc_supported


def _nvlink(profile: GpuProfile) -> bool:
    return profile.nvlink_links > 0


def _ecc(profile: GpuProfile) -> bool:
    return profile.ecc_supported


@dataclass(frozen=True, slots=True)
class FieldSource:
    """Where a DCGM field's value comes from, and where DCGM reports it."""

    value: Callable[[GpuSample], Value]
    per_instance: bool = True  # reported for MIG GPU instances
    supported: Callable[[GpuProfile], bool] = _always


# DCGM field name -> how the simulator computes it. The names themselves come from the table.
FIELD_SOURCES: dict[str, FieldSource] = {
    "DCGM_FI_DEV_SM_CLOCK": FieldSource(lambda s: s.sm_clock_mhz),
    "DCGM_FI_DEV_MEM_CLOCK": FieldSource(lambda s: s.mem_clock_mhz),
    "DCGM_FI_DEV_MEMORY_TEMP": FieldSource(lambda s: s.mem_temp_c),
    "DCGM_FI_DEV_GPU_TEMP": FieldSource(lambda s: s.gpu_temp_c),
    "DCGM_FI_DEV_POWER_USAGE": FieldSource(lambda s: s.power_w),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": FieldSource(
        lambda s: s.energy_mj, supported=_volta_or_newer
    ),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": FieldSource(lambda s: s.pcie_replay_count),
    "DCGM_FI_DEV_GPU_UTIL": FieldSource(lambda s: s.gpu_util, per_instance=False),
    "DCGM_FI_DEV_MEM_COPY_UTIL": FieldSource(lambda s: s.mem_copy_util, per_instance=False),
    "DCGM_FI_DEV_ENC_UTIL": FieldSource(lambda s: s.encoder_util, per_instance=False),
    "DCGM_FI_DEV_DEC_UTIL": FieldSource(lambda s: s.decoder_util, per_instance=False),
    "DCGM_FI_DEV_XID_ERRORS": FieldSource(lambda s: s.xid_last),
    "DCGM_FI_DEV_FB_FREE": FieldSource(lambda s: s.fb_free_mib),
    "DCGM_FI_DEV_FB_USED": FieldSource(lambda s: s.fb_used_mib),
    "DCGM_FI_DEV_FB_RESERVED": FieldSource(lambda s: s.fb_reserved_mib),
    # No NVLink traffic is simulated (pods do not talk to each other): the counter stays 0.
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": FieldSource(lambda s: 0, supported=_nvlink),
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS": FieldSource(lambda s: 0),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": FieldSource(
        lambda s: s.remapped_rows_uncorrectable, supported=_row_remapping
    ),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": FieldSource(
        lambda s: s.remapped_rows_correctable, supported=_row_remapping
    ),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": FieldSource(
        lambda s: int(s.row_remap_failure), supported=_row_remapping
    ),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": FieldSource(
        lambda s: s.gr_engine_active, supported=_volta_or_newer
    ),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": FieldSource(
        lambda s: s.tensor_active, supported=_volta_or_newer
    ),
    "DCGM_FI_PROF_DRAM_ACTIVE": FieldSource(lambda s: s.dram_active, supported=_volta_or_newer),
    "DCGM_FI_PROF_PCIE_TX_BYTES": FieldSource(
        lambda s: s.pcie_tx_bytes_per_s, supported=_volta_or_newer
    ),
    "DCGM_FI_PROF_PCIE_RX_BYTES": FieldSource(
        lambda s: s.pcie_rx_bytes_per_s, supported=_volta_or_newer
    ),
    "DCGM_FI_PROF_SM_ACTIVE": FieldSource(lambda s: s.sm_active, supported=_volta_or_newer),
    "DCGM_FI_PROF_SM_OCCUPANCY": FieldSource(lambda s: s.sm_occupancy, supported=_volta_or_newer),
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE": FieldSource(
        lambda s: s.fp16_active, supported=_volta_or_newer
    ),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": FieldSource(lambda s: s.ecc_sbe_volatile, supported=_ecc),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": FieldSource(lambda s: s.ecc_dbe_volatile, supported=_ecc),
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": FieldSource(lambda s: s.ecc_sbe_aggregate, supported=_ecc),
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": FieldSource(lambda s: s.ecc_dbe_aggregate, supported=_ecc),
    "DCGM_FI_DEV_FB_TOTAL": FieldSource(lambda s: s.fb_total_mib),
    "DCGM_FI_DEV_FB_USED_PERCENT": FieldSource(lambda s: s.fb_used_percent),
    "DCGM_FI_DEV_PSTATE": FieldSource(lambda s: s.pstate),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": FieldSource(lambda s: s.power_limit_w),
    # Throttling: the same bits and slowdown times nvidia-smi prints (fgo_common.telemetry).
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": FieldSource(lambda s: s.clocks_event_reasons),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": FieldSource(lambda s: s.clocks_event_reasons),
    "DCGM_FI_DEV_POWER_VIOLATION": FieldSource(lambda s: s.power_violation_ns),
    "DCGM_FI_DEV_THERMAL_VIOLATION": FieldSource(lambda s: s.thermal_violation_ns),
    # Sync boost, board limit, low utilisation and reliability policies are not simulated.
    "DCGM_FI_DEV_SYNC_BOOST_VIOLATION": FieldSource(lambda s: 0),
    "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION": FieldSource(lambda s: 0),
    "DCGM_FI_DEV_LOW_UTIL_VIOLATION": FieldSource(lambda s: 0),
    "DCGM_FI_DEV_RELIABILITY_VIOLATION": FieldSource(lambda s: 0),
    # Exporter-computed families: rendered by DcgmCollector (their own labels), not by value.
    "DCGM_EXP_CLOCK_EVENTS_COUNT": FieldSource(lambda s: 0),
    "DCGM_EXP_XID_ERRORS_COUNT": FieldSource(lambda s: 0),
    "DCGM_EXP_GPU_HEALTH_STATUS": FieldSource(lambda s: 0),
}

DRIVER_VERSION_FIELD = "DCGM_FI_DRIVER_VERSION"


def reference_hostname(node_name: str) -> str:
    """The reference's per-node value: ``nvidia-dcgm-exporter-<first 3 bytes of sha1(node)>``."""
    digest = hashlib.sha1(node_name.encode(), usedforsecurity=False).hexdigest()
    return f"nvidia-dcgm-exporter-{digest[:6]}"


def escape_label_value(value: str) -> str:
    """Text-format escaping of a label value (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


# dcgm-exporter prints INT64 fields with %d and DOUBLE fields with %f.
def _format_float(value: Value) -> str:
    return f"{value:f}"


def _format_int(value: Value) -> str:
    return str(int(value))


@dataclass(frozen=True, slots=True)
class ExporterOptions:
    """How to shape the output: which version's names, and the switches between versions."""

    names: DcgmExporterNames
    hostname_label: str = ""  # "" = the version's; ignored when ``no_hostname``
    no_hostname: bool = False
    idle_pod_labels: bool = False  # container="",namespace="",pod="" on unheld GPUs
    replace_blanks_in_model_name: bool = False
    pod_uid_label: bool = False
    extra_metrics: tuple[str, ...] = ()
    seed: int = 0
    boot_time: float = DEFAULT_BOOT_TIME
    catalog: ProfileCatalog = BUILTIN_CATALOG
    # DCGM_EXP_CLOCK_EVENTS_COUNT: window and DCGM's sampling interval (dcgm-exporter's
    # DCGM_EXPORTER_CLOCK_EVENTS_COUNT_WINDOW_SIZE and DCGM_EXPORTER_INTERVAL, in ms).
    clock_events_window_ms: int = int(CLOCK_EVENTS_WINDOW_SECONDS * 1000)
    collect_interval_ms: int = int(DCGM_SAMPLE_INTERVAL_SECONDS * 1000)
    # DCGM_EXP_XID_ERRORS_COUNT's window (DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE, ms).
    xid_count_window_ms: int = int(XID_COUNT_WINDOW_SECONDS * 1000)

    @property
    def host_label(self) -> str:
        return "" if self.no_hostname else (self.hostname_label or self.names.hostname)

    def fields(self) -> list[DcgmField]:
        """Exported families in CSV order (label-type fields excluded), then the extras."""
        out = [f for f in self.names.counters if f.kind != "label"]
        out += [self.names.field(name) for name in self.extra_metrics]
        return [f for f in out if f.name in FIELD_SOURCES]

    @property
    def driver_version_label(self) -> bool:
        return any(f.name == DRIVER_VERSION_FIELD for f in self.names.counters)


@dataclass(frozen=True, slots=True)
class ServedNode:
    """One node's record and the host label value its series carry."""

    topology: NodeTopology
    hostname: str


@dataclass(slots=True)
class Entity:
    """One DCGM GPU entity (a GPU, or a MIG GPU instance) at scrape time."""

    head: str  # '{gpu="0",UUID=...,DCGM_FI_DRIVER_VERSION="..."' (no closing brace)
    labels: list[str]  # head + attributes + '}', one per pod holding it (or one without pod)
    holders: list[Holder]
    sample: GpuSample
    supported: frozenset[str]  # DCGM fields this entity reports
    gpu: GpuRecord | None = None
    profile: GpuProfile | None = None
    gpu_head: str = ""  # the GPU's head without MIG labels (GPU-level families)
    first_of_gpu: bool = True  # the first entity of its GPU (one GPU-level series set)
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class _Shape:
    """What does not change between scrapes of an unchanged record: identity and label text."""

    gpu: GpuRecord
    device: MigDevice | None
    profile: GpuProfile
    head: str
    labels: list[str]
    holders: list[Holder]
    supported: frozenset[str]
    gpu_head: str
    first_of_gpu: bool


def _holders(holders: Iterable[Holder]) -> list[Holder]:
    """Distinct (namespace, pod, container) holders, in record order."""
    seen: set[tuple[str, str, str]] = set()
    out: list[Holder] = []
    for holder in holders:
        key = (holder.namespace, holder.pod, holder.container)
        if holder.pod and key not in seen:
            seen.add(key)
            out.append(holder)
    return out


class DcgmCollector:
    """Computes every series from the current records at the moment it is asked to."""

    def __init__(self, options: ExporterOptions) -> None:
        self.options = options
        self._fields = options.fields()
        # id(profile) -> (profile, {field: supported}) per entity kind; the profile is kept so
        # its id cannot be reused while cached.
        self._support: dict[tuple[int, bool], tuple[GpuProfile, frozenset[str]]] = {}
        self._shape_cache: dict[str, tuple[NodeTopology, str, list[_Shape]]] = {}

    def _supported(self, profile: GpuProfile, is_instance: bool) -> frozenset[str]:
        key = (id(profile), is_instance)
        hit = self._support.get(key)
        if hit is None or hit[0] is not profile:
            names = frozenset(
                f.name
                for f in self._fields
                if FIELD_SOURCES[f.name].supported(profile)
                and (FIELD_SOURCES[f.name].per_instance or not is_instance)
            )
            hit = self._support[key] = (profile, names)
        return hit[1]

    # -- entities ---------------------------------------------------------------------------

    def _attributes(self, holder: Holder | None) -> list[tuple[str, str]]:
        n = self.options.names
        if holder is None:
            if not self.options.idle_pod_labels:
                return []
            pairs = [(n.container, ""), (n.namespace, ""), (n.pod, "")]
            if self.options.pod_uid_label:
                pairs.append((n.pod_uid, ""))
            return pairs
        pairs = [
            (n.container, holder.container),
            (n.namespace, holder.namespace),
            (n.pod, holder.pod),
        ]
        if self.options.pod_uid_label:
            pairs.append((n.pod_uid, holder.pod_uid))
        return pairs

    @staticmethod
    def _render_pairs(pairs: Sequence[tuple[str, str]]) -> str:
        return "".join(f',{k}="{escape_label_value(v)}"' for k, v in sorted(pairs))

    def _head(
        self,
        gpu: GpuRecord,
        hostname: str,
        driver: str,
        mig: tuple[str, int] | None,
    ) -> str:
        n, o = self.options.names, self.options
        model = gpu.product
        if o.replace_blanks_in_model_name:
            model = "-".join(model.split())
        parts = [
            f'{n.gpu}="{gpu.index}"',
            f'{n.uuid}="{escape_label_value(gpu.id)}"',
            f'{n.pci_bus_id}="{escape_label_value(gpu.bus_id)}"',
            f'{n.device}="{n.device_prefix}{gpu.index}"',
            f'{n.model_name}="{escape_label_value(model)}"',
        ]
        if mig is not None:
            parts.append(f'{n.mig_profile}="{escape_label_value(mig[0])}"')
            parts.append(f'{n.mig_instance}="{mig[1]}"')
        if o.host_label:
            parts.append(f'{o.host_label}="{escape_label_value(hostname)}"')
        if o.driver_version_label:
            parts.append(f'{DRIVER_VERSION_FIELD}="{escape_label_value(driver)}"')
        return "{" + ",".join(parts)

    def _shape(
        self,
        gpu: GpuRecord,
        device: MigDevice | None,
        profile: GpuProfile,
        hostname: str,
        driver: str,
    ) -> _Shape:
        mig = None if device is None else (device.profile.removeprefix("MIG "), device.gi_id)
        head = self._head(gpu, hostname, driver, mig)
        holders = _holders(gpu.status.holders if device is None else device.holders)
        labels = [head + self._render_pairs(self._attributes(h)) + "}" for h in holders] or [
            head + self._render_pairs(self._attributes(None)) + "}"
        ]
        supported = self._supported(profile, device is not None)
        gpu_head = head if mig is None else self._head(gpu, hostname, driver, None)
        first = device is None or device is min(gpu.mig_devices, key=lambda d: d.gi_id)
        return _Shape(gpu, device, profile, head, labels, holders, supported, gpu_head, first)

    def _shapes(self, served: ServedNode) -> list[_Shape]:
        """The label text of every entity of a node: rebuilt only when its record changes
        (records are replaced, never mutated, so the object identity is the cache key)."""
        node = served.topology
        hit = self._shape_cache.get(node.node_name)
        if hit is not None and hit[0] is node and hit[1] == served.hostname:
            return hit[2]
        shapes: list[_Shape] = []
        for gpu in sorted(node.gpus, key=lambda g: g.index):
            profile = profile_for(gpu, self.options.catalog)
            driver = node.driver_version or profile.driver_version
            if gpu.mig_enabled and gpu.mig_devices:
                for device in sorted(gpu.mig_devices, key=lambda d: d.gi_id):
                    shapes.append(self._shape(gpu, device, profile, served.hostname, driver))
            else:
                shapes.append(self._shape(gpu, None, profile, served.hostname, driver))
        self._shape_cache[node.node_name] = (node, served.hostname, shapes)
        return shapes

    def entities(
        self, nodes: Iterable[ServedNode], t: float, *, all_served: bool = True
    ) -> list[Entity]:
        """Every GPU entity of ``nodes`` sampled at ``t``, in node then GPU index order.

        ``all_served``: ``nodes`` are every served node, so cached label text of other nodes is
        dropped; a per-node scrape passes False and the caller calls ``retain``."""
        o = self.options
        out: list[Entity] = []
        seen: set[str] = set()
        for served in nodes:
            seen.add(served.topology.node_name)
            parent: GpuSample | None = None
            parent_of: GpuRecord | None = None
            for shape in self._shapes(served):
                if shape.gpu is not parent_of or parent is None:
                    parent_of = shape.gpu
                    parent = sample_gpu(
                        shape.gpu, shape.profile, t, seed=o.seed, boot_time=o.boot_time
                    )
                sample = parent
                if shape.device is not None:
                    sample = sample_mig_device(
                        shape.gpu, shape.device, shape.profile, t, seed=o.seed,
                        boot_time=o.boot_time, parent=parent,
                    )  # fmt: skip
                out.append(
                    Entity(
                        shape.head, shape.labels, shape.holders, sample, shape.supported,
                        shape.gpu, shape.profile, shape.gpu_head, shape.first_of_gpu, t,
                    )
                )  # fmt: skip
        if all_served and len(self._shape_cache) > len(seen):
            # Forget nodes no longer served (swap in a new dict: a concurrent scrape may read).
            self._shape_cache = {k: v for k, v in self._shape_cache.items() if k in seen}
        return out

    def retain(self, node_names: Iterable[str]) -> None:
        """Forget the cached label text of nodes not named (swap in a new dict: a concurrent
        scrape may read)."""
        keep = set(node_names)
        cache = self._shape_cache
        names = list(cache)  # one copy in C: a page build in another thread may be inserting
        if any(name not in keep for name in names):
            self._shape_cache = {name: cache[name] for name in names if name in keep}

    # -- rendering --------------------------------------------------------------------------

    def _xid_labels(self, entity: Entity) -> list[str]:
        n = self.options.names
        code = entity.sample.xid_last
        err = [(n.err_code, str(code)), (n.err_msg, n.xid_message(code))]
        holders: list[Holder | None] = list(entity.holders) or [None]
        return [entity.head + self._render_pairs(self._attributes(h) + err) + "}" for h in holders]

    def _windowed_lines(
        self,
        entities: Sequence[Entity],
        name: str,
        window_ms: int,
        seen: Callable[[GpuRecord, GpuProfile, float], list[tuple[str, str, int]]],
    ) -> list[str]:
        """One of dcgm-exporter's windowed counts (its ``expCollector``): per entity one series
        per value seen in the window (``seen``: label name, label value, count), or one 0
        without that label when none was; ``window_size_in_ms`` on each. The collector keys the
        counts by GPU, so MIG instances repeat their GPU's counts."""
        window = (self.options.names.window_size, str(window_ms))
        lines: list[str] = []
        for entity in entities:
            if entity.gpu is None or entity.profile is None:
                continue
            found = seen(entity.gpu, entity.profile, entity.t)
            rows = [([(label, value), window], count) for label, value, count in found]
            holders: list[Holder | None] = list(entity.holders) or [None]
            for pairs, count in rows or [([window], 0)]:
                extra = self._render_pairs(pairs)
                for holder in holders:
                    attrs = self._render_pairs(self._attributes(holder))
                    lines.append(f"{name}{entity.head}{extra}{attrs}}} {count}\n")
        return lines

    def _clock_event_lines(self, entities: Sequence[Entity]) -> list[str]:
        """DCGM_EXP_CLOCK_EVENTS_COUNT as dcgm-exporter's collector shapes it: per entity one
        series per reason seen in the window (``clock_event``), or one 0 without it when none
        was; MIG instances repeat their GPU's counts. Reasons in bit order."""
        n, o = self.options.names, self.options
        cache: dict[int, dict[int, int]] = {}

        def seen(gpu: GpuRecord, profile: GpuProfile, t: float) -> list[tuple[str, str, int]]:
            counts = cache.get(id(gpu))
            if counts is None:
                counts = cache[id(gpu)] = clock_event_counts(
                    gpu, profile, t, seed=o.seed,
                    window_s=o.clock_events_window_ms / 1000,
                    interval_s=o.collect_interval_ms / 1000,
                )  # fmt: skip
            return [
                (n.clock_event, label, counts[bit])
                for bit, label in CLOCK_EVENT_LABEL_VALUES
                if bit in counts
            ]

        return self._windowed_lines(entities, n.clock_events_count, o.clock_events_window_ms, seen)

    def _xid_count_lines(self, entities: Sequence[Entity]) -> list[str]:
        """DCGM_EXP_XID_ERRORS_COUNT as dcgm-exporter's XID collector shapes it: per entity one
        series per XID code seen in the window (``xid``), or one 0 without it when none was;
        MIG instances repeat their GPU's counts. Codes in ascending order."""
        n, o = self.options.names, self.options

        def seen(gpu: GpuRecord, _: GpuProfile, t: float) -> list[tuple[str, str, int]]:
            if not gpu.faults:
                return []
            counts = xid_counts(gpu.faults, t, window_s=o.xid_count_window_ms / 1000)
            return [(n.xid, str(code), counts[code]) for code in sorted(counts)]

        return self._windowed_lines(entities, n.xid_errors_count, o.xid_count_window_ms, seen)

    def _health_lines(self, entities: Sequence[Entity]) -> list[str]:
        """DCGM_EXP_GPU_HEALTH_STATUS: per GPU (DCGM health watches GPUs, not GPU instances)
        one series per health watch system, value PASS 0 / WARN 10 / FAIL 20."""
        n = self.options.names
        lines: list[str] = []
        for entity in entities:
            if entity.gpu is None or not entity.first_of_gpu:
                continue
            health = dcgm_health(entity.gpu.faults, entity.t)
            whole = entity.gpu_head == entity.head
            holders: list[Holder | None] = (list(entity.holders) if whole else []) or [None]
            for system in HEALTH_WATCH_SYSTEMS:
                result, code = health[system]
                extra = self._render_pairs([(n.health_error_code, code), (n.health_watch, system)])
                for holder in holders:
                    attrs = self._render_pairs(self._attributes(holder))
                    lines.append(
                        f"{n.gpu_health_status}{entity.gpu_head}{extra}{attrs}}} {result}\n"
                    )
        return lines

    def render(self, entities: Sequence[Entity]) -> Iterator[str]:
        """The exposition text, one chunk per metric family (families without series skipped)."""
        n = self.options.names
        # Exporter-computed families: their own labels, not one value per entity label set.
        computed = {
            n.clock_events_count: self._clock_event_lines,
            n.xid_errors_count: self._xid_count_lines,
            n.gpu_health_status: self._health_lines,
        }
        for fld in self._fields:
            name = fld.name
            special_lines = computed.get(name)
            if special_lines is not None:
                special = special_lines(entities)
                if special:
                    yield f"# HELP {name} {fld.help}\n# TYPE {name} {fld.kind}\n" + "".join(special)
                continue
            value = FIELD_SOURCES[name].value
            fmt = _format_float if fld.value_type == "float" else _format_int
            is_xid = name == "DCGM_FI_DEV_XID_ERRORS"
            lines = [
                f"{name}{label} {text}\n"
                for entity in entities
                if name in entity.supported
                for text in (fmt(value(entity.sample)),)
                for label in (self._xid_labels(entity) if is_xid else entity.labels)
            ]
            if lines:
                yield f"# HELP {name} {fld.help}\n# TYPE {name} {fld.kind}\n" + "".join(lines)

    def scrape(self, nodes: Iterable[ServedNode], t: float) -> Iterator[str]:
        return self.render(self.entities(nodes, t))

    def scrape_text(self, nodes: Iterable[ServedNode], t: float) -> str:
        return "".join(self.scrape(nodes, t))
