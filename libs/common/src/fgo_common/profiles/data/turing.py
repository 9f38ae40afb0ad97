"""Turing (compute capability 7.5): Tesla T4."""

from __future__ import annotations

from fgo_common.profiles.data._common import CUDA_VERSION, DRIVER_SOURCE, DRIVER_VERSION
from fgo_common.profiles.data._helpers import sourced
from fgo_common.profiles.model import GpuProfile

_DATASHEET = "NVIDIA T4 datasheet / TU104 whitepaper"
_SMI = "public nvidia-smi tables of T4 nodes (15360MiB, 70W cap, P8 idle 9-16 W at 24-34 C)"

TESLA_T4 = GpuProfile(
    key="t4",
    name="Tesla T4",
    aliases=("T4", "Tesla-T4", "NVIDIA T4", "NVIDIA-T4"),
    brand="NVIDIA",
    architecture="turing",
    family="turing",
    compute_capability=(7, 5),
    memory_mib=15360,
    memory_reserved_mib=256,
    memory_bus_width_bits=256,
    memory_type="GDDR6",
    bar1_mib=256,
    cuda_cores=2560,
    sm_count=40,
    pci_device_id=0x1EB810DE,
    pci_subsystem_id=0x12A210DE,
    pcie_generation=3,
    pcie_link_width=16,
    power_idle_w=12.0,
    power_default_limit_w=70.0,
    power_min_limit_w=60.0,
    power_max_limit_w=70.0,
    temp_idle_c=30,
    temp_max_load_c=72,
    temp_slowdown_c=93,
    temp_shutdown_c=96,
    temp_max_operating_c=85,
    memory_temp_offset_c=0,
    clock_sm_idle_mhz=300,
    clock_sm_base_mhz=585,
    clock_sm_max_mhz=1590,
    clock_mem_mhz=5001,
    clock_video_max_mhz=1470,
    vbios_version="90.04.96.00.02",
    board_part_number="900-2G183-0000-001",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=0,
    nvlink_version=0,
    ecc_supported=True,
    fan_count=0,
    sources=sourced(
        ("name memory_mib power_default_limit_w fan_count", _SMI),
        (
            "brand architecture",
            "public nvidia-smi -q of a T4 (Product Brand NVIDIA, Product Architecture Turing)",
        ),
        ("family compute_capability", "CUDA programming guide: T4 is 7.5; GFD rule 7.5 => turing"),
        (
            "cuda_cores sm_count memory_bus_width_bits memory_type clock_sm_base_mhz "
            "clock_sm_max_mhz clock_mem_mhz",
            f"{_DATASHEET}: 40 SMs, 2560 cores, 585/1590 MHz, 256-bit GDDR6 at 5001 MHz",
        ),
        (
            "pci_device_id pci_subsystem_id pcie_generation pcie_link_width bar1_mib",
            "public lspci / nvidia-smi -q of a T4 (10de:1eb8, subsystem 10de:12a2, gen3 x16, "
            "256 MiB BAR1)",
        ),
        ("power_min_limit_w power_max_limit_w", "public nvidia-smi -q of a T4 (60-70 W)"),
        ("power_idle_w temp_idle_c", f"estimate: middle of {_SMI}"),
        ("clock_sm_idle_mhz", "public nvidia-smi dmon of an idle T4 (300 MHz, 405 MHz memory)"),
        ("temp_max_load_c", "estimate: passively cooled T4 under sustained load"),
        (
            "temp_slowdown_c temp_shutdown_c temp_max_operating_c",
            "estimate: pre-T.Limit nvidia-smi -q of T4 boards (93/96/85 C)",
        ),
        ("memory_temp_offset_c", "T4 has no memory temperature sensor (nvidia-smi prints N/A)"),
        ("memory_reserved_mib", "estimate: driver-reserved FB on recent drivers for 16 GB GDDR6"),
        ("clock_video_max_mhz vbios_version", "estimate: typical T4 nvidia-smi -q values"),
        ("board_part_number", "NVIDIA T4 product brief: PG183 board, 900-2G183-0000-001"),
        ("driver_version cuda_version", DRIVER_SOURCE),
        ("nvlink_links nvlink_version", "T4 has no NVLink"),
        ("ecc_supported", f"{_DATASHEET}: ECC supported, enabled by default"),
        ("mig_profiles mig_max_gpu_instances", "MIG needs compute capability >= 8.0"),
    ),
)
