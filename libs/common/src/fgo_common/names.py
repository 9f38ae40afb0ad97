"""Every NVIDIA-facing name, one table per upstream version (design principle 7).

Dashboards, schedulers, DeviceClass CEL expressions and autoscalers written for real GPU clusters
match on exact strings: label keys, metric names and their HELP/TYPE lines, the order of labels on
a series, resource names, DRA attribute names. They live here and nowhere else, keyed by the
upstream version they were read from, so following an upstream rename is a one-line change here
plus a golden test. Behaviour (which value a label gets) stays in the services; only names (and
the few fixed strings upstream prints, such as XID messages) are tabled.

Sources: ../shared/spec/peers-and-standards.md §3.1 (GFD, k8s-device-plugin 1b826acc6), §3.2
(GPU Operator), §3.3 (device plugin), §3.5 (DRA driver sigs.k8s.io/dra-driver-nvidia-gpu
95932046), §3.7 (dcgm-exporter d5e5f51 / release 4.5.3-4.8.2).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

# --------------------------------------------------------------------------------------------
# Kubernetes extended resources (device plugin)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResourceNames:
    """Extended resource names the NVIDIA device plugin advertises."""

    version: str
    gpu: str = "nvidia.com/gpu"
    gpu_shared: str = "nvidia.com/gpu.shared"  # time-slicing with renameByDefault
    mig_prefix: str = "nvidia.com/mig-"

    def mig(self, profile: str) -> str:
        """``nvidia.com/mig-<profile>``; ``+`` (media extensions) becomes ``.``."""
        return self.mig_prefix + mig_resource_suffix(profile)


def mig_resource_suffix(profile: str) -> str:
    """``1g.10gb+me`` -> ``1g.10gb.me``: the form used in resource names and label keys."""
    return profile.removeprefix("MIG ").replace("+", ".")


RESOURCES: dict[str, ResourceNames] = {"k8s-device-plugin@1b826acc6": ResourceNames("1b826acc6")}
RESOURCE_NAMES = RESOURCES["k8s-device-plugin@1b826acc6"]

# --------------------------------------------------------------------------------------------
# GPU feature discovery node labels
# --------------------------------------------------------------------------------------------

# Per-MIG-device attribute label suffixes, in the order GFD's MIG device reports them.
MIG_ATTRIBUTE_SUFFIXES: tuple[str, ...] = (
    "memory",
    "multiprocessors",
    "slices.gi",
    "slices.ci",
    "engines.copy",
    "engines.decoder",
    "engines.encoder",
    "engines.jpeg",
    "engines.ofa",
)


@dataclass(frozen=True, slots=True)
class GfdLabels:
    """Node label keys written by GPU feature discovery (and the two the GPU Operator adds)."""

    version: str
    # Resource-scoped keys are "<resource>.<suffix>" (``nvidia.com/gpu.product``,
    # ``nvidia.com/mig-1g.10gb.count``); these are the suffixes.
    product: str = "product"
    count: str = "count"
    memory: str = "memory"
    replicas: str = "replicas"
    sharing_strategy: str = "sharing-strategy"
    family: str = "family"
    compute_major: str = "compute.major"
    compute_minor: str = "compute.minor"
    # Node-scoped keys.
    machine: str = "nvidia.com/gpu.machine"
    mode: str = "nvidia.com/gpu.mode"
    clique: str = "nvidia.com/gpu.clique"
    driver_major: str = "nvidia.com/cuda.driver-version.major"
    driver_minor: str = "nvidia.com/cuda.driver-version.minor"
    driver_revision: str = "nvidia.com/cuda.driver-version.revision"
    driver_full: str = "nvidia.com/cuda.driver-version.full"
    runtime_major: str = "nvidia.com/cuda.runtime-version.major"
    runtime_minor: str = "nvidia.com/cuda.runtime-version.minor"
    runtime_full: str = "nvidia.com/cuda.runtime-version.full"
    # Deprecated duplicates GFD still writes.
    old_driver_major: str = "nvidia.com/cuda.driver.major"
    old_driver_minor: str = "nvidia.com/cuda.driver.minor"
    old_driver_rev: str = "nvidia.com/cuda.driver.rev"
    old_runtime_major: str = "nvidia.com/cuda.runtime.major"
    old_runtime_minor: str = "nvidia.com/cuda.runtime.minor"
    mig_capable: str = "nvidia.com/mig.capable"
    mig_strategy: str = "nvidia.com/mig.strategy"
    mps_capable: str = "nvidia.com/mps.capable"
    vgpu_present: str = "nvidia.com/vgpu.present"
    timestamp: str = "nvidia.com/gfd.timestamp"
    # Written by the GPU Operator, not GFD, but selected on by the same DaemonSets.
    gpu_present: str = "nvidia.com/gpu.present"
    # Product name separator parts GFD joins with "-".
    mig_product_marker: str = "MIG"
    mig_invalid_marker: str = "INVALID"
    # appended to gpu.product when a resource is shared under its own name (time-slicing/MPS)
    shared_product_marker: str = "SHARED"
    shared_marker: str = "SHARED"
    mig_attribute_suffixes: tuple[str, ...] = MIG_ATTRIBUTE_SUFFIXES

    def key(self, resource: str, suffix: str) -> str:
        """``<resource>.<suffix>``, e.g. ``nvidia.com/gpu.product``."""
        return f"{resource}.{suffix}"


GFD: dict[str, GfdLabels] = {"k8s-device-plugin@1b826acc6": GfdLabels("1b826acc6")}
GFD_LABELS = GFD["k8s-device-plugin@1b826acc6"]

# CUDA compute capability major -> GFD `nvidia.com/gpu.family` (minor splits 7.x and 8.x).
_FAMILY_BY_MAJOR: dict[int, str] = {
    1: "tesla",
    2: "fermi",
    3: "kepler",
    5: "maxwell",
    6: "pascal",
    9: "hopper",
    10: "blackwell",
    12: "blackwell",
    13: "rubin",
}


def gpu_family(major: int, minor: int) -> str:
    """GFD's architecture family for a compute capability (``undefined`` when unknown)."""
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ampere" if minor < 9 else "ada-lovelace"
    return _FAMILY_BY_MAJOR.get(major, "undefined")


