"""Ampere: A10G (compute capability 8.6) and A100 SXM4 40GB / 80GB (8.0, MIG-capable)."""

from __future__ import annotations

from fgo_common.profiles.data._common import CUDA_VERSION, DRIVER_SOURCE, DRIVER_VERSION
from fgo_common.profiles.data._helpers import mig, sourced
from fgo_common.profiles.model import GpuProfile, MigProfile

_A10G_Q = "public nvidia-smi -q of an AWS A10G (driver 535.247.01)"
_A10G_SMI = "public nvidia-smi tables of A10G nodes (23028MiB, 300W cap, P8 idle 9-11 W, fan 0%)"

NVIDIA_A10G = GpuProfile(
    key="a10g",
    name="NVIDIA A10G",
    aliases=("A10G", "NVIDIA-A10G"),
    brand="NVIDIA",
    architecture="ampere",
    family="ampere",
    compute_capability=(8, 6),
    memory_mib=23028,
    memory_reserved_mib=304,
    memory_bus_width_bits=384,
    memory_type="GDDR6",
    bar1_mib=32768,
    cuda_cores=10240,
    sm_count=80,
    pci_device_id=0x223710DE,
    pci_subsystem_id=0x152F10DE,
    pcie_generation=4,
    pcie_link_width=16,
    power_idle_w=10.0,
    power_default_limit_w=300.0,
    power_min_limit_w=100.0,
    power_max_limit_w=300.0,
    temp_idle_c=24,
    temp_max_load_c=65,
    temp_slowdown_c=95,
    temp_shutdown_c=98,
    temp_max_operating_c=88,
    memory_temp_offset_c=0,
    clock_sm_idle_mhz=210,
    clock_sm_base_mhz=885,
    clock_sm_max_mhz=1710,
    clock_mem_mhz=6251,
    clock_video_max_mhz=1500,
    vbios_version="94.02.75.00.01",
    board_part_number="900-2G133-A840-000",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=0,
    nvlink_version=0,
    ecc_supported=True,
    fan_count=1,
    gpu_part_number="2237-892-A1",
    inforom_image_version="G133.0210.00.04",
    sources=sourced(
        (
            "name brand architecture memory_mib memory_reserved_mib bar1_mib pci_device_id "
            "pci_subsystem_id pcie_generation pcie_link_width power_default_limit_w "
            "power_min_limit_w power_max_limit_w temp_slowdown_c temp_shutdown_c "
            "temp_max_operating_c clock_sm_max_mhz clock_mem_mhz clock_video_max_mhz "
            "vbios_version board_part_number gpu_part_number inforom_image_version "
            "ecc_supported memory_temp_offset_c",
            _A10G_Q,
        ),
        ("fan_count", f"{_A10G_Q}: Fan Speed 0 % (a fan is reported, unlike passive boards)"),
        ("power_idle_w temp_idle_c", f"estimate: middle of {_A10G_SMI}"),
        ("clock_sm_idle_mhz", "estimate: Ampere P8 idle clock (210 MHz on the A100 captures)"),
        ("temp_max_load_c", "estimate: actively cooled 300 W board under sustained load"),
        ("family compute_capability", "CUDA programming guide: A10/A10G are 8.6"),
        (
            "cuda_cores sm_count",
            "CUDA device query on AWS g5 (A10G: GA102, compute capability 8.6, 80 SMs) x 128 "
            "FP32 cores per GA10x SM",
        ),
        (
            "memory_bus_width_bits memory_type clock_sm_base_mhz",
            "NVIDIA A10 datasheet (A10G is its AWS variant): 384-bit GDDR6; base clock "
            "885 MHz is the A10's, an estimate for the A10G",
        ),
        ("driver_version cuda_version", DRIVER_SOURCE),
        ("nvlink_links nvlink_version", "A10G has no NVLink"),
        ("mig_profiles mig_max_gpu_instances", "NVIDIA MIG user guide: A10/A10G not MIG-capable"),
    ),
)

# nvidia-smi `mig -lgip` of A100-SXM4-40GB as printed in the NVIDIA MIG user guide (and
# reproduced in public transcripts): memory is the printed GiB x 1024; placements from the
# guide's `mig -lgipp` (19/20: {0..6}:1, 15: {0,2,4,6}:2, 14: {0,2,4}:2, 9: {0,4}:4,
# 5: {0}:4, 0: {0}:8).
# fmt: off
A100_40GB_MIG: tuple[MigProfile, ...] = (
    mig("1g.5gb", gi=19, nvml_index=0, count=7, memory_mib=4864, memory_slices=1,
        compute_slices=1, sm=14, ce=1, dec=0, enc=0, jpg=0, ofa=0, starts=range(7)),
    mig("1g.5gb+me", gi=20, nvml_index=7, count=1, memory_mib=4864, memory_slices=1,
        compute_slices=1, sm=14, ce=1, dec=1, enc=0, jpg=1, ofa=1, starts=range(7)),
    mig("1g.10gb", gi=15, nvml_index=9, count=4, memory_mib=9856, memory_slices=2,
        compute_slices=1, sm=14, ce=1, dec=1, enc=0, jpg=0, ofa=0, starts=(0, 2, 4, 6)),
    mig("2g.10gb", gi=14, nvml_index=1, count=3, memory_mib=9856, memory_slices=2,
        compute_slices=2, sm=28, ce=2, dec=1, enc=0, jpg=0, ofa=0, starts=(0, 2, 4)),
    mig("3g.20gb", gi=9, nvml_index=2, count=2, memory_mib=19968, memory_slices=4,
        compute_slices=3, sm=42, ce=3, dec=2, enc=0, jpg=0, ofa=0, starts=(0, 4)),
    mig("4g.20gb", gi=5, nvml_index=3, count=1, memory_mib=19968, memory_slices=4,
        compute_slices=4, sm=56, ce=4, dec=2, enc=0, jpg=0, ofa=0, starts=(0,)),
    mig("7g.40gb", gi=0, nvml_index=4, count=1, memory_mib=40192, memory_slices=8,
        compute_slices=7, sm=98, ce=7, dec=5, enc=0, jpg=1, ofa=1, starts=(0,)),
)

