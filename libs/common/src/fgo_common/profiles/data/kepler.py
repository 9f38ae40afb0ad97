"""Kepler (compute capability 3.7): Tesla K80 (one GK210 of the dual-GPU board)."""

from __future__ import annotations

from fgo_common.profiles.model import GpuProfile

TESLA_K80 = GpuProfile(
    key="k80",
    name="Tesla K80",
    aliases=("Tesla-K80", "K80"),
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
    ecc_supported=True,
    sources={
        "name, memory_mib": "reference chart default gpuMemory 11441 MiB "
        "(one GK210 of a K80 board)",
        "cores, clocks, power, memory": "NVIDIA Tesla K80 datasheet (per GK210: 2496 cores, "
        "562-875 MHz, 5 GHz GDDR5, 300 W per board = ~150 W per GPU)",
        "driver_version": "470 is the last driver branch supporting Kepler",
    },
)
