"""Hopper (compute capability 9.0): H100 80GB HBM3 (SXM5) and H200 (SXM)."""

from __future__ import annotations

from fgo_common.profiles.data._common import CUDA_VERSION, DRIVER_SOURCE, DRIVER_VERSION
from fgo_common.profiles.data._helpers import mig, sourced
from fgo_common.profiles.model import GpuProfile, MigProfile

_CAPTURE = "capture ../shared/reference/nvidia-smi-h100"

# `nvidia-smi mig -lgip` order on the captured H100 (driver 580.159.04): 1-slice profiles first,
# then by slice count. Every number below is the capture's (mig_lgip.txt and nvml.json
# GpuInstanceProfiles); placements are the MIG user guide's H100 table (`mig -lgipp`).
# One profile per two lines reads like the nvidia-smi table it mirrors.
# fmt: off
H100_80GB_MIG: tuple[MigProfile, ...] = (
    mig("1g.10gb", gi=19, nvml_index=0, count=7, memory_mib=9984, memory_slices=1,
        compute_slices=1, sm=16, ce=1, dec=1, enc=0, jpg=1, ofa=0, starts=range(7)),
    mig("1g.10gb+me", gi=20, nvml_index=7, count=1, memory_mib=9984, memory_slices=1,
        compute_slices=1, sm=16, ce=1, dec=1, enc=0, jpg=1, ofa=1, starts=range(7)),
    mig("1g.20gb", gi=15, nvml_index=9, count=4, memory_mib=20096, memory_slices=2,
        compute_slices=1, sm=26, ce=1, dec=1, enc=0, jpg=1, ofa=0, starts=(0, 2, 4, 6)),
    mig("2g.20gb", gi=14, nvml_index=1, count=3, memory_mib=20096, memory_slices=2,
        compute_slices=2, sm=32, ce=2, dec=2, enc=0, jpg=2, ofa=0, starts=(0, 2, 4)),
    mig("3g.40gb", gi=9, nvml_index=2, count=2, memory_mib=40448, memory_slices=4,
        compute_slices=3, sm=60, ce=3, dec=3, enc=0, jpg=3, ofa=0, starts=(0, 4)),
    mig("4g.40gb", gi=5, nvml_index=3, count=1, memory_mib=40448, memory_slices=4,
        compute_slices=4, sm=64, ce=4, dec=4, enc=0, jpg=4, ofa=0, starts=(0,)),
    mig("7g.80gb", gi=0, nvml_index=4, count=1, memory_mib=81152, memory_slices=8,
        compute_slices=7, sm=132, ce=8, dec=7, enc=0, jpg=7, ofa=1, starts=(0,)),
)

# H200 141GB: profile names, engines and instance counts from the MIG user guide's H200 table;
# memory from public `mig -lgip` transcripts (1g.18gb 16.00, 2g.35gb 32.50, 7g.141gb 140.00
# GiB). 3g/4g.71gb memory is an estimate (users report 69.8 GB = 65.00 GiB from CUDA); SMs
# equal the H100's (same GH100 die; users report 16/26/32/60 SMs). Placements as on H100.
H200_MIG: tuple[MigProfile, ...] = (
    mig("1g.18gb", gi=19, nvml_index=0, count=7, memory_mib=16384, memory_slices=1,
        compute_slices=1, sm=16, ce=1, dec=1, enc=0, jpg=1, ofa=0, starts=range(7)),
    mig("1g.18gb+me", gi=20, nvml_index=7, count=1, memory_mib=16384, memory_slices=1,
        compute_slices=1, sm=16, ce=1, dec=1, enc=0, jpg=1, ofa=1, starts=range(7)),
    mig("1g.35gb", gi=15, nvml_index=9, count=4, memory_mib=33280, memory_slices=2,
        compute_slices=1, sm=26, ce=1, dec=1, enc=0, jpg=1, ofa=0, starts=(0, 2, 4, 6)),
    mig("2g.35gb", gi=14, nvml_index=1, count=3, memory_mib=33280, memory_slices=2,
        compute_slices=2, sm=32, ce=2, dec=2, enc=0, jpg=2, ofa=0, starts=(0, 2, 4)),
    mig("3g.71gb", gi=9, nvml_index=2, count=2, memory_mib=66560, memory_slices=4,
        compute_slices=3, sm=60, ce=3, dec=3, enc=0, jpg=3, ofa=0, starts=(0, 4)),
    mig("4g.71gb", gi=5, nvml_index=3, count=1, memory_mib=66560, memory_slices=4,
        compute_slices=4, sm=64, ce=4, dec=4, enc=0, jpg=4, ofa=0, starts=(0,)),
    mig("7g.141gb", gi=0, nvml_index=4, count=1, memory_mib=143360, memory_slices=8,
        compute_slices=7, sm=132, ce=8, dec=7, enc=0, jpg=7, ofa=1, starts=(0,)),
)
# fmt: on