# A100-SXM4-80GB: several public `mig -lgip` transcripts agree on these rows (9.50 / 19.50 /
# 39.25 / 79.00 GiB); same engines and placements as the 40GB part.
A100_80GB_MIG: tuple[MigProfile, ...] = (
    mig("1g.10gb", gi=19, nvml_index=0, count=7, memory_mib=9728, memory_slices=1,
        compute_slices=1, sm=14, ce=1, dec=0, enc=0, jpg=0, ofa=0, starts=range(7)),
    mig("1g.10gb+me", gi=20, nvml_index=7, count=1, memory_mib=9728, memory_slices=1,
        compute_slices=1, sm=14, ce=1, dec=1, enc=0, jpg=1, ofa=1, starts=range(7)),
    mig("1g.20gb", gi=15, nvml_index=9, count=4, memory_mib=19968, memory_slices=2,
        compute_slices=1, sm=14, ce=1, dec=1, enc=0, jpg=0, ofa=0, starts=(0, 2, 4, 6)),
    mig("2g.20gb", gi=14, nvml_index=1, count=3, memory_mib=19968, memory_slices=2,
        compute_slices=2, sm=28, ce=2, dec=1, enc=0, jpg=0, ofa=0, starts=(0, 2, 4)),
    mig("3g.40gb", gi=9, nvml_index=2, count=2, memory_mib=40192, memory_slices=4,
        compute_slices=3, sm=42, ce=3, dec=2, enc=0, jpg=0, ofa=0, starts=(0, 4)),
    mig("4g.40gb", gi=5, nvml_index=3, count=1, memory_mib=40192, memory_slices=4,
        compute_slices=4, sm=56, ce=4, dec=2, enc=0, jpg=0, ofa=0, starts=(0,)),
    mig("7g.80gb", gi=0, nvml_index=4, count=1, memory_mib=80896, memory_slices=8,
        compute_slices=7, sm=98, ce=7, dec=5, enc=0, jpg=1, ofa=1, starts=(0,)),
)
# fmt: on

_A100_40_Q = "public nvidia-smi -q of an 8x A100-SXM4-40GB HGX node (driver 535.129.03)"
_A100_80_Q = "public nvidia-smi -q of a 4x A100-SXM4-80GB node (driver 555.42.02)"
_A100_SMI = "public nvidia-smi tables of A100 SXM4 nodes (400W cap, idle 47-62 W at 26-48 C)"
_A100_WP = "NVIDIA A100 datasheet / Ampere GA100 whitepaper"
_MIG_GUIDE = "NVIDIA MIG user guide (v580): A100 profile table and mig -lgipp placements"

