"""Kepler (compute capability 3.7): Tesla K80, one GK210 of the dual-GPU board.

The K80 is the reference chart's default GPU, so its profile is what an unconfigured pool shows.
"""

from __future__ import annotations

from fgo_common.profiles.data._helpers import sourced
from fgo_common.profiles.model import GpuProfile

_DATASHEET = "NVIDIA Tesla K80 datasheet (per GK210)"

TESLA_K80 = GpuProfile(
    key="k80",
    name="Tesla K80",
    aliases=("K80", "k80", "Tesla-K80", "NVIDIA-Tesla-K80"),
    brand="Tesla",
    architecture="kepler",
    family="kepler",
    compute_capability=(3, 7),
    memory_mib=11441,
    memory_reserved_mib=0,
    memory_bus_width_bits=384,
    memory_type="GDDR5",
    bar1_mib=16384,
    cuda_cores=2496,
    sm_count=13,
    pci_device_id=0x102D10DE,
    pci_subsystem_id=0x106C10DE,
    pcie_generation=3,
    pcie_link_width=16,
    power_idle_w=26.0,
    power_default_limit_w=149.0,
    power_min_limit_w=100.0,
    power_max_limit_w=175.0,
    temp_idle_c=32,
    temp_max_load_c=78,
    temp_slowdown_c=88,
    temp_shutdown_c=93,
    temp_max_operating_c=88,
    memory_temp_offset_c=0,
    clock_sm_idle_mhz=324,
    clock_sm_base_mhz=562,
    clock_sm_max_mhz=875,
    clock_mem_mhz=2505,
    clock_video_max_mhz=540,
    vbios_version="80.21.1B.00.01",
    board_part_number="900-22080-0000-000",
    driver_version="470.256.02",
    cuda_version="11.4",
    nvlink_links=0,
    nvlink_version=0,
    ecc_supported=True,
    fan_count=0,
    sources=sourced(
        ("name memory_mib", "reference chart default pool: gpuProduct Tesla-K80, gpuMemory 11441"),
        (
            "brand architecture family compute_capability",
            "NVML brand Tesla on R470; GK210 is compute capability 3.7 (CUDA programming guide)",
        ),
        (
            "cuda_cores sm_count memory_bus_width_bits memory_type clock_sm_base_mhz "
            "clock_sm_max_mhz clock_mem_mhz",
            f"{_DATASHEET}: 13 SMX x 192 = 2496 cores, 562-875 MHz, 384-bit 5 GHz GDDR5",
        ),
        (
            "power_default_limit_w power_min_limit_w power_max_limit_w",
            f"{_DATASHEET}: 300 W per board = ~150 W per GPU; nvidia-smi shows 149 W, 100-175 W",
        ),
        ("memory_reserved_mib", "R470 nvidia-smi has no Reserved line; 0 keeps Free = Total"),
        (
            "bar1_mib pcie_generation pcie_link_width pci_device_id pci_subsystem_id",
            "public nvidia-smi -q of a K80 (BAR1 16 GiB, 0x102D10DE / 0x106C10DE, gen3 x16)",
        ),
        (
            "power_idle_w temp_idle_c temp_max_load_c clock_sm_idle_mhz clock_video_max_mhz",
            "estimate: typical idle/loaded K80 readings in public nvidia-smi output",
        ),
        (
            "temp_slowdown_c temp_shutdown_c temp_max_operating_c memory_temp_offset_c",
            "public nvidia-smi -q of a K80 (slowdown 88 C, shutdown 93 C; no HBM sensor)",
        ),
        ("vbios_version board_part_number", "public nvidia-smi -q of a K80"),
        (
            "driver_version cuda_version",
            "470 is the last driver branch supporting Kepler; "
            "470.256.02 is its final release (CUDA 11.4)",
        ),
        ("nvlink_links nvlink_version", "Kepler has no NVLink"),
        ("ecc_supported fan_count", f"{_DATASHEET}: ECC, passively cooled (fan N/A)"),
        ("mig_profiles mig_max_gpu_instances", "MIG needs compute capability >= 8.0"),
    ),
)