_GFD_SANITISE = re.compile(r"[^A-Za-z0-9\-_. ]")


def gfd_sanitise(text: str) -> str:
    """GFD's product-name rule: drop characters outside ``[A-Za-z0-9-_. ]``, then join the
    whitespace-separated words with ``-`` ("NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3")."""
    return "-".join(_GFD_SANITISE.sub("", text).split())


# Labels our own simulator sets next to GFD's (the reference sets it; users select on it).
FAKE_GPU_LABEL = "run.ai/fake.gpu"

# --------------------------------------------------------------------------------------------
# GPU Operator node labels
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuOperatorLabels:
    version: str
    deploy_prefix: str = "nvidia.com/gpu.deploy."  # + dcgm-exporter, device-plugin, ...
    mig_config: str = "nvidia.com/mig.config"
    mig_config_state: str = "nvidia.com/mig.config.state"
    device_plugin_config: str = "nvidia.com/device-plugin.config"
    nfd_pci_present: str = "feature.node.kubernetes.io/pci-10de.present"

    def deploy(self, operand: str) -> str:
        return self.deploy_prefix + operand


GPU_OPERATOR_LABELS = GpuOperatorLabels("gpu-operator")

# --------------------------------------------------------------------------------------------
# NVIDIA DRA driver (gpu.nvidia.com)
# --------------------------------------------------------------------------------------------


_DRA_NAME_CHARS = re.compile(r"[^a-z0-9\-.]")