NVIDIA_A100_SXM4_40GB = GpuProfile(
    key="a100-40gb",
    name="NVIDIA A100-SXM4-40GB",
    aliases=(
        "a100",
        "A100",
        "A100-40GB",
        "a100-40gb",
        "A100-SXM4-40GB",
        "NVIDIA-A100-SXM4-40GB",
    ),
    brand="NVIDIA",
    architecture="ampere",
    family="ampere",
    compute_capability=(8, 0),
    memory_mib=40960,
    memory_reserved_mib=620,
    memory_bus_width_bits=5120,
    memory_type="HBM2",
    bar1_mib=65536,
    cuda_cores=6912,
    sm_count=108,
    pci_device_id=0x20B010DE,
    pci_subsystem_id=0x134F10DE,
    pcie_generation=4,
    pcie_link_width=16,
    power_idle_w=55.0,
    power_default_limit_w=400.0,
    power_min_limit_w=100.0,
    power_max_limit_w=400.0,
    temp_idle_c=32,
    temp_max_load_c=68,
    temp_slowdown_c=89,
    temp_shutdown_c=92,
    temp_max_operating_c=85,
    memory_temp_offset_c=5,
    clock_sm_idle_mhz=210,
    clock_sm_base_mhz=1095,
    clock_sm_max_mhz=1410,
    clock_mem_mhz=1215,
    clock_video_max_mhz=1290,
    vbios_version="92.00.36.00.04",
    board_part_number="692-2G506-0200-002",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=12,
    nvlink_version=3,
    ecc_supported=True,
    mig_profiles=A100_40GB_MIG,
    mig_max_gpu_instances=7,
    fan_count=0,
    gpu_part_number="20B0-884-A1",
    inforom_image_version="G506.0200.00.04",
    sources=sourced(
        (
            "name brand architecture memory_mib memory_reserved_mib bar1_mib pci_device_id "
            "pci_subsystem_id pcie_generation pcie_link_width power_default_limit_w "
            "power_min_limit_w power_max_limit_w temp_slowdown_c temp_shutdown_c "
            "temp_max_operating_c clock_sm_idle_mhz clock_sm_base_mhz clock_sm_max_mhz "
            "clock_mem_mhz clock_video_max_mhz vbios_version board_part_number gpu_part_number "
            "inforom_image_version ecc_supported fan_count",
            _A100_40_Q,
        ),
        ("power_idle_w temp_idle_c", f"estimate: middle of {_A100_SMI}"),
        (
            "temp_max_load_c",
            "estimate: A100 SXM4 at 90-100% utilisation in public nvidia-smi "
            "tables (42-64 C) plus margin",
        ),
        ("memory_temp_offset_c", "estimate: HBM2 a few degrees above the core in A100 captures"),
        (
            "family compute_capability cuda_cores sm_count memory_bus_width_bits memory_type",
            f"{_A100_WP}: GA100 8.0, 108 SMs, 6912 cores, 5120-bit HBM2",
        ),
        ("nvlink_links nvlink_version", f"{_A100_WP}: NVLink 3, 12 links, 600 GB/s"),
        ("driver_version cuda_version", DRIVER_SOURCE),
        ("mig_profiles mig_max_gpu_instances", _MIG_GUIDE),
    ),
)

NVIDIA_A100_SXM4_80GB = GpuProfile(
    key="a100-80gb",
    name="NVIDIA A100-SXM4-80GB",
    aliases=("A100-80GB", "a100-80gb", "A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB"),
    brand="NVIDIA",
    architecture="ampere",
    family="ampere",
    compute_capability=(8, 0),
    memory_mib=81920,
    memory_reserved_mib=763,
    memory_bus_width_bits=5120,
    memory_type="HBM2e",
    bar1_mib=131072,
    cuda_cores=6912,
    sm_count=108,
    pci_device_id=0x20B210DE,
    pci_subsystem_id=0x147F10DE,
    pcie_generation=4,
    pcie_link_width=16,
    power_idle_w=60.0,
    power_default_limit_w=400.0,
    power_min_limit_w=100.0,
    power_max_limit_w=400.0,
    temp_idle_c=30,
    temp_max_load_c=68,
    temp_slowdown_c=89,
    temp_shutdown_c=92,
    temp_max_operating_c=85,
    memory_temp_offset_c=5,
    clock_sm_idle_mhz=210,
    clock_sm_base_mhz=1140,
    clock_sm_max_mhz=1410,
    clock_mem_mhz=1593,
    clock_video_max_mhz=1290,
    vbios_version="92.00.9E.00.02",
    board_part_number="692-2G506-0212-005",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=12,
    nvlink_version=3,
    ecc_supported=True,
    mig_profiles=A100_80GB_MIG,
    mig_max_gpu_instances=7,
    fan_count=0,
    gpu_part_number="20B2-896-A1",
    inforom_image_version="G506.0212.00.01",
    sources=sourced(
        (
            "name brand architecture memory_mib memory_reserved_mib bar1_mib pci_device_id "
            "pci_subsystem_id pcie_generation pcie_link_width power_min_limit_w temp_slowdown_c "
            "temp_shutdown_c temp_max_operating_c clock_sm_idle_mhz clock_sm_base_mhz "
            "clock_sm_max_mhz clock_mem_mhz clock_video_max_mhz vbios_version board_part_number "
            "gpu_part_number inforom_image_version ecc_supported fan_count",
            _A100_80_Q,
        ),
        (
            "power_default_limit_w power_max_limit_w",
            f"{_A100_WP} (400 W TDP) and {_A100_SMI}; "
            "the captured board ships a 500 W variant, its identity strings are kept",
        ),
        ("power_idle_w temp_idle_c", f"estimate: middle of {_A100_SMI}"),
        ("temp_max_load_c", "estimate: as the A100 40GB"),
        ("memory_temp_offset_c", "estimate: HBM2e a few degrees above the core in A100 captures"),
        (
            "family compute_capability cuda_cores sm_count memory_bus_width_bits memory_type",
            f"{_A100_WP}: GA100 8.0, 108 SMs, 6912 cores, 5120-bit HBM2e",
        ),
        ("nvlink_links nvlink_version", f"{_A100_WP}: NVLink 3, 12 links, 600 GB/s"),
        ("driver_version cuda_version", DRIVER_SOURCE),
        (
            "mig_profiles mig_max_gpu_instances",
            f"{_MIG_GUIDE}; memory from public A100-80GB mig -lgip transcripts",
        ),
    ),
)