H100_80GB_HBM3 = GpuProfile(
    key="h100-80gb-hbm3",
    name="NVIDIA H100 80GB HBM3",
    aliases=(
        "h100",
        "H100",
        "H100-80GB",
        "H100-SXM",
        "H100-SXM5-80GB",
        "H100-80GB-HBM3",
        "NVIDIA-H100-80GB-HBM3",
    ),
    brand="NVIDIA",
    architecture="hopper",
    family="hopper",
    compute_capability=(9, 0),
    memory_mib=81559,
    memory_reserved_mib=480,
    memory_bus_width_bits=5120,
    memory_type="HBM3",
    bar1_mib=131072,
    cuda_cores=16896,
    sm_count=132,
    pci_device_id=0x233010DE,
    pci_subsystem_id=0x16C110DE,
    pcie_generation=5,
    pcie_link_width=16,
    power_idle_w=73.0,
    power_default_limit_w=700.0,
    power_min_limit_w=200.0,
    power_max_limit_w=700.0,
    temp_idle_c=49,
    temp_max_load_c=72,
    temp_slowdown_c=89,
    temp_shutdown_c=95,
    temp_max_operating_c=87,
    memory_temp_offset_c=2,
    clock_sm_idle_mhz=345,
    clock_sm_base_mhz=1590,
    clock_sm_max_mhz=1980,
    clock_mem_mhz=2619,
    clock_video_max_mhz=1545,
    vbios_version="96.00.DA.00.0C",
    board_part_number="695-2G520-0200-000",
    driver_version="580.159.04",
    cuda_version="13.0",
    nvlink_links=18,
    nvlink_version=4,
    ecc_supported=True,
    mig_profiles=H100_80GB_MIG,
    mig_max_gpu_instances=7,
    fan_count=0,
    gpu_part_number="2330-885-A1",
    inforom_image_version="G520.0200.00.05",
    sources=sourced(
        (
            "name brand architecture compute_capability memory_mib memory_reserved_mib bar1_mib",
            f"{_CAPTURE}/smi_q.txt (81559 MiB total, 480 MiB reserved, BAR1 131072 MiB)",
        ),
        ("family", "GFD rule: compute capability 9.x => hopper"),
        ("cuda_cores sm_count", f"{_CAPTURE}/nvml.json NumGpuCores=16896; 7g.80gb has 132 SMs"),
        (
            "pci_device_id pci_subsystem_id pcie_generation pcie_link_width",
            f"{_CAPTURE}/smi_q.txt (0x233010DE, 0x16C110DE, gen 5, 16x)",
        ),
        (
            "power_default_limit_w power_min_limit_w power_max_limit_w",
            f"{_CAPTURE}/smi_q.txt (700/200/700 W)",
        ),
        (
            "power_idle_w temp_idle_c clock_sm_idle_mhz memory_temp_offset_c",
            f"{_CAPTURE}/dmon.txt settled idle sample (73 W, 49 C GPU / 52 C HBM, 345 MHz)",
        ),
        ("temp_max_load_c", f"{_CAPTURE}/nvml.json (72 C at 100% utilisation, 701 W)"),
        (
            "temp_max_operating_c temp_slowdown_c temp_shutdown_c",
            f"{_CAPTURE}/smi_q.txt T.Limit: 50 C + 37 C margin = 87 C max operating; "
            "slowdown/shutdown T.Limit -2/-8 C => 89/95 C",
        ),
        (
            "clock_sm_max_mhz clock_mem_mhz clock_video_max_mhz",
            f"{_CAPTURE}/smi_q.txt Max Clocks (1980/2619/1545 MHz)",
        ),
        ("clock_sm_base_mhz", "NVIDIA H100 datasheet: H100 SXM5 base clock 1590 MHz"),
        ("memory_bus_width_bits memory_type", "NVIDIA H100 whitepaper: 5 HBM3 stacks, 5120-bit"),
        (
            "vbios_version board_part_number gpu_part_number inforom_image_version",
            f"{_CAPTURE}/smi_q.txt",
        ),
        ("driver_version cuda_version", f"{_CAPTURE}/smi_q.txt (580.159.04 / 13.0)"),
        ("nvlink_links nvlink_version", "NVIDIA H100 datasheet: SXM5 NVLink 4, 18 links, 900 GB/s"),
        ("ecc_supported fan_count", f"{_CAPTURE}/smi_q.txt (ECC Enabled, Fan Speed N/A)"),
        (
            "mig_profiles mig_max_gpu_instances",
            f"{_CAPTURE}/mig_lgip.txt + nvml.json GpuInstanceProfiles; placements: NVIDIA MIG "
            "user guide, H100 profile table",
        ),
    ),
)

