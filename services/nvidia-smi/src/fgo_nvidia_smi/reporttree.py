"""The facts of ``nvidia-smi -q`` for one GPU, as one tree both reports render.

Each node carries a text label and an XML tag (either may be absent), its value, the XML value
where it differs (hex without ``0x`` ...) and the ``-d`` section it belongs to. Order, labels and
tags follow ../shared/reference/nvidia-smi-h100/smi_q.txt and smi_qx.txt; every number comes from
the GPU's view (record, profile, telemetry sample). ``fgo_nvidia_smi.report`` renders the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fgo_common.telemetry import (
    BUCKET_SECONDS,
    CLOCKS_EVENT_GPU_IDLE,
    CLOCKS_EVENT_HW_POWER_BRAKE,
    CLOCKS_EVENT_HW_SLOWDOWN,
    CLOCKS_EVENT_HW_THERMAL,
    CLOCKS_EVENT_SW_POWER_CAP,
)

from fgo_nvidia_smi.fmt import NA, arch_name, watts
from fgo_nvidia_smi.state import GpuView, MigView, Process


@dataclass(slots=True)
class Node:
    label: str | None  # text label; None: XML only
    tag: str | None  # XML tag; None: text only
    value: str | None = None  # leaf value (text form)
    children: list[Node] | None = None
    xml_value: str | None = None  # leaf value where XML differs (hex without 0x ...)
    section: str = ""  # -d section this top-level node belongs to
    attrs: dict[str, str] = field(default_factory=dict)


def leaf(label: str | None, tag: str | None, value: object, xml: object = None) -> Node:
    return Node(label, tag, str(value), xml_value=None if xml is None else str(xml))


def group(label: str | None, tag: str | None, *children: Node, section: str = "") -> Node:
    return Node(label, tag, children=list(children), section=section)


def _in(section: str, node: Node) -> Node:
    node.section = section
    return node


# Values shared with the CSV fields ------------------------------------------------------------


def mig_mode(gpu: GpuView) -> str:
    if not gpu.profile.mig_capable:
        return NA
    return "Enabled" if gpu.mig_enabled else "Disabled"


def gsp_mode(gpu: GpuView) -> str:
    # GSP firmware exists from Turing on; the r580 driver runs it by default there.
    return (
        NA
        if gpu.profile.architecture.lower() in ("kepler", "maxwell", "pascal", "volta")
        else ("Enabled")
    )


def _mib(value: int) -> str:
    return f"{value} MiB"


def _pct(value: int) -> str:
    return f"{value} %"


def _w(value: float) -> str:
    return f"{watts(value)} W"


def _mhz(value: int) -> str:
    return f"{value} MHz"


# NVML clocks event reason bits (nvml.h nvmlClocksEventReason*; DCGM uses the same values).
REASON_GPU_IDLE = CLOCKS_EVENT_GPU_IDLE
REASON_SW_POWER_CAP = CLOCKS_EVENT_SW_POWER_CAP
REASON_HW_SLOWDOWN = CLOCKS_EVENT_HW_SLOWDOWN
REASON_HW_THERMAL = CLOCKS_EVENT_HW_THERMAL
REASON_HW_POWER_BRAKE = CLOCKS_EVENT_HW_POWER_BRAKE


def clocks_event_bits(gpu: GpuView) -> int:
    """Why clocks are below maximum: the telemetry model's bits, so nvidia-smi and the
    exporter's DCGM_FI_DEV_CLOCKS_EVENT_REASONS show the same reasons."""
    return gpu.sample.clocks_event_reasons


def _violation_us(ns: int) -> str:
    """A slowdown's cumulative time, as nvidia-smi prints the event reason counters."""
    return f"{ns // 1000} us"


def _active(gpu: GpuView, bit: int) -> str:
    return "Active" if clocks_event_bits(gpu) & bit else "Not Active"


def _supported_graphics_clocks(gpu: GpuView) -> list[int]:
    p = gpu.profile
    low = p.clock_sm_idle_mhz or p.clock_sm_base_mhz
    clocks = list(range(p.clock_sm_max_mhz, low - 1, -15))
    return clocks or [p.clock_sm_max_mhz]


# The tree ------------------------------------------------------------------------------------