@dataclass(frozen=True, slots=True)
class DraNames:
    """Driver, DeviceClass, device and attribute names of the NVIDIA DRA GPU driver."""

    version: str
    driver: str = "gpu.nvidia.com"
    compute_domain_driver: str = "compute-domain.nvidia.com"
    device_class_gpu: str = "gpu.nvidia.com"
    device_class_mig: str = "mig.nvidia.com"
    device_class_vfio: str = "vfio.gpu.nvidia.com"
    # Attributes (qualified in CEL as device.attributes['gpu.nvidia.com'].<name>).
    attr_type: str = "type"
    attr_uuid: str = "uuid"
    attr_parent_uuid: str = "parentUUID"
    attr_profile: str = "profile"
    attr_product_name: str = "productName"
    attr_brand: str = "brand"
    attr_architecture: str = "architecture"
    attr_cuda_compute_capability: str = "cudaComputeCapability"
    attr_driver_version: str = "driverVersion"
    attr_cuda_driver_version: str = "cudaDriverVersion"
    attr_addressing_mode: str = "addressingMode"
    # Not NVIDIA's: run-ai/fake-gpu-operator 0.2 publishes the product name as `model`; kept
    # next to productName so selectors written for the reference still match ("" = off).
    attr_model: str = "model"
    # Kubernetes standard attributes (fully qualified).
    attr_pci_bus_id: str = "resource.kubernetes.io/pciBusID"
    attr_pcie_root: str = "resource.kubernetes.io/pcieRoot"
    attr_numa_node: str = "resource.kubernetes.io/numaNode"
    # Only emitted when emulating the releases that had them ("" = not in this version).
    attr_index: str = ""
    attr_minor: str = ""
    attr_legacy_pcie_bus_id: str = ""
    # Values of the `type` attribute.
    type_gpu: str = "gpu"
    type_mig: str = "mig"
    type_vfio: str = "vfio"
    # Capacities.
    cap_memory: str = "memory"
    cap_multiprocessors: str = "multiprocessors"
    cap_copy_engines: str = "copyEngines"
    cap_decoders: str = "decoders"
    cap_encoders: str = "encoders"
    cap_jpeg_engines: str = "jpegEngines"
    cap_ofa_engines: str = "ofaEngines"
    cap_memory_slice_prefix: str = "memorySlice"  # + slice index
    counter_memory_slice_prefix: str = "memory-slice-"  # + slice index
    # Device taint keys (under the driver's domain) the driver sets on NVML health events:
    # TaintKeyXID (value: the XID code) and TaintKeyGPULost.
    taint_xid: str = "xid"
    taint_gpu_lost: str = "gpu-lost"

    def gpu_device_name(self, minor: int) -> str:
        return f"gpu-{minor}"

    def mig_device_name(self, minor: int, profile: str, gi_profile_id: int, start: int) -> str:
        """``gpu-<minor>-mig-<profile>-<giProfileId>-<placementStart>``, the profile lower-cased,
        characters outside ``[a-z0-9-.]`` turned into ``-`` and dots dropped, as the driver does
        (``1g.10gb`` -> ``1g10gb``, ``1g.10gb+me`` -> ``1g10gb-me``)."""
        compact = _DRA_NAME_CHARS.sub("-", profile.removeprefix("MIG ").lower()).replace(".", "")
        return f"gpu-{minor}-mig-{compact}-{gi_profile_id}-{start}"

    def counter_set_name(self, minor: int) -> str:
        return f"gpu-{minor}-counter-set"


DRA: dict[str, DraNames] = {
    "0.4": DraNames("0.4"),
    "25.8": DraNames("25.8", attr_legacy_pcie_bus_id="pcieBusID"),
    "25.3": DraNames("25.3", attr_index="index", attr_minor="minor",
                     attr_legacy_pcie_bus_id="pcieBusID"),
}  # fmt: skip
DRA_NAMES = DRA["0.4"]

# --------------------------------------------------------------------------------------------
# dcgm-exporter metrics
# --------------------------------------------------------------------------------------------

FieldKind = Literal["gauge", "counter", "label"]
ValueType = Literal["int", "float"]


@dataclass(frozen=True, slots=True)
class DcgmField:
    """One row of a dcgm-exporter counters CSV: the DCGM field, its Prometheus type and HELP.

    ``value_type`` is the DCGM field's storage type; dcgm-exporter prints INT64 fields with
    ``%d`` and DOUBLE fields with ``%f`` (``701.411000``), so it decides the sample text.
    """

    name: str
    kind: FieldKind
    help: str
    value_type: ValueType = "int"


def _f(name: str, kind: FieldKind, help_text: str, value_type: ValueType = "int") -> DcgmField:
    return DcgmField(name, kind, help_text, value_type)


