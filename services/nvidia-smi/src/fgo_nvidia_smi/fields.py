"""``--query-gpu`` / ``--query-compute-apps`` fields and their CSV output.

Every property ``--help-query-gpu`` lists is here (a test compares the two), with its aliases,
its unit and the value the simulated GPU reports. Properties a real H100 answers with a
placeholder answer with the same placeholder here (``[N/A]``, ``[Not Supported]``, the
deprecation notice), so scripts see the real tool's shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fgo_nvidia_smi.cli import RC_INVALID_ARGUMENT, UsageError
from fgo_nvidia_smi.fmt import csv_time, watts
from fgo_nvidia_smi.reporttree import (
    clocks_event_bits,
    gsp_mode,
    mig_mode,
)
from fgo_nvidia_smi.state import GpuView, Process, Snapshot

NA = "[N/A]"
NOT_SUPPORTED = "[Not Supported]"
DEPRECATED = "[Requested functionality has been deprecated]"

Getter = Callable[[GpuView, Snapshot], str]


@dataclass(frozen=True, slots=True)
class Field:
    names: tuple[str, ...]  # canonical first (the CSV header spelling), then aliases
    unit: str  # "" for none
    get: Getter

    @property
    def header(self) -> str:
        return f"{self.names[0]} [{self.unit}]" if self.unit else self.names[0]


def _const(value: str) -> Getter:
    return lambda gpu, snap: value


def _mib(fn: Callable[[GpuView], int]) -> Getter:
    return lambda gpu, snap: str(fn(gpu))


def _mig_na(fn: Callable[[GpuView], int]) -> Getter:
    # "On MIG-enabled GPUs, querying the utilization ... is not currently supported."
    return lambda gpu, snap: NA if gpu.mig_enabled else str(fn(gpu))


def _ecc(value: str = "0") -> Getter:
    return lambda gpu, snap: value if gpu.profile.ecc_supported else NA


def _pci_part(position: int, width: int) -> Getter:
    def get(gpu: GpuView, snap: Snapshot) -> str:
        domain, bus, devfn = gpu.bus_id.split(":")
        part = (domain, bus, devfn.split(".")[0])[position]
        return f"0x{int(part, 16):0{width}X}"

    return get


def _reason(bit: int) -> Getter:
    return lambda gpu, snap: "Active" if clocks_event_bits(gpu) & bit else "Not Active"


def _if_ecc(fn: Callable[[GpuView], str]) -> Getter:
    return lambda gpu, snap: fn(gpu) if gpu.profile.ecc_supported else NA


def _ecc_count(kind: str, scope: str) -> Getter:
    """Injected ECC faults are DRAM errors (device memory); SRAM counters stay 0."""

    def get(gpu: GpuView, snap: Snapshot) -> str:
        if not gpu.profile.ecc_supported:
            return NA
        s = gpu.sample
        counts = {
            ("corrected", "volatile"): s.ecc_sbe_volatile,
            ("corrected", "aggregate"): s.ecc_sbe_aggregate,
            ("uncorrected", "volatile"): s.ecc_dbe_volatile,
            ("uncorrected", "aggregate"): s.ecc_dbe_aggregate,
        }
        return str(counts[(kind, scope)])

    return get


def _fan(gpu: GpuView, snap: Snapshot) -> str:
    fan = gpu.sample.fan_speed_percent
    return NA if fan is None else str(fan)


def _mem_temp(gpu: GpuView, snap: Snapshot) -> str:
    return str(gpu.sample.mem_temp_c) if gpu.profile.memory_temp_offset_c else NA


def _power(gpu: GpuView, snap: Snapshot) -> str:
    return watts(gpu.sample.power_w)


def _fields() -> list[Field]:
    f: list[Field] = []

    def add(names: str | tuple[str, ...], unit: str, get: Getter) -> None:
        f.append(Field(names if isinstance(names, tuple) else (names,), unit, get))

    add("timestamp", "", lambda g, s: csv_time(s.t))
    add("driver_version", "", lambda g, s: s.driver_version)
    add("vgpu_driver_capability.heterogenous_multivGPU", "", _const(NA))
    add("count", "", lambda g, s: str(s.attached))
    add(("name", "gpu_name"), "", lambda g, s: g.name)
    add(("serial", "gpu_serial"), "", lambda g, s: g.serial)
    add(("uuid", "gpu_uuid"), "", lambda g, s: g.uuid)
    add(("pci.bus_id", "gpu_bus_id"), "", lambda g, s: g.bus_id)
    add("pci.domain", "", _pci_part(0, 4))
    add("pci.bus", "", _pci_part(1, 2))
    add("pci.device", "", _pci_part(2, 2))
    add("pci.baseClass", "", _const("0x3"))
    add("pci.subClass", "", _const("0x2"))
    add("pci.device_id", "", lambda g, s: f"0x{g.profile.pci_device_id:08X}")
    add("pci.sub_device_id", "", lambda g, s: f"0x{g.profile.pci_subsystem_id:08X}")
    for cap in (
        "fractional_multiVgpu",
        "heterogeneous_timeSlice_profile",
        "heterogeneous_timeSlice_sizes",
        "homogeneous_placements",
        "mig_timeSlicing",
        "mig_timeSlicing_mode",
    ):
        add(f"vgpu_device_capability.{cap}", "", _const(NA))
    gen: Getter = lambda g, s: str(g.profile.pcie_generation)  # noqa: E731
    add("pcie.link.gen.current", "", gen)
    add("pcie.link.gen.gpucurrent", "", gen)
    add("pcie.link.gen.max", "", gen)
    add("pcie.link.gen.gpumax", "", gen)
    add("pcie.link.gen.hostmax", "", _const(NA))
    add("pcie.link.width.current", "", lambda g, s: str(g.profile.pcie_link_width))
    add("pcie.link.width.max", "", lambda g, s: str(g.profile.pcie_link_width))
    add("index", "", lambda g, s: str(g.index))
    add("display_mode", "", _const(DEPRECATED))
    add("display_attached", "", _const("Yes"))
    add("display_active", "", _const("Disabled"))
    add("persistence_mode", "", _const("Enabled"))
    add("addressing_mode", "", _const("None"))
    add("accounting.mode", "", _const("Disabled"))
    add("accounting.buffer_size", "", _const("4000"))
    add("driver_model.current", "", _const(NA))
    add("driver_model.pending", "", _const(NA))
    add("vbios_version", "", lambda g, s: g.profile.vbios_version)
    add(
        ("inforom.img", "inforom.image"),
        "",
        lambda g, s: _na(getattr(g.profile, "inforom_image_version", "N/A")),
    )
    add("inforom.oem", "", _const("2.1"))
    add("inforom.ecc", "", lambda g, s: "7.16" if g.profile.ecc_supported else NA)
    add(("inforom.pwr", "inforom.power"), "", _const(NA))
    add("inforom.checksum_validation", "", _const(NA))
    add("gpu_recovery_action", "", _const("None"))
    add(("gom.current", "gpu_operation_mode.current"), "", _const(NA))
    add(("gom.pending", "gpu_operation_mode.pending"), "", _const(NA))
    add("fan.speed", "%", _fan)
    add("pstate", "", lambda g, s: f"P{g.sample.pstate}")
    add(
        ("clocks_event_reasons.supported", "clocks_throttle_reasons.supported"),
        "",
        _const("0x00000000000001FF"),
    )
    add(
        ("clocks_event_reasons.active", "clocks_throttle_reasons.active"),
        "",
        lambda g, s: f"0x{clocks_event_bits(g):016X}",
    )
    for reason, bit in (
        ("gpu_idle", 0x1),
        ("applications_clocks_setting", 0x2),
        ("sw_power_cap", 0x4),
        ("hw_slowdown", 0x8),
        ("hw_thermal_slowdown", 0x40),
        ("hw_power_brake_slowdown", 0x80),
        ("sw_thermal_slowdown", 0x20),
        ("sync_boost", 0x10),
    ):
        add(
            (f"clocks_event_reasons.{reason}", f"clocks_throttle_reasons.{reason}"),
            "",
            _reason(bit),
        )
    # Cumulative slowdown times (us), the telemetry model's violation counters (ns).
    for counter in ("sync_boost", "sw_thermal_slowdown"):
        add(f"clocks_event_reasons_counters.{counter}", "us", _const("0"))
    add(
        "clocks_event_reasons_counters.sw_power_cap",
        "us",
        lambda g, s: str(g.sample.sw_power_cap_ns // 1000),
    )
    add(
        "clocks_event_reasons_counters.hw_thermal_slowdown",
        "us",
        lambda g, s: str(g.sample.thermal_violation_ns // 1000),
    )
    add(
        "clocks_event_reasons_counters.hw_power_brake_slowdown",
        "us",
        lambda g, s: str(g.sample.power_brake_ns // 1000),
    )
    add("memory.total", "MiB", _mib(lambda g: g.memory_total_mib))
    add("memory.reserved", "MiB", _mib(lambda g: g.memory_reserved_mib))
    add("memory.used", "MiB", _mib(lambda g: g.memory_used_mib))
    add("memory.free", "MiB", _mib(lambda g: g.memory_free_mib))
    add("compute_mode", "", lambda g, s: g.compute_mode)
    add("compute_cap", "", lambda g, s: "{}.{}".format(*g.profile.compute_capability))
    add("utilization.gpu", "%", _mig_na(lambda g: g.sample.gpu_util))
    add("utilization.memory", "%", _mig_na(lambda g: g.sample.mem_copy_util))
    add("utilization.encoder", "%", _mig_na(lambda g: g.sample.encoder_util))
    add("utilization.decoder", "%", _mig_na(lambda g: g.sample.decoder_util))
    add("utilization.jpeg", "%", _mig_na(lambda g: 0))
    add("utilization.ofa", "%", _mig_na(lambda g: 0))
    add("encoder.stats.sessionCount", "", _const("0"))
    add("encoder.stats.averageFps", "", _const("0"))
    add("encoder.stats.averageLatency", "", _const("0"))
    add("dramEncryption.mode.current", "", _const(NA))
    add("dramEncryption.mode.pending", "", _const(NA))
    ecc_mode: Getter = lambda g, s: "Enabled" if g.profile.ecc_supported else NA  # noqa: E731
    add("ecc.mode.current", "", ecc_mode)
    add("ecc.mode.pending", "", ecc_mode)
    # Hopper-era boards count SRAM and DRAM; the per-unit legacy counters are not supported.
    legacy_na = ("register_file", "l1_cache", "l2_cache", "texture_memory", "cbu")
    for kind in ("corrected", "uncorrected"):
        for scope in ("volatile", "aggregate"):
            for unit in ("device_memory", "dram", *legacy_na, "sram", "total"):
                if unit in legacy_na:
                    getter = _const(NA)
                elif unit == "sram":
                    getter = _ecc()
                else:
                    getter = _ecc_count(kind, scope)
                add(f"ecc.errors.{kind}.{scope}.{unit}", "", getter)
    for scope in ("volatile", "aggregate"):
        for unit in ("parity", "secded"):
            add(f"ecc.errors.uncorrected.{scope}.sram.{unit}", "", _ecc())
    add("ecc.errors.uncorrected.aggregate.sram.thresholdExceeded", "", _ecc("No"))
    for unit in ("l2", "sm", "mcu", "pcie", "other"):
        add(f"ecc.errors.uncorrected.aggregate.sram.{unit}", "", _ecc())
    add(("retired_pages.single_bit_ecc.count", "retired_pages.sbe"), "", _const(NA))
    add(("retired_pages.double_bit.count", "retired_pages.dbe"), "", _const(NA))
    add("retired_pages.pending", "", _const(NA))
    add(
        ("remapped_rows.correctable", "remapped_rows.sbe"),
        "",
        _if_ecc(lambda g: str(g.sample.remapped_rows_correctable)),
    )
    add("remapped_rows.correctable_inactive", "", _ecc())
    add(
        ("remapped_rows.uncorrectable", "remapped_rows.dbe"),
        "",
        _if_ecc(lambda g: str(g.sample.remapped_rows_uncorrectable)),
    )
    add("remapped_rows.uncorrectable_inactive", "", _ecc())
    add("remapped_rows.pending", "", _ecc("No"))
    add(
        "remapped_rows.failure",
        "",
        _if_ecc(lambda g: "Yes" if g.sample.row_remap_failure else "No"),
    )
    add("remapped_rows.histogram.max", "", _ecc("2560"))
    for level in ("high", "partial", "low", "none"):
        add(f"remapped_rows.histogram.{level}", "", _ecc())
    add("temperature.gpu", "", lambda g, s: str(g.sample.gpu_temp_c))
    add("temperature.gpu.tlimit", "", lambda g, s: str(g.sample.tlimit_margin_c))
    add("temperature.memory", "", _mem_temp)
    add("power.management", "", _const("Enabled"))
    add("power.draw", "W", _power)
    add(("power.draw.average", "gpu.power.draw.average"), "W", _power)
    add(("power.draw.instant", "gpu.power.draw.instant"), "W", _power)
    limit: Getter = lambda g, s: watts(g.profile.power_default_limit_w)  # noqa: E731
    add(("power.limit", "gpu.power.requested_limit"), "W", limit)
    add(("enforced.power.limit", "gpu.power.current_limit"), "W", limit)
    add(("power.default_limit", "gpu.power.default_limit"), "W", limit)
    add(
        ("power.min_limit", "gpu.power.min_limit"),
        "W",
        lambda g, s: watts(g.profile.power_min_limit_w),
    )
    add(
        ("power.max_limit", "gpu.power.max_limit"),
        "W",
        lambda g, s: watts(g.profile.power_max_limit_w),
    )
    add("module.power.draw.average", "W", _const(NA))
    add("module.power.draw.instant", "W", _const(NA))
    add(("module.power.limit", "module.power.requested_limit"), "W", _const(NA))
    add(("module.enforced.power.limit", "module.power.current_limit"), "W", _const(NA))
    add("module.power.default_limit", "W", _const(NA))
    add("module.power.min_limit", "W", _const(NA))
    add("module.power.max_limit", "W", _const(NA))
    for name, unit in (
        ("delayed_power_smoothing_supported", ""),
        ("primary_power_floor", "W"),
        ("secondary_power_floor", "W"),
        ("min_primary_floor_activation_offset", "W"),
        ("min_primary_floor_activation_point", "W"),
        ("window_multiplier", "ms"),
        ("curr_profile.secondary_power_floor", "W"),
        ("curr_profile.primary_floor_act_window_multiplier", ""),
        ("curr_profile.primary_floor_tar_window_multiplier", ""),
        ("curr_profile.primary_floor_act_offset", "W"),
        ("admin_override.secondary_power_floor", "W"),
        ("admin_override.primary_floor_act_window_multiplier", ""),
        ("admin_override.primary_floor_tar_window_multiplier", ""),
        ("admin_override.primary_floor_act_offset", "W"),
    ):
        add(f"power_smoothing.{name}", unit, _const(NA))
    sm: Getter = lambda g, s: str(g.sample.sm_clock_mhz)  # noqa: E731
    mem: Getter = lambda g, s: str(g.sample.mem_clock_mhz)  # noqa: E731
    max_sm: Getter = lambda g, s: str(g.profile.clock_sm_max_mhz)  # noqa: E731
    max_mem: Getter = lambda g, s: str(g.profile.clock_mem_mhz)  # noqa: E731
    add(("clocks.current.graphics", "clocks.gr"), "MHz", sm)
    add(("clocks.current.sm", "clocks.sm"), "MHz", sm)
    add(("clocks.current.memory", "clocks.mem"), "MHz", mem)
    add(("clocks.current.video", "clocks.video"), "MHz", lambda g, s: str(g.sample.video_clock_mhz))
    add(("clocks.applications.graphics", "clocks.applications.gr"), "MHz", max_sm)
    add(("clocks.applications.memory", "clocks.applications.mem"), "MHz", max_mem)
    add(("clocks.default_applications.graphics", "clocks.default_applications.gr"), "MHz", max_sm)
    add(("clocks.default_applications.memory", "clocks.default_applications.mem"), "MHz", max_mem)
    add(("clocks.max.graphics", "clocks.max.gr"), "MHz", max_sm)
    add(("clocks.max.sm",), "MHz", max_sm)
    add(("clocks.max.memory", "clocks.max.mem"), "MHz", max_mem)
    mig: Getter = lambda g, s: _na(mig_mode(g))  # noqa: E731
    add("mig.mode.current", "", mig)
    add("mig.mode.pending", "", mig)
    add("gsp.mode.current", "", lambda g, s: _na(gsp_mode(g)))
    add("gsp.mode.default", "", lambda g, s: _na(gsp_mode(g)))
    add("c2c.mode", "", _const("Disabled"))
    add("protected_memory.total", "MiB", _const("0"))
    add("protected_memory.used", "MiB", _const("0"))
    add("protected_memory.free", "MiB", _const("0"))
    for name in (
        "state",
        "status",
        "cliqueId",
        "clusterUuid",
        "health.summary",
        "health.bandwidth",
        "health.route_recovery_in_progress",
        "health.route_unhealthy",
        "health.access_timeout_recovery",
        "health.incorrect_configuration",
        "health.partition_assigned",
    ):
        add(f"fabric.{name}", "", _const(NA))
    for name in ("chassis_serial_number", "slot_number", "tray_index", "host_id", "peer_type"):
        add(f"platform.{name}", "", _const(NA))
    add("platform.module_id", "", lambda g, s: str(g.module_id))
    add("platform.gpu_fabric_guid", "", _const(NA))
    add("hostname", "", _const(NA))
    return f


def _na(value: str) -> str:
    return NA if value in ("N/A", "") else value


GPU_FIELDS: tuple[Field, ...] = tuple(_fields())


@dataclass(frozen=True, slots=True)
class AppField:
    names: tuple[str, ...]
    unit: str
    get: Callable[[GpuView, Process, Snapshot], str]

    @property
    def header(self) -> str:
        return f"{self.names[0]} [{self.unit}]" if self.unit else self.names[0]


APP_FIELDS: tuple[AppField, ...] = (
    AppField(("timestamp",), "", lambda g, p, s: csv_time(s.t)),
    AppField(("gpu_name",), "", lambda g, p, s: g.name),
    AppField(("gpu_bus_id",), "", lambda g, p, s: g.bus_id),
    AppField(("gpu_serial",), "", lambda g, p, s: g.serial),
    AppField(("gpu_uuid",), "", lambda g, p, s: g.uuid),
    AppField(("pid",), "", lambda g, p, s: str(p.pid)),
    AppField(("process_name", "name"), "", lambda g, p, s: p.name),
    AppField(("used_gpu_memory", "used_memory"), "MiB", lambda g, p, s: str(p.used_mib)),
)


def _index(names_per_field: list[tuple[str, ...]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for position, names in enumerate(names_per_field):
        for name in names:
            out.setdefault(name.lower(), position)
    return out


_GPU_INDEX = _index([f.names for f in GPU_FIELDS])
_APP_INDEX = _index([f.names for f in APP_FIELDS])


def _cell(value: str, unit: str, nounits: bool) -> str:
    if unit and not nounits and not value.startswith("["):
        return f"{value} {unit}"
    return value


@dataclass(frozen=True, slots=True)
class CsvQuery:
    """A validated ``--query-*`` request."""

    kind: str  # "query_gpu" | "query_compute_apps"
    positions: tuple[int, ...]
    noheader: bool
    nounits: bool

    @classmethod
    def build(cls, kind: str, names: list[str], *, noheader: bool, nounits: bool) -> CsvQuery:
        index = _GPU_INDEX if kind == "query_gpu" else _APP_INDEX
        positions: list[int] = []
        for name in names:
            position = index.get(name.strip().lower())
            if position is None:
                raise UsageError(
                    f'Field "{name}" is not a valid field to query.\n\n', RC_INVALID_ARGUMENT
                )
            positions.append(position)
        return cls(kind, tuple(positions), noheader, nounits)

    def header(self) -> str:
        if self.noheader:
            return ""
        fields: tuple[Field, ...] | tuple[AppField, ...] = (
            GPU_FIELDS if self.kind == "query_gpu" else APP_FIELDS
        )
        return ", ".join(fields[p].header for p in self.positions) + "\n"

    def rows(self, snapshot: Snapshot) -> str:
        lines: list[str] = []
        if self.kind == "query_gpu":
            for gpu in snapshot.gpus:
                cells = []
                for p in self.positions:
                    fld = GPU_FIELDS[p]
                    cells.append(_cell(fld.get(gpu, snapshot), fld.unit, self.nounits))
                lines.append(", ".join(cells))
        else:
            for gpu in snapshot.gpus:
                for proc in gpu.all_processes:
                    cells = []
                    for p in self.positions:
                        app = APP_FIELDS[p]
                        cells.append(_cell(app.get(gpu, proc, snapshot), app.unit, self.nounits))
                    lines.append(", ".join(cells))
        return "".join(line + "\n" for line in lines)