def _mig_device_node(mig: MigView) -> Node:
    p = mig.profile
    dev = mig.device
    sample = mig.sample
    return group(
        "MIG Device",
        "mig_device",
        leaf("Index", "index", mig.index),
        leaf("GPU Instance ID", "gpu_instance_id", dev.gi_id),
        leaf("Compute Instance ID", "compute_instance_id", dev.ci_id),
        group(
            "Device Attributes",
            "device_attributes",
            group(
                "Shared",
                "shared",
                leaf(
                    "Multiprocessor count",
                    "multiprocessor_count",
                    dev.sm_count or (p.sm_count if p else 0),
                ),
                leaf("Copy Engine count", "copy_engine_count", p.copy_engines if p else 0),
                leaf("Encoder count", "encoder_count", p.encoders if p else 0),
                leaf("Decoder count", "decoder_count", p.decoders if p else 0),
                leaf("OFA count", "ofa_count", p.ofa if p else 0),
                leaf("JPG count", "jpg_count", p.jpeg if p else 0),
            ),
        ),
        group(
            "ECC Errors",
            "ecc_error_count",
            group(
                "Volatile", "volatile_count", leaf("SRAM Uncorrectable", "sram_uncorrectable", 0)
            ),
        ),
        group(
            "FB Memory Usage",
            "fb_memory_usage",
            leaf("Total", "total", _mib(sample.fb_total_mib)),
            leaf("Reserved", "reserved", _mib(0)),
            leaf("Used", "used", _mib(sample.fb_used_mib)),
            leaf("Free", "free", _mib(max(0, sample.fb_total_mib - sample.fb_used_mib))),
        ),
        group(
            "BAR1 Memory Usage",
            "bar1_memory_usage",
            leaf("Total", "total", _mib(mig.bar1_total_mib)),
            leaf("Used", "used", _mib(mig.bar1_used_mib)),
            leaf("Free", "free", _mib(mig.bar1_total_mib - mig.bar1_used_mib)),
        ),
    )


def _process_node(proc: Process) -> Node:
    gi = NA if proc.gi_id is None else str(proc.gi_id)
    ci = NA if proc.ci_id is None else str(proc.ci_id)
    # Label "": transparent in the text report (its children sit directly under "Processes").
    return Node(
        "",
        "process_info",
        children=[
            leaf("GPU instance ID", "gpu_instance_id", gi),
            leaf("Compute instance ID", "compute_instance_id", ci),
            Node(
                "Process ID",
                None,
                value=str(proc.pid),
                children=[
                    leaf("Type", None, proc.type),
                    leaf("Name", None, proc.name),
                    leaf("Used GPU Memory", None, _mib(proc.used_mib)),
                ],
            ),
            leaf(None, "pid", proc.pid),
            leaf(None, "type", proc.type),
            leaf(None, "process_name", proc.name),
            leaf(None, "used_memory", _mib(proc.used_mib)),
        ],
    )


SAMPLE_BUCKETS = 6  # one minute of the model's 10-second buckets


def _samples_block(label: str, values: list[float], unit: str, fmt: str) -> Node:
    duration = (len(values) - 1) * BUCKET_SECONDS
    return group(
        label,
        None,
        leaf("Duration", None, f"{duration:.2f} sec"),
        leaf("Number of Samples", None, len(values)),
        leaf("Max", None, f"{max(values):{fmt}} {unit}"),
        leaf("Min", None, f"{min(values):{fmt}} {unit}"),
        leaf("Avg", None, f"{sum(values) / len(values):{fmt}} {unit}"),
        section="SAMPLES",
    )


def _utilization_samples(gpu: GpuView) -> list[Node]:
    """``-q -d UTILIZATION`` only: min/max/avg over the recent samples."""
    if gpu.mig_enabled:
        return []
    history = gpu.history(SAMPLE_BUCKETS)
    blocks = (
        ("GPU Utilization Samples", [float(h.gpu_util) for h in history]),
        ("Memory Utilization Samples", [float(h.mem_copy_util) for h in history]),
        ("ENC Utilization Samples", [float(h.encoder_util) for h in history]),
        ("DEC Utilization Samples", [float(h.decoder_util) for h in history]),
        # r580 also summarises the JPEG and OFA engines; nothing simulated uses them.
        ("JPG Utilization Samples", [0.0 for _ in history]),
        ("OFA Utilization Samples", [0.0 for _ in history]),
    )
    nodes = [_samples_block(label, values, "%", ".0f") for label, values in blocks]
    for node in nodes:
        node.section = "UTILIZATION_SAMPLES"
    return nodes