# The default counters (dcgm-exporter's etc/default-counters.csv as the GPU Operator ships it,
# dcp-metrics-included.csv), in file order. HELP texts are the CSV's third column, verbatim.
_DEFAULT_COUNTERS_4_5: tuple[DcgmField, ...] = (
    _f("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    _f("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    _f("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
    _f("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    _f("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", "float"),
    _f("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
       "Total energy consumption since boot (in mJ)."),
    _f("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries."),
    _f("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    _f("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    _f("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %)."),
    _f("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %)."),
    _f("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    _f("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    _f("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    _f("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB)."),
    _f("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter",
       "Total number of NVLink bandwidth counters for all lanes."),
    _f("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "vGPU License status"),
    _f("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
       "Number of remapped rows for uncorrectable errors"),
    _f("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter",
       "Number of remapped rows for correctable errors"),
    _f("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed"),
    _f("DCGM_FI_DRIVER_VERSION", "label", "Driver Version"),
    _f("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.",
       "float"),
    _f("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge",
       "Ratio of cycles the tensor (HMMA) pipe is active.", "float"),
    _f("DCGM_FI_PROF_DRAM_ACTIVE", "gauge",
       "Ratio of cycles the device memory interface is active sending or receiving data.",
       "float"),
    _f("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge",
       "The rate of data transmitted over the PCIe bus - including both protocol headers and "
       "data payloads - in bytes per second."),
    _f("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge",
       "The rate of data received over the PCIe bus - including both protocol headers and data "
       "payloads - in bytes per second."),
)  # fmt: skip

# Fields commented out in the default file (or valid DCGM fields users add to a custom CSV).
# HELP texts of the commented rows are the CSV's; the last four appear only in custom CSVs, so
# their HELP is ours, written in the same style.
_OPTIONAL_COUNTERS_4_5: tuple[DcgmField, ...] = (
    _f("DCGM_FI_PROF_SM_ACTIVE", "gauge",
       "The ratio of cycles an SM has at least 1 warp assigned.", "float"),
    _f("DCGM_FI_PROF_SM_OCCUPANCY", "gauge", "The ratio of number of warps resident on an SM.",
       "float"),
    _f("DCGM_FI_PROF_PIPE_FP16_ACTIVE", "gauge", "Ratio of cycles the fp16 pipes are active.",
       "float"),
    _f("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter",
       "Total number of single-bit volatile ECC errors."),
    _f("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter",
       "Total number of double-bit volatile ECC errors."),
    _f("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter",
       "Total number of single-bit persistent ECC errors."),
    _f("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter",
       "Total number of double-bit persistent ECC errors."),
    _f("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB)."),
    _f("DCGM_FI_DEV_FB_USED_PERCENT", "gauge", "Percentage used of Frame Buffer.", "float"),
    _f("DCGM_FI_DEV_PSTATE", "gauge", "Performance state (P-State) 0-15. 0=highest"),
    _f("DCGM_FI_DEV_POWER_MGMT_LIMIT", "gauge", "Power management limit (in W).", "float"),
    # Violation counters: commented rows of dcp-metrics-included.csv at 4.5.x. DCGM 4 reports
    # them in nanoseconds (dcgm_fields.h: "Power Violation time in ns"); DCGM 3 said usec.
    _f("DCGM_FI_DEV_POWER_VIOLATION", "counter",
       "Throttling duration due to power constraints (in ns)."),
    _f("DCGM_FI_DEV_THERMAL_VIOLATION", "counter",
       "Throttling duration due to thermal constraints (in ns)."),
    _f("DCGM_FI_DEV_SYNC_BOOST_VIOLATION", "counter",
       "Throttling duration due to sync-boost constraints (in ns)."),
    _f("DCGM_FI_DEV_BOARD_LIMIT_VIOLATION", "counter",
       "Throttling duration due to board limit constraints (in ns)."),
    _f("DCGM_FI_DEV_LOW_UTIL_VIOLATION", "counter",
       "Throttling duration due to low utilization (in ns)."),
    _f("DCGM_FI_DEV_RELIABILITY_VIOLATION", "counter",
       "Throttling duration due to reliability constraints (in ns)."),
    # DCGM field 112 is in no shipped CSV; it appears only in custom ones, under either name
    # (DCGM renamed it; the old name stays as a deprecated alias). HELP is ours, in the words
    # of dcgm_fields.h's comment on the field.
    _f("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge",
       "Current clock event reasons (bitmask of DCGM_CLOCKS_EVENT_REASON_*)."),
    _f("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge",
       "Current clock throttle reasons (bitmask of DCGM_CLOCKS_THROTTLE_REASON_*)."),
    # Exporter-computed metrics (not DCGM fields). 4.5.x has no CSV row for them; the HELP
    # texts are the commented rows of default-counters.csv on main (7ad5832).
    _f("DCGM_EXP_CLOCK_EVENTS_COUNT", "gauge",
       "Clock events observed during the configured time window."),
    # Older dcgm-exporter tests and CSVs word it "Count of XID Errors within user-specified time
    # window (see xid-count-window-size param)."; the row on main is the one kept here.
    _f("DCGM_EXP_XID_ERRORS_COUNT", "gauge",
       "XID errors observed during the configured time window."),
    _f("DCGM_EXP_GPU_HEALTH_STATUS", "gauge", "Current DCGM-reported GPU health status."),
)  # fmt: skip

# DCGM clock event reason bits (dcgm_fields.h DCGM_CLOCKS_EVENT_REASON_*, equal to NVML's
# nvmlClocksEventReason*), with the `clock_event` label value dcgm-exporter's
# DCGM_EXP_CLOCK_EVENTS_COUNT collector prints for each (clock_events_collector.go).
CLOCK_EVENT_LABEL_VALUES: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "clocks_setting"),
    (0x004, "power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal"),
    (0x040, "hw_thermal"),
    (0x080, "hw_power_brake"),
    (0x100, "display_clocks"),
)

# DCGM_EXP_GPU_HEALTH_STATUS: one series per GPU per health watch system, in the order of
# dcgm-exporter's gpuHealthChecks; the value is DCGM's dcgmHealthWatchResult_t.
HEALTH_WATCH_SYSTEMS: tuple[str, ...] = (
    "PCIE", "NVLINK", "PMU", "MCU", "MEM", "SM", "INFOROM", "THERMAL", "POWER", "DRIVER",
)  # fmt: skip
HEALTH_RESULT_PASS = 0
HEALTH_RESULT_WARN = 10
HEALTH_RESULT_FAIL = 20
# dcgmError_t names dcgm-exporter prints in `health_error_code` (healthCheckErrorToString).
HEALTH_FR_OK = "DCGM_FR_OK"
HEALTH_FR_XID_ERROR = "DCGM_FR_XID_ERROR"
HEALTH_FR_VOLATILE_DBE = "DCGM_FR_VOLATILE_DBE_DETECTED"
HEALTH_FR_VOLATILE_SBE = "DCGM_FR_VOLATILE_SBE_DETECTED"
HEALTH_FR_UNCONTAINED = "DCGM_FR_UNCONTAINED_ERROR"
HEALTH_FR_ROW_REMAP_FAILURE = "DCGM_FR_ROW_REMAP_FAILURE"
HEALTH_FR_PCI_REPLAY_RATE = "DCGM_FR_PCI_REPLAY_RATE"
HEALTH_FR_THROTTLE_THERMAL = "DCGM_FR_CLOCK_THROTTLE_THERMAL"
HEALTH_FR_THROTTLE_POWER = "DCGM_FR_CLOCK_THROTTLE_POWER"

# dcgm-exporter's XID text table (internal/pkg/collector/xid_errors.go), indexed by XID code;
# codes beyond it print UNKNOWN_XID_MESSAGE. Copied per pinned version: never guess a string.
_XID_MESSAGES_4_5: tuple[str, ...] = (
    "No Error",
    *("Invalid or corrupted push buffer stream",) * 4,  # 1-4
    "Unused",  # 5
    "Invalid or corrupted push buffer stream",
    "Invalid or corrupted push buffer address",
    "GPU stopped processing",
    "Driver error programming GPU",
    "Unused",  # 10
    "Invalid or corrupted push buffer stream",
    "Driver error handling GPU exception",
    "Graphics Engine Exception",
    "Unused",
    "Unused",  # 15
    "Display engine hung",
    "Unused",
    "Bus mastering disabled in PCI Config Space",
    "Display Engine error",
    "Invalid or corrupted Mpeg push buffer",  # 20
    "Invalid or corrupted Motion Estimation push buffer",
    "Invalid or corrupted Video Processor push buffer",
    "Unused",
    "GPU semaphore timeout",
    "Invalid or illegal push buffer stream",  # 25
    "Framebuffer timeout",
    "Video processor exception",
    "Video processor exception",
    "Video processor exception",
    "GPU semaphore access error",  # 30
    "GPU memory page fault",
    "Invalid or corrupted push buffer stream",
    "Internal micro-controller error",
    "Video processor exception",
    "Video processor exception",  # 35
    "Video processor exception",
    "Driver firmware error",
    "Driver firmware error",
    "Unused",
    "Unused",  # 40
    "Unused",
    "Video processor exception",
    "GPU stopped processing",
    "Graphics Engine fault during context switch",
    "Preemptive cleanup, due to previous errors -- Most likely to see when running multiple cuda",
    "GPU stopped processing",  # 46
    "Video processor exception",
    "Double Bit ECC Error",
    *("Unused",) * 5,  # 49-53
    "Auxiliary power is not connected to the GPU board",
    "Unused",  # 55
    "Display Engine error",
    "Error programming video memory interface",
    "Unstable video memory interface detected",
    "Internal micro-controller error",
    "Video processor exception",  # 60
    "Internal micro-controller breakpoint/warning",
    "Internal micro-controller halt",
    "ECC page retirement or row remapping recording event",
    "ECC page retirement or row remapper recording failure",
    "Video processor exception",  # 65
    "Illegal access by driver",
    "Illegal access by driver",
    "NVDEC0 Exception",
    "Graphics Engine class error",
    "CE3: Unknown Error",  # 70
    "CE4: Unknown Error",
    "CE5: Unknown Error",
    "NVENC2 Error",
    "NVLINK Error",
    "CE6: Unknown Error",  # 75
    "CE7: Unknown Error",
    "CE8: Unknown Error",
    "vGPU Start Error",
    "GPU has fallen off the bus",
    "Corrupted data sent to GPU",  # 80
    "VGA Subsystem Error",
    "NVJPG0 Error",
    "NVDEC1 Error",
    "NVDEC2 Error",
    "CE9: Unknown Error",  # 85
    "OFA Exception",
    "Reserved",
    "NVDEC3 Error",
    "NVDEC4 Error",
    "Reserved",  # 90
    "Reserved",
    "High single-bit ECC error rate",
    "Non-fatal violation of provisioned InfoROM wear limit",
    "Contained ECC error",
    "Uncontained ECC error",  # 95
    "NVDEC5 Error",
    "NVDEC6 Error",
    "NVDEC7 Error",
    "NVJPG1 Error",
    "NVJPG2 Error",  # 100
    "NVJPG3 Error",
    "NVJPG4 Error",
    "NVJPG5 Error",
    "NVJPG6 Error",
    "NVJPG7 Error",  # 105
    "SMBPBI Test Message",
    "SMBPBI Test Message Silent",
    "Reserved",
    "Context Switch Timeout Error",
    "Security Fault Error",  # 110
    "Display Bundle Error Event",
    "Display Supervisor Error",
    "DP Link Training Error",
    "Display Pipeline Underflow Error",
    "Display Core Channel Error",  # 115
    "Display Window Channel Error",
    "Display Cursor Channel Error",
    "Display Pixel Pipeline Error",
    "GSP RPC Timeout",
    "GSP Error",  # 120
    "C2C Link Error",
    "SPI PMU RPC Read Failure",
    "SPI PMU RPC Write Failure",
    "SPI PMU RPC Erase Failure",
    "Inforom FS Failure",  # 125
    *(f"Robust Channel CE{n} Error" for n in range(10, 20)),  # 126-135
    "ALI Training Fail",  # 136
    "NVLink Privilege Error",
    "Robust Channel DLA Error",
    "Robust Channel OFA1 Error",
    "Unrecovered ECC Error",  # 140
    "Robust Channel Fast Path Error",
    "Robust Channel NVENVC3 Error",
    "GPU Initialization Failure",
    "NVLINK: Saw Error",
    "NVLINK: RLW Error",  # 145
    "NVLINK: TLW Error",
    "NVLINK: TREX Error",
    "NVLINK: NVLPW_CTRL Error",
    "NVLINK: NETIR Error",
    "NVLINK: MSE Error",  # 150
    "Robust Channel Key rotation Error",
    "Robust Channel DLA SMMU Error",
    "Robust Channel DLA timeout Error",
    "GPU Recovery Action Changed",
    "NVLINK: SW Defined Error",  # 155
    "Resource Retirement Event",
    "Resource Retirement Failure",
    "GPU Fatal Timeout",
    "Robust Channel CHI Non-Data Error",
    "Channel Retirement Event",  # 160
    "Channel Retirement Failure",
    "Power Smoothing HW Circuitry Reengaged",
    "Power Smoothing HW Circuitry Disengaged",
    "Power Smoothing HW Circuitry Low Lifetime",
    "Power Smoothing HW Circuitry Lifetime Exhausted",  # 165
    "NVLINK Secure Crypto Error",
    "PCIE Fatal Timeout",
    "Reduced GPU Memory Capacity (Errors found in write protection region)",
    "Internal micro-controller halt",
    "NVLINK: Interrupt seen in CC mode",  # 170
    "Uncorrectable DRAM Error",
    "Uncorrectable SRAM Error",  # 172
)


@dataclass(frozen=True, slots=True)
class DcgmExporterNames:
    """Metric names, HELP/TYPE, label names and label order of one dcgm-exporter version.

    Label order on a GPU series (its Go template; maps render in sorted key order):
    ``gpu, UUID, pci_bus_id, device, modelName, [GPU_I_PROFILE, GPU_I_ID], Hostname,
    <label-type fields sorted>, <attributes sorted: container, err_code, err_msg, namespace,
    pod, pod_uid>``.
    """

    version: str
    counters: tuple[DcgmField, ...]
    optional_counters: tuple[DcgmField, ...]
    xid_messages: tuple[str, ...]
    unknown_xid_message: str = "Unknown Error"
    gpu: str = "gpu"
    uuid: str = "UUID"
    pci_bus_id: str = "pci_bus_id"
    device: str = "device"
    model_name: str = "modelName"
    mig_profile: str = "GPU_I_PROFILE"
    mig_instance: str = "GPU_I_ID"
    hostname: str = "Hostname"
    container: str = "container"
    namespace: str = "namespace"
    pod: str = "pod"
    pod_uid: str = "pod_uid"
    err_code: str = "err_code"
    err_msg: str = "err_msg"
    # Labels of the exporter-computed metrics (collector/const.go, clock_events_collector.go,
    # xid_collector.go, gpu_health_collector.go).
    clock_event: str = "clock_event"
    window_size: str = "window_size_in_ms"
    health_watch: str = "health_watch"
    health_error_code: str = "health_error_code"
    clock_events_count: str = "DCGM_EXP_CLOCK_EVENTS_COUNT"
    xid: str = "xid"  # xid_collector.go: the XID code of DCGM_EXP_XID_ERRORS_COUNT
    xid_errors_count: str = "DCGM_EXP_XID_ERRORS_COUNT"
    gpu_health_status: str = "DCGM_EXP_GPU_HEALTH_STATUS"
    device_prefix: str = "nvidia"  # device="nvidia<index>"
    listen_port: int = 9400
    service_name: str = "nvidia-dcgm-exporter"

    def field(self, name: str) -> DcgmField:
        for f in (*self.counters, *self.optional_counters):
            if f.name == name:
                return f
        raise KeyError(name)

    def xid_message(self, code: int) -> str:
        if 0 <= code < len(self.xid_messages):
            return self.xid_messages[code]
        return self.unknown_xid_message


_DCGM_4_5 = DcgmExporterNames(
    version="4.5.3-4.8.2",
    counters=_DEFAULT_COUNTERS_4_5,
    optional_counters=_OPTIONAL_COUNTERS_4_5,
    xid_messages=_XID_MESSAGES_4_5,
)

DCGM_EXPORTER: dict[str, DcgmExporterNames] = {
    # Last release: the label is still `Hostname`.
    "4.5.3-4.8.2": _DCGM_4_5,
    # Unreleased main (d5e5f51, 2026-05-12, PR #655) renamed `Hostname` to `hostname`.
    "main-d5e5f51": dataclasses.replace(_DCGM_4_5, version="main-d5e5f51", hostname="hostname"),
}
DCGM_EXPORTER_DEFAULT_VERSION = "4.5.3-4.8.2"
DCGM_NAMES = DCGM_EXPORTER[DCGM_EXPORTER_DEFAULT_VERSION]