_H200_Q = "public nvidia-smi -q of an H200 (driver 550.90.12)"
_H200_SMI = "public nvidia-smi tables of H200 nodes (143771MiB, 700W cap, idle 73-76 W at 23-32 C)"

NVIDIA_H200 = GpuProfile(
    key="h200",
    name="NVIDIA H200",
    aliases=("H200", "h200", "H200-141GB", "H200-SXM", "NVIDIA-H200"),
    brand="NVIDIA",
    architecture="hopper",
    family="hopper",
    compute_capability=(9, 0),
    memory_mib=143771,
    memory_reserved_mib=700,
    memory_bus_width_bits=6144,
    memory_type="HBM3e",
    bar1_mib=262144,
    cuda_cores=16896,
    sm_count=132,
    pci_device_id=0x233510DE,
    pci_subsystem_id=0x18BE10DE,
    pcie_generation=5,
    pcie_link_width=16,
    power_idle_w=75.0,
    power_default_limit_w=700.0,
    power_min_limit_w=200.0,
    power_max_limit_w=700.0,
    temp_idle_c=28,
    temp_max_load_c=62,
    temp_slowdown_c=89,
    temp_shutdown_c=95,
    temp_max_operating_c=87,
    memory_temp_offset_c=-3,
    clock_sm_idle_mhz=345,
    clock_sm_base_mhz=1590,
    clock_sm_max_mhz=1980,
    clock_mem_mhz=3201,
    clock_video_max_mhz=1545,
    vbios_version="96.00.A5.00.03",
    board_part_number="695-2G520-0280-000",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=18,
    nvlink_version=4,
    ecc_supported=True,
    mig_profiles=H200_MIG,
    mig_max_gpu_instances=7,
    fan_count=0,
    gpu_part_number="2335-895-A1",
    inforom_image_version="G520.0280.02.02",
    sources=sourced(
        (
            "name brand architecture memory_mib memory_reserved_mib bar1_mib pci_device_id "
            "pci_subsystem_id pcie_generation pcie_link_width power_default_limit_w "
            "power_min_limit_w power_max_limit_w temp_idle_c clock_sm_idle_mhz clock_sm_max_mhz "
            "clock_mem_mhz clock_video_max_mhz vbios_version board_part_number gpu_part_number "
            "inforom_image_version ecc_supported fan_count",
            _H200_Q,
        ),
        (
            "temp_max_operating_c temp_slowdown_c temp_shutdown_c memory_temp_offset_c",
            f"{_H200_Q}: 28 C + 59 C T.Limit = 87 C; slowdown/shutdown -2/-8 C; HBM 25 C",
        ),
        ("power_idle_w", f"{_H200_SMI}"),
        ("temp_max_load_c", "public nvidia-smi tables of loaded H200s (59-62 C at 434-607 W)"),
        (
            "family compute_capability cuda_cores sm_count",
            "NVIDIA H200 datasheet: GH100 "
            "(compute capability 9.0) with the H100 SXM configuration, 132 SMs",
        ),
        ("memory_bus_width_bits memory_type", "NVIDIA H200 datasheet: 141 GB HBM3e, 6 stacks"),
        ("clock_sm_base_mhz", "estimate: same GH100 SXM clocks as the H100 (base 1590 MHz)"),
        ("nvlink_links nvlink_version", "NVIDIA H200 datasheet: NVLink 4, 900 GB/s (18 links)"),
        ("driver_version cuda_version", DRIVER_SOURCE),
        (
            "mig_profiles mig_max_gpu_instances",
            "NVIDIA MIG user guide H200 table; memory from "
            "public mig -lgip transcripts, 3g/4g memory estimated",
        ),
    ),
)