def _power_samples(gpu: GpuView) -> list[Node]:
    """``-q -d POWER`` only."""
    node = _samples_block(
        "Power Samples", [h.power_w for h in gpu.history(SAMPLE_BUCKETS)], "W", ".2f"
    )
    node.section = "POWER_SAMPLES"
    return [node]


def _clock_samples() -> list[Node]:
    """``-q -d CLOCK`` only. The r580 driver keeps no clock sample buffer on the H100: every
    line of both blocks reads ``Not Found``."""
    nodes = []
    for label in ("SM Clock Samples", "Memory Clock Samples"):
        node = group(
            label,
            None,
            *(
                leaf(key, None, "Not Found")
                for key in ("Duration", "Number of Samples", "Max", "Min", "Avg")
            ),
        )
        node.section = "CLOCK_SAMPLES"
        nodes.append(node)
    return nodes


def gpu_tree(gpu: GpuView, driver: str) -> list[Node]:
    p = gpu.profile
    s = gpu.sample
    domain, bus, devfn = gpu.bus_id.split(":")
    device = devfn.split(".")[0]
    ecc = p.ecc_supported
    ecc_count = "0" if ecc else NA
    temp_mem = f"{s.mem_temp_c} C" if p.memory_temp_offset_c else NA
    mem_power = NA if s.memory_power_w is None else _w(s.memory_power_w)
    procs = gpu.all_processes
    bar1_used = min(p.bar1_mib, s.bar1_used_mib)
    graphics = _supported_graphics_clocks(gpu)

    def ecc_block(*names: tuple[str, str]) -> list[Node]:
        return [leaf(label, tag, ecc_count) for label, tag in names]

    def ecc_scope(sbe: int, dbe: int) -> list[Node]:
        # Injected ECC faults count as DRAM (HBM/GDDR) errors; SRAM stays clean.
        return [
            *ecc_block(
                ("SRAM Correctable", "sram_correctable"),
                ("SRAM Uncorrectable Parity", "sram_uncorrectable_parity"),
                ("SRAM Uncorrectable SEC-DED", "sram_uncorrectable_secded"),
            ),
            leaf("DRAM Correctable", "dram_correctable", sbe if ecc else NA),
            leaf("DRAM Uncorrectable", "dram_uncorrectable", dbe if ecc else NA),
        ]

    migs: Node
    if gpu.migs:
        migs = group(None, "mig_devices", *(_mig_device_node(m) for m in gpu.migs))
    else:
        migs = leaf(None, "mig_devices", "None")
    mig_text = [_mig_device_node(m) for m in gpu.migs]
    for node in mig_text:
        node.tag = None  # XML carries them inside <mig_devices>
    processes: Node
    if procs:
        processes = group("Processes", "processes", *(_process_node(pr) for pr in procs))
    else:
        processes = Node("Processes", "processes", value="None", children=None)
    processes.section = "PIDS"
    return [
        leaf("Product Name", "product_name", gpu.name),
        leaf("Product Brand", "product_brand", p.brand),
        leaf("Product Architecture", "product_architecture", arch_name(p.architecture)),
        leaf("Display Mode", "display_mode", "Requested functionality has been deprecated"),
        leaf("Display Attached", "display_attached", "Yes"),
        leaf("Display Active", "display_active", "Disabled"),
        leaf("Persistence Mode", "persistence_mode", "Enabled"),
        leaf("Addressing Mode", "addressing_mode", "None"),
        group(
            "MIG Mode",
            "mig_mode",
            leaf("Current", "current_mig", mig_mode(gpu)),
            leaf("Pending", "pending_mig", mig_mode(gpu)),
        ),
        *mig_text,
        migs,
        _in("ACCOUNTING", leaf("Accounting Mode", "accounting_mode", "Disabled")),
        _in("ACCOUNTING", leaf("Accounting Mode Buffer Size", "accounting_mode_buffer_size", 4000)),
        group(
            "Driver Model",
            "driver_model",
            leaf("Current", "current_dm", NA),
            leaf("Pending", "pending_dm", NA),
        ),
        leaf("Serial Number", "serial", gpu.serial),
        leaf("GPU UUID", "uuid", gpu.uuid),
        leaf("GPU PDI", "pdi", gpu.pdi),
        leaf("Minor Number", "minor_number", gpu.record.minor),
        leaf("VBIOS Version", "vbios_version", p.vbios_version),
        leaf("MultiGPU Board", "multigpu_board", "No"),
        leaf("Board ID", "board_id", gpu.board_id),
        leaf("Board Part Number", "board_part_number", p.board_part_number or NA),
        leaf("GPU Part Number", "gpu_part_number", getattr(p, "gpu_part_number", NA) or NA),
        leaf("FRU Part Number", "gpu_fru_part_number", NA),
        group(
            "Platform Info",
            "platformInfo",
            leaf("Chassis Serial Number", "chassis_serial_number", NA),
            leaf("Slot Number", "slot_number", NA),
            leaf("Tray Index", "tray_index", NA),
            leaf("Host ID", "host_id", NA),
            leaf("Peer Type", "peer_type", NA),
            leaf("Module Id", "module_id", gpu.module_id),
            leaf("GPU Fabric GUID", "gpu_fabric_guid", NA),
        ),
        group(
            "Inforom Version",
            "inforom_version",
            leaf("Image Version", "img_version", getattr(p, "inforom_image_version", NA) or NA),
            leaf("OEM Object", "oem_object", "2.1"),
            leaf("ECC Object", "ecc_object", "7.16" if ecc else NA),
            leaf("Power Management Object", "pwr_object", NA),
        ),
        group(
            "Inforom BBX Object Flush",
            "inforom_bbx_flush",
            leaf("Latest Timestamp", "latest_timestamp", NA),
            leaf("Latest Duration", "latest_duration", NA),
        ),
        group(
            "GPU Operation Mode",
            "gpu_operation_mode",
            leaf("Current", "current_gom", NA),
            leaf("Pending", "pending_gom", NA),
        ),
        leaf("GPU C2C Mode", "c2c_mode", "Disabled"),
        group(
            "GPU Virtualization Mode",
            "gpu_virtualization_mode",
            leaf("Virtualization Mode", "virtualization_mode", "Pass-Through"),
            leaf("Host VGPU Mode", "host_vgpu_mode", NA),
            leaf("vGPU Heterogeneous Mode", "vgpu_heterogeneous_mode", NA),
        ),
        leaf("GPU Recovery Action", "gpu_recovery_action", "None"),
        _in(
            "GSP_FIRMWARE_VERSION",
            leaf(
                "GSP Firmware Version",
                "gsp_firmware_version",
                driver if gsp_mode(gpu) == "Enabled" else NA,
            ),
        ),
        group("IBMNPU", "ibmnpu", leaf("Relaxed Ordering Mode", "relaxed_ordering_mode", NA)),
        group(
            "PCI",
            "pci",
            leaf("Bus", "pci_bus", f"0x{bus}", bus),
            leaf("Device", "pci_device", f"0x{device}", device),
            leaf("Domain", "pci_domain", f"0x{domain[-4:]}", domain[-4:]),
            leaf("Base Classcode", "pci_base_class", "0x3", "3"),
            leaf("Sub Classcode", "pci_sub_class", "0x2", "2"),
            leaf(
                "Device Id", "pci_device_id", f"0x{p.pci_device_id:08X}", f"{p.pci_device_id:08X}"
            ),
            leaf("Bus Id", "pci_bus_id", gpu.bus_id),
            leaf(
                "Sub System Id",
                "pci_sub_system_id",
                f"0x{p.pci_subsystem_id:08X}",
                f"{p.pci_subsystem_id:08X}",
            ),
            group(
                "GPU Link Info",
                "pci_gpu_link_info",
                group(
                    "PCIe Generation",
                    "pcie_gen",
                    leaf("Max", "max_link_gen", p.pcie_generation),
                    leaf("Current", "current_link_gen", p.pcie_generation),
                    leaf("Device Current", "device_current_link_gen", p.pcie_generation),
                    leaf("Device Max", "max_device_link_gen", p.pcie_generation),
                    leaf("Host Max", "max_host_link_gen", NA),
                ),
                group(
                    "Link Width",
                    "link_widths",
                    leaf("Max", "max_link_width", f"{p.pcie_link_width}x"),
                    leaf("Current", "current_link_width", f"{p.pcie_link_width}x"),
                ),
            ),
            group(
                "Bridge Chip",
                "pci_bridge_chip",
                leaf("Type", "bridge_chip_type", NA),
                leaf("Firmware", "bridge_chip_fw", NA),
            ),
            leaf("Replays Since Reset", "replay_counter", s.pcie_replay_count),
            leaf("Replay Number Rollovers", "replay_rollover_counter", 0),
            leaf("Tx Throughput", "tx_util", f"{s.pcie_tx_bytes_per_s // 1000} KB/s"),
            leaf("Rx Throughput", "rx_util", f"{s.pcie_rx_bytes_per_s // 1000} KB/s"),
            leaf("Atomic Caps Outbound", "atomic_caps_outbound", NA),
            leaf("Atomic Caps Inbound", "atomic_caps_inbound", NA),
        ),
        leaf(
            "Fan Speed",
            "fan_speed",
            NA if s.fan_speed_percent is None else _pct(s.fan_speed_percent),
        ),
        _in("PERFORMANCE", leaf("Performance State", "performance_state", f"P{s.pstate}")),
        _in(
            "PERFORMANCE",
            group(
                "Clocks Event Reasons",
                "clocks_event_reasons",
                leaf("Idle", "clocks_event_reason_gpu_idle", _active(gpu, REASON_GPU_IDLE)),
                leaf(
                    "Applications Clocks Setting",
                    "clocks_event_reason_applications_clocks_setting",
                    _active(gpu, 0x2),
                ),
                leaf("SW Power Cap", "clocks_event_reason_sw_power_cap", _active(gpu, 0x4)),
                Node(
                    "HW Slowdown",
                    None,
                    value=_active(gpu, 0x8),
                    children=[
                        leaf("HW Thermal Slowdown", None, _active(gpu, 0x40)),
                        leaf("HW Power Brake Slowdown", None, _active(gpu, 0x80)),
                    ],
                ),
                leaf(None, "clocks_event_reason_hw_slowdown", _active(gpu, 0x8)),
                leaf(None, "clocks_event_reason_hw_thermal_slowdown", _active(gpu, 0x40)),
                leaf(None, "clocks_event_reason_hw_power_brake_slowdown", _active(gpu, 0x80)),
                leaf("Sync Boost", "clocks_event_reason_sync_boost", _active(gpu, 0x10)),
                leaf(
                    "SW Thermal Slowdown",
                    "clocks_event_reason_sw_thermal_slowdown",
                    _active(gpu, 0x20),
                ),
                leaf(
                    "Display Clock Setting",
                    "clocks_event_reason_display_clocks_setting",
                    _active(gpu, 0x100),
                ),
            ),
        ),
        _in(
            "PERFORMANCE",
            group(
                "Clocks Event Reasons Counters",
                "clocks_event_reasons_counters",
                leaf(
                    "SW Power Capping",
                    "clocks_event_reasons_counters_sw_power_cap",
                    _violation_us(s.sw_power_cap_ns),
                ),
                leaf("Sync Boost", "clocks_event_reasons_counters_sync_boost", "0 us"),
                leaf(
                    "SW Thermal Slowdown", "clocks_event_reasons_counters_sw_therm_slowdown", "0 us"
                ),
                leaf(
                    "HW Thermal Slowdown",
                    "clocks_event_reasons_counters_hw_therm_slowdown",
                    _violation_us(s.thermal_violation_ns),
                ),
                leaf(
                    "HW Power Braking",
                    "clocks_event_reasons_counters_hw_power_brake",
                    _violation_us(s.power_brake_ns),
                ),
            ),
        ),
        _in("PERFORMANCE", leaf("Sparse Operation Mode", "sparse_operation_mode", "Disabled")),
        group(
            "FB Memory Usage",
            "fb_memory_usage",
            leaf("Total", "total", _mib(gpu.memory_total_mib)),
            leaf("Reserved", "reserved", _mib(gpu.memory_reserved_mib)),
            leaf("Used", "used", _mib(gpu.memory_used_mib)),
            leaf("Free", "free", _mib(gpu.memory_free_mib)),
            section="MEMORY",
        ),
        group(
            "BAR1 Memory Usage",
            "bar1_memory_usage",
            leaf("Total", "total", _mib(p.bar1_mib)),
            leaf("Used", "used", _mib(bar1_used)),
            leaf("Free", "free", _mib(p.bar1_mib - bar1_used)),
            section="MEMORY",
        ),
        group(
            "Conf Compute Protected Memory Usage",
            "cc_protected_memory_usage",
            leaf("Total", "total", _mib(0)),
            leaf("Used", "used", _mib(0)),
            leaf("Free", "free", _mib(0)),
            section="MEMORY",
        ),
        _in("COMPUTE", leaf("Compute Mode", "compute_mode", gpu.compute_mode)),
        group(
            "Utilization",
            "utilization",
            leaf("GPU", "gpu_util", NA if gpu.mig_enabled else _pct(s.gpu_util)),
            leaf("Memory", "memory_util", NA if gpu.mig_enabled else _pct(s.mem_copy_util)),
            leaf("Encoder", "encoder_util", NA if gpu.mig_enabled else _pct(s.encoder_util)),
            leaf("Decoder", "decoder_util", NA if gpu.mig_enabled else _pct(s.decoder_util)),
            leaf("JPEG", "jpeg_util", NA if gpu.mig_enabled else _pct(0)),
            leaf("OFA", "ofa_util", NA if gpu.mig_enabled else _pct(0)),
            section="UTILIZATION",
        ),
        *_utilization_samples(gpu),
        group(
            "Encoder Stats",
            "encoder_stats",
            leaf("Active Sessions", "session_count", 0),
            leaf("Average FPS", "average_fps", 0),
            leaf("Average Latency", "average_latency", 0),
            section="ENCODER_STATS",
        ),
        group(
            "FBC Stats",
            "fbc_stats",
            leaf("Active Sessions", "session_count", 0),
            leaf("Average FPS", "average_fps", 0),
            leaf("Average Latency", "average_latency", 0),
            section="FBC_STATS",
        ),
        group(
            "DRAM Encryption Mode",
            "dram_encryption_mode",
            leaf("Current", "current_dram_encryption", NA),
            leaf("Pending", "pending_dram_encryption", NA),
        ),
        group(
            "ECC Mode",
            "ecc_mode",
            leaf("Current", "current_ecc", "Enabled" if ecc else NA),
            leaf("Pending", "pending_ecc", "Enabled" if ecc else NA),
            section="ECC",
        ),
        group(
            "ECC Errors",
            "ecc_errors",
            group("Volatile", "volatile", *ecc_scope(s.ecc_sbe_volatile, s.ecc_dbe_volatile)),
            group(
                "Aggregate",
                "aggregate",
                *ecc_scope(s.ecc_sbe_aggregate, s.ecc_dbe_aggregate),
                leaf("SRAM Threshold Exceeded", "sram_threshold_exceeded", "No" if ecc else NA),
            ),
            group(
                "Aggregate Uncorrectable SRAM Sources",
                "aggregate_uncorrectable_sram_sources",
                *ecc_block(
                    ("SRAM L2", "sram_l2"),
                    ("SRAM SM", "sram_sm"),
                    ("SRAM Microcontroller", "sram_microcontroller"),
                    ("SRAM PCIE", "sram_pcie"),
                    ("SRAM Other", "sram_other"),
                ),
            ),
            leaf("Channel Repair Pending", "channel_repair_pending", "No" if ecc else NA),
            leaf("TPC Repair Pending", "tpc_repair_pending", "No" if ecc else NA),
            leaf("Unrepairable Memory", "unrepairable_memory", "No" if ecc else NA),
            section="ECC",
        ),
        group(
            "Retired Pages",
            "retired_pages",
            leaf("Single Bit ECC", None, NA),
            leaf("Double Bit ECC", None, NA),
            leaf("Pending Page Blacklist", None, NA),
            group(
                None,
                "multiple_single_bit_retirement",
                leaf(None, "retired_count", NA),
                leaf(None, "retired_pagelist", NA),
            ),
            group(
                None,
                "double_bit_retirement",
                leaf(None, "retired_count", NA),
                leaf(None, "retired_pagelist", NA),
            ),
            leaf(None, "pending_blacklist", NA),
            leaf(None, "pending_retirement", NA),
            section="PAGE_RETIREMENT",
        ),
        group(
            "Remapped Rows",
            "remapped_rows",
            leaf(
                "Correctable Error", "remapped_row_corr", s.remapped_rows_correctable if ecc else NA
            ),
            leaf("Inactive Correctable Error", "remapped_row_corr_inactive", ecc_count),
            leaf(
                "Uncorrectable Error",
                "remapped_row_unc",
                s.remapped_rows_uncorrectable if ecc else NA,
            ),
            leaf("Inactive Uncorrectable Error", "remapped_row_unc_inactive", ecc_count),
            leaf("Pending", "remapped_row_pending", "No" if ecc else NA),
            leaf(
                "Remapping Failure Occurred",
                "remapped_row_failure",
                ("Yes" if s.row_remap_failure else "No") if ecc else NA,
            ),
            group(
                "Bank Remap Availability Histogram",
                "row_remapper_histogram",
                leaf("Max", "row_remapper_histogram_max", "2560 bank(s)" if ecc else NA),
                leaf("High", "row_remapper_histogram_high", "0 bank(s)" if ecc else NA),
                leaf("Partial", "row_remapper_histogram_partial", "0 bank(s)" if ecc else NA),
                leaf("Low", "row_remapper_histogram_low", "0 bank(s)" if ecc else NA),
                leaf("None", "row_remapper_histogram_none", "0 bank(s)" if ecc else NA),
            ),
            section="ROW_REMAPPER",
        ),
        group(
            "Temperature",
            "temperature",
            leaf("GPU Current Temp", "gpu_temp", f"{s.gpu_temp_c} C"),
            leaf("GPU T.Limit Temp", "gpu_temp_tlimit", f"{s.tlimit_margin_c} C"),
            leaf(
                "GPU Shutdown T.Limit Temp",
                "gpu_temp_max_tlimit_threshold",
                f"{p.temp_max_operating_c - p.temp_shutdown_c} C",
            ),
            leaf(
                "GPU Slowdown T.Limit Temp",
                "gpu_temp_slow_tlimit_threshold",
                f"{p.temp_max_operating_c - p.temp_slowdown_c} C",
            ),
            leaf("GPU Max Operating T.Limit Temp", "gpu_temp_max_gpu_tlimit_threshold", "0 C"),
            leaf("GPU Target Temperature", "gpu_target_temperature", NA),
            leaf("Memory Current Temp", "memory_temp", temp_mem),
            leaf(
                "Memory Max Operating T.Limit Temp",
                "gpu_temp_max_mem_tlimit_threshold",
                "0 C" if p.memory_temp_offset_c else NA,
            ),
            section="TEMPERATURE",
        ),
        group(
            None,
            "supported_gpu_target_temp",
            leaf(None, "gpu_target_temp_min", NA),
            leaf(None, "gpu_target_temp_max", NA),
            section="SUPPORTED_GPU_TARGET_TEMP",
        ),
        group(
            "GPU Power Readings",
            "gpu_power_readings",
            leaf(None, "power_state", f"P{s.pstate}"),
            leaf("Average Power Draw", "average_power_draw", _w(s.power_w)),
            leaf("Instantaneous Power Draw", "instant_power_draw", _w(s.power_w)),
            leaf("Current Power Limit", "current_power_limit", _w(p.power_default_limit_w)),
            leaf("Requested Power Limit", "requested_power_limit", _w(p.power_default_limit_w)),
            leaf("Default Power Limit", "default_power_limit", _w(p.power_default_limit_w)),
            leaf("Min Power Limit", "min_power_limit", _w(p.power_min_limit_w)),
            leaf("Max Power Limit", "max_power_limit", _w(p.power_max_limit_w)),
            section="POWER",
        ),
        *_power_samples(gpu),
        # The driver really prints this label with a trailing blank.
        group(
            "GPU Memory Power Readings ",
            "gpu_memory_power_readings",
            leaf("Average Power Draw", "average_power_draw", mem_power),
            leaf("Instantaneous Power Draw", "instant_power_draw", NA),
            section="POWER",
        ),
        group(
            "Module Power Readings",
            "module_power_readings",
            leaf(None, "power_state", f"P{s.pstate}"),
            *(
                leaf(label, tag, NA)
                for label, tag in (
                    ("Average Power Draw", "average_power_draw"),
                    ("Instantaneous Power Draw", "instant_power_draw"),
                    ("Current Power Limit", "current_power_limit"),
                    ("Requested Power Limit", "requested_power_limit"),
                    ("Default Power Limit", "default_power_limit"),
                    ("Min Power Limit", "min_power_limit"),
                    ("Max Power Limit", "max_power_limit"),
                )
            ),
            section="POWER",
        ),
        _in("POWER_SMOOTHING", leaf("Power Smoothing", "power_smoothing", NA)),
        group(
            "Workload Power Profiles",
            "power_profiles",
            leaf("Requested Profiles", "power_profile_requested_profiles", NA),
            leaf("Enforced Profiles", "power_profile_enforced_profiles", NA),
            section="POWER_PROFILES",
        ),
        group(
            "Clocks",
            "clocks",
            leaf("Graphics", "graphics_clock", _mhz(s.sm_clock_mhz)),
            leaf("SM", "sm_clock", _mhz(s.sm_clock_mhz)),
            leaf("Memory", "mem_clock", _mhz(s.mem_clock_mhz)),
            leaf("Video", "video_clock", _mhz(s.video_clock_mhz)),
            section="CLOCK",
        ),
        group(
            "Applications Clocks",
            "applications_clocks",
            leaf("Graphics", "graphics_clock", _mhz(p.clock_sm_max_mhz)),
            leaf("Memory", "mem_clock", _mhz(p.clock_mem_mhz)),
            section="CLOCK",
        ),
        group(
            "Default Applications Clocks",
            "default_applications_clocks",
            leaf("Graphics", "graphics_clock", _mhz(p.clock_sm_max_mhz)),
            leaf("Memory", "mem_clock", _mhz(p.clock_mem_mhz)),
            section="CLOCK",
        ),
        group(
            "Deferred Clocks", "deferred_clocks", leaf("Memory", "mem_clock", NA), section="CLOCK"
        ),
        group(
            "Max Clocks",
            "max_clocks",
            leaf("Graphics", "graphics_clock", _mhz(p.clock_sm_max_mhz)),
            leaf("SM", "sm_clock", _mhz(p.clock_sm_max_mhz)),
            leaf("Memory", "mem_clock", _mhz(p.clock_mem_mhz)),
            leaf("Video", "video_clock", _mhz(p.clock_video_max_mhz)),
            section="CLOCK",
        ),
        group(
            "Max Customer Boost Clocks",
            "max_customer_boost_clocks",
            leaf("Graphics", "graphics_clock", _mhz(p.clock_sm_max_mhz)),
            section="CLOCK",
        ),
        *_clock_samples(),
        group(
            "Clock Policy",
            "clock_policy",
            leaf("Auto Boost", "auto_boost", NA),
            leaf("Auto Boost Default", "auto_boost_default", NA),
            section="CLOCK",
        ),
        group(
            "Fabric",
            "fabric",
            leaf("State", "state", NA),
            leaf("Status", "status", NA),
            leaf("CliqueId", "cliqueId", NA),
            leaf("ClusterUUID", "clusterUuid", NA),
            group(
                "Health",
                "health",
                leaf("Summary", "summary", NA),
                leaf("Bandwidth", "bandwidth", NA),
                leaf("Route Recovery in progress", "route_recovery_in_progress", NA),
                leaf("Route Unhealthy", "route_unhealthy", NA),
                leaf("Access Timeout Recovery", "access_timeout_recovery", NA),
                leaf("Incorrect Configuration", "incorrect_configuration", NA),
                leaf("Partition Assigned", "partition_assigned", NA),
            ),
        ),
        group(
            None,
            "supported_clocks",
            group(
                None,
                "supported_mem_clock",
                leaf(None, "value", _mhz(p.clock_mem_mhz)),
                *(leaf(None, "supported_graphics_clock", _mhz(c)) for c in graphics),
            ),
            section="SUPPORTED_CLOCKS",
        ),
        group(
            "Supported Clocks",
            None,
            Node(
                "Memory",
                None,
                value=_mhz(p.clock_mem_mhz),
                children=[leaf("Graphics", None, _mhz(c)) for c in graphics],
            ),
            section="SUPPORTED_CLOCKS_TEXT",
        ),
        processes,
        group(None, "accounted_processes", section="ACCOUNTING"),
        group("Capabilities", "capabilities", leaf("EGM", "egm", "disabled")),
    ]
