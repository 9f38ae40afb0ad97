"""Blackwell: B200 (HGX) and GB200 (Grace-Blackwell superchip GPU), compute capability 10.0;
GB300 (Blackwell Ultra superchip GPU), 10.3.

No full `nvidia-smi -q` of either was available, so fewer values are captured here than for
Hopper; every estimate says so in ``sources``.
"""

from __future__ import annotations

from fgo_common.profiles.data._common import CUDA_VERSION, DRIVER_SOURCE, DRIVER_VERSION
from fgo_common.profiles.data._helpers import mig, sourced
from fgo_common.profiles.model import GpuProfile, MigProfile

_MIG_GUIDE = "NVIDIA MIG user guide (v580) B200 table"
_MIGPARTED = "NVIDIA mig-parted config-default.yaml"

# B200 180GB. Names, instance counts and copy engines from the MIG user guide; the 2-slice
# memory (44.25 GiB) is what CUDA reports inside a 2g.45gb instance; the 1-, 4- and 8-slice
# sizes are estimates following the H100 slice arithmetic (a 4-slice ~89 GB matches what users
# of 3g.90gb report). 1g SM count 18 is reported by users; other SM counts are estimates scaled
# from the H100 (7g = all 148 SMs as 7g = all SMs on H100). Decoders/JPEG follow the H100
# pattern of one per compute slice (the guide's table collapses those columns). Same GI
# profile ids and placements as Hopper.
# fmt: off
B200_MIG: tuple[MigProfile, ...] = (
    mig("1g.23gb", gi=19, nvml_index=0, count=7, memory_mib=22528, memory_slices=1,
        compute_slices=1, sm=18, ce=2, dec=1, enc=0, jpg=1, ofa=0, starts=range(7)),
    mig("1g.23gb+me", gi=20, nvml_index=7, count=1, memory_mib=22528, memory_slices=1,
        compute_slices=1, sm=18, ce=2, dec=1, enc=0, jpg=1, ofa=1, starts=range(7)),
    mig("1g.45gb", gi=15, nvml_index=9, count=4, memory_mib=45312, memory_slices=2,
        compute_slices=1, sm=18, ce=2, dec=1, enc=0, jpg=1, ofa=0, starts=(0, 2, 4, 6)),
    mig("2g.45gb", gi=14, nvml_index=1, count=3, memory_mib=45312, memory_slices=2,
        compute_slices=2, sm=36, ce=3, dec=2, enc=0, jpg=2, ofa=0, starts=(0, 2, 4)),
    mig("3g.90gb", gi=9, nvml_index=2, count=2, memory_mib=90880, memory_slices=4,
        compute_slices=3, sm=66, ce=6, dec=3, enc=0, jpg=3, ofa=0, starts=(0, 4)),
    mig("4g.90gb", gi=5, nvml_index=3, count=1, memory_mib=90880, memory_slices=4,
        compute_slices=4, sm=72, ce=8, dec=4, enc=0, jpg=4, ofa=0, starts=(0,)),
    mig("7g.180gb", gi=0, nvml_index=4, count=1, memory_mib=182016, memory_slices=8,
        compute_slices=7, sm=148, ce=16, dec=7, enc=0, jpg=7, ofa=1, starts=(0,)),
)

# GB200 186GB: profile names from mig-parted's GB200 configs (1g.23gb, 1g.47gb, 2g.47gb,
# 3g.93gb, 4g.93gb, 7g.186gb) and the guide's "GB200 186GB, 7 instances"; sizes are the B200
# estimates scaled by the larger frame buffer (189471 / 183359 MiB); engines as B200.
GB200_MIG: tuple[MigProfile, ...] = (
    mig("1g.23gb", gi=19, nvml_index=0, count=7, memory_mib=23296, memory_slices=1,
        compute_slices=1, sm=18, ce=2, dec=1, enc=0, jpg=1, ofa=0, starts=range(7)),
    mig("1g.23gb+me", gi=20, nvml_index=7, count=1, memory_mib=23296, memory_slices=1,
        compute_slices=1, sm=18, ce=2, dec=1, enc=0, jpg=1, ofa=1, starts=range(7)),
    mig("1g.47gb", gi=15, nvml_index=9, count=4, memory_mib=46848, memory_slices=2,
        compute_slices=1, sm=18, ce=2, dec=1, enc=0, jpg=1, ofa=0, starts=(0, 2, 4, 6)),
    mig("2g.47gb", gi=14, nvml_index=1, count=3, memory_mib=46848, memory_slices=2,
        compute_slices=2, sm=36, ce=3, dec=2, enc=0, jpg=2, ofa=0, starts=(0, 2, 4)),
    mig("3g.93gb", gi=9, nvml_index=2, count=2, memory_mib=93952, memory_slices=4,
        compute_slices=3, sm=66, ce=6, dec=3, enc=0, jpg=3, ofa=0, starts=(0, 4)),
    mig("4g.93gb", gi=5, nvml_index=3, count=1, memory_mib=93952, memory_slices=4,
        compute_slices=4, sm=72, ce=8, dec=4, enc=0, jpg=4, ofa=0, starts=(0,)),
    mig("7g.186gb", gi=0, nvml_index=4, count=1, memory_mib=188160, memory_slices=8,
        compute_slices=7, sm=148, ce=16, dec=7, enc=0, jpg=7, ofa=1, starts=(0,)),
)
# fmt: on

_B200_SMI = (
    "public nvidia-smi tables of 8x B200 HGX nodes (183359MiB, 1000W cap, "
    "idle 136-195 W at 27-31 C, fan N/A)"
)
_B200_DS = "NVIDIA HGX B200 / Blackwell datasheet"

NVIDIA_B200 = GpuProfile(
    key="b200",
    name="NVIDIA B200",
    aliases=("B200", "b200", "NVIDIA-B200", "B200-180GB"),
    brand="NVIDIA",
    architecture="blackwell",
    family="blackwell",
    compute_capability=(10, 0),
    memory_mib=183359,
    memory_reserved_mib=896,
    memory_bus_width_bits=8192,
    memory_type="HBM3e",
    bar1_mib=262144,
    cuda_cores=18944,
    sm_count=148,
    pci_device_id=0x290110DE,
    pci_subsystem_id=0x199910DE,
    pcie_generation=6,
    pcie_link_width=16,
    power_idle_w=150.0,
    power_default_limit_w=1000.0,
    power_min_limit_w=200.0,
    power_max_limit_w=1000.0,
    temp_idle_c=29,
    temp_max_load_c=70,
    temp_slowdown_c=89,
    temp_shutdown_c=95,
    temp_max_operating_c=87,
    memory_temp_offset_c=2,
    clock_sm_idle_mhz=345,
    clock_sm_base_mhz=1665,
    clock_sm_max_mhz=1965,
    clock_mem_mhz=3996,
    clock_video_max_mhz=1890,
    vbios_version="97.00.8B.00.0F",
    board_part_number="692-2G525-0220-000",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=18,
    nvlink_version=5,
    ecc_supported=True,
    mig_profiles=B200_MIG,
    mig_max_gpu_instances=7,
    fan_count=0,
    sources=sourced(
        ("name memory_mib power_default_limit_w power_max_limit_w fan_count", _B200_SMI),
        ("power_idle_w temp_idle_c", f"estimate: middle of {_B200_SMI}"),
        (
            "brand architecture family",
            "NVML brand NVIDIA for datacenter parts since R520; GFD rule 10.x => blackwell",
        ),
        ("compute_capability sm_count", "CUDA device query on a B200 (sm_100, 148 SMs)"),
        ("cuda_cores", "148 SMs x 128 FP32 cores (Blackwell SM); NVML counts FP32 cores"),
        ("pci_device_id", f"{_MIGPARTED}: B200 device-filter 0x290110DE"),
        (
            "memory_bus_width_bits memory_type nvlink_links nvlink_version pcie_generation "
            "pcie_link_width",
            f"{_B200_DS}: 8 HBM3e stacks (8192-bit), NVLink 5 at 1.8 TB/s "
            "(18 links), PCIe Gen6 x16",
        ),
        (
            "memory_reserved_mib bar1_mib",
            "estimate: scaled from the H200 capture (700 MiB, 256 GiB BAR1)",
        ),
        (
            "pci_subsystem_id vbios_version board_part_number",
            "estimate: no public nvidia-smi -q of a B200 found; HGX B200 naming pattern",
        ),
        ("power_min_limit_w", "estimate: Hopper-like 200 W floor"),
        (
            "temp_max_load_c temp_slowdown_c temp_shutdown_c temp_max_operating_c "
            "memory_temp_offset_c",
            "estimate: Hopper T.Limit offsets (capture: 87/89/95 C)",
        ),
        (
            "clock_sm_idle_mhz clock_sm_base_mhz clock_sm_max_mhz clock_mem_mhz "
            "clock_video_max_mhz",
            "estimate: B200 boost ~1.97 GHz, HBM3e 8 Gbps (3996 MHz)",
        ),
        ("ecc_supported", f"{_B200_DS}: ECC always on for HBM3e"),
        ("driver_version cuda_version", DRIVER_SOURCE),
        (
            "mig_profiles mig_max_gpu_instances",
            f"{_MIG_GUIDE} (7 instances), with estimates as documented next to B200_MIG",
        ),
    ),
)

_GB200_SMI = (
    "public nvidia-smi of an OpenShift GB200 NVL tray (4x 'NVIDIA GB200', 189471MiB, 1200W cap, "
    "idle 149-172 W at 29 C, NV18 between GPUs, driver 580.126.09)"
)

NVIDIA_GB200 = GpuProfile(
    key="gb200",
    name="NVIDIA GB200",
    aliases=("GB200", "gb200", "NVIDIA-GB200", "GB200-NVL", "NVIDIA GB200 NVL", "GB200-NVL72"),
    brand="NVIDIA",
    architecture="blackwell",
    family="blackwell",
    compute_capability=(10, 0),
    memory_mib=189471,
    memory_reserved_mib=928,
    memory_bus_width_bits=8192,
    memory_type="HBM3e",
    bar1_mib=262144,
    cuda_cores=18944,
    sm_count=148,
    pci_device_id=0x294110DE,
    pci_subsystem_id=0x20E010DE,
    pcie_generation=6,
    pcie_link_width=16,
    power_idle_w=160.0,
    power_default_limit_w=1200.0,
    power_min_limit_w=200.0,
    power_max_limit_w=1200.0,
    temp_idle_c=29,
    temp_max_load_c=70,
    temp_slowdown_c=89,
    temp_shutdown_c=95,
    temp_max_operating_c=87,
    memory_temp_offset_c=2,
    clock_sm_idle_mhz=345,
    clock_sm_base_mhz=1665,
    clock_sm_max_mhz=1965,
    clock_mem_mhz=3996,
    clock_video_max_mhz=1890,
    vbios_version="97.00.82.00.33",
    board_part_number="692-2G548-0200-000",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=18,
    nvlink_version=5,
    ecc_supported=True,
    mig_profiles=GB200_MIG,
    mig_max_gpu_instances=7,
    fan_count=0,
    sources=sourced(
        (
            "name memory_mib power_default_limit_w power_max_limit_w power_idle_w temp_idle_c "
            "fan_count nvlink_links",
            _GB200_SMI,
        ),
        ("brand", "public nvidia-smi -q of a GB200 NVL72 tray (Product Brand NVIDIA)"),
        (
            "architecture family compute_capability",
            "NVIDIA MIG user guide supported GPUs: GB200 Blackwell GB100, compute capability 10.0",
        ),
        ("sm_count cuda_cores", "estimate: same GB100 configuration as the B200 (148 SMs x 128)"),
        ("pci_device_id", f"{_MIGPARTED}: GB200 HGX device-filter 0x294110DE"),
        (
            "memory_bus_width_bits memory_type nvlink_version pcie_generation pcie_link_width",
            "NVIDIA GB200 NVL72 datasheet: 8 HBM3e stacks, NVLink 5 (1.8 TB/s), PCIe Gen6",
        ),
        ("memory_reserved_mib bar1_mib", "estimate: scaled from the H200 capture"),
        (
            "pci_subsystem_id vbios_version board_part_number",
            "estimate: no public nvidia-smi -q identity strings of a GB200 found",
        ),
        ("power_min_limit_w", "estimate: Hopper-like 200 W floor"),
        (
            "temp_max_load_c temp_slowdown_c temp_shutdown_c temp_max_operating_c "
            "memory_temp_offset_c clock_sm_idle_mhz clock_sm_base_mhz clock_sm_max_mhz "
            "clock_mem_mhz clock_video_max_mhz",
            "estimate: as the B200 profile",
        ),
        ("ecc_supported", "NVIDIA GB200 datasheet: ECC always on for HBM3e"),
        ("driver_version cuda_version", f"{DRIVER_SOURCE}; the GB200 capture ran 580.126.09"),
        (
            "mig_profiles mig_max_gpu_instances",
            f"{_MIGPARTED} GB200 configs and the MIG user "
            "guide (GB200 186GB, 7 instances), with estimates as documented next to GB200_MIG",
        ),
    ),
)

# GB300 (Blackwell Ultra) 288GB: GPU instance profile names and ids as `nvidia-smi mig -lgip`
# lists them on a GB300 (NVIDIA DGX Station GB300 MIG playbook: 1g.35gb id 19, 1g.35gb+me 20,
# 1g.70gb 15, 2g.70gb 14, 3g.139gb 9, 4g.139gb 5, 7g.278gb 0); 1g = 18 SMs as users of a B300
# 1g slice report; sizes are the B200 estimates scaled by the larger frame buffer (284208 /
# 183359 MiB) and rounded down to 256 MiB; engines and placements as B200; 7g = all 160 SMs.
# fmt: off
GB300_MIG: tuple[MigProfile, ...] = (
    mig("1g.35gb", gi=19, nvml_index=0, count=7, memory_mib=34816, memory_slices=1,
        compute_slices=1, sm=18, ce=2, dec=1, enc=0, jpg=1, ofa=0, starts=range(7)),
    mig("1g.35gb+me", gi=20, nvml_index=7, count=1, memory_mib=34816, memory_slices=1,
        compute_slices=1, sm=18, ce=2, dec=1, enc=0, jpg=1, ofa=1, starts=range(7)),
    mig("1g.70gb", gi=15, nvml_index=9, count=4, memory_mib=70144, memory_slices=2,
        compute_slices=1, sm=18, ce=2, dec=1, enc=0, jpg=1, ofa=0, starts=(0, 2, 4, 6)),
    mig("2g.70gb", gi=14, nvml_index=1, count=3, memory_mib=70144, memory_slices=2,
        compute_slices=2, sm=36, ce=3, dec=2, enc=0, jpg=2, ofa=0, starts=(0, 2, 4)),
    mig("3g.139gb", gi=9, nvml_index=2, count=2, memory_mib=140800, memory_slices=4,
        compute_slices=3, sm=66, ce=6, dec=3, enc=0, jpg=3, ofa=0, starts=(0, 4)),
    mig("4g.139gb", gi=5, nvml_index=3, count=1, memory_mib=140800, memory_slices=4,
        compute_slices=4, sm=72, ce=8, dec=4, enc=0, jpg=4, ofa=0, starts=(0,)),
    mig("7g.278gb", gi=0, nvml_index=4, count=1, memory_mib=282112, memory_slices=8,
        compute_slices=7, sm=160, ce=16, dec=7, enc=0, jpg=7, ofa=1, starts=(0,)),
)
# fmt: on

_GB300_SMI = (
    "public nvidia-smi of a GB300 tray (4x 'NVIDIA GB300', 284208MiB, 1400W cap, idle "
    "171-175 W at 28-29 C, fan N/A, bus ids 00000008:06:00.0.., driver 580.82.07 / CUDA 13.0)"
)
_BLACKWELL_ULTRA = (
    "NVIDIA technical blog 'Inside NVIDIA Blackwell Ultra' and GB300 NVL72 datasheet: 160 SMs "
    "x 128 CUDA cores, 288 GB HBM3e in 8 stacks (8192-bit), NVLink 5 (18 links, 1.8 TB/s), "
    "PCIe Gen6"
)

NVIDIA_GB300 = GpuProfile(
    key="gb300",
    name="NVIDIA GB300",
    aliases=(
        "GB300",
        "gb300",
        "NVIDIA-GB300",
        "GB300-NVL",
        "NVIDIA GB300 NVL",
        "GB300-NVL72",
        "GB300-288GB",
    ),
    brand="NVIDIA",
    architecture="blackwell",
    family="blackwell",
    compute_capability=(10, 3),
    memory_mib=284208,
    memory_reserved_mib=1392,
    memory_bus_width_bits=8192,
    memory_type="HBM3e",
    bar1_mib=262144,
    cuda_cores=20480,
    sm_count=160,
    pci_device_id=0x31C210DE,
    pci_subsystem_id=0x21E010DE,
    pcie_generation=6,
    pcie_link_width=16,
    power_idle_w=173.0,
    power_default_limit_w=1400.0,
    power_min_limit_w=200.0,
    power_max_limit_w=1400.0,
    temp_idle_c=29,
    temp_max_load_c=70,
    temp_slowdown_c=89,
    temp_shutdown_c=95,
    temp_max_operating_c=87,
    memory_temp_offset_c=2,
    clock_sm_idle_mhz=345,
    clock_sm_base_mhz=1665,
    clock_sm_max_mhz=1965,
    clock_mem_mhz=3996,
    clock_video_max_mhz=1890,
    vbios_version="97.10.1C.00.05",
    board_part_number="692-2G548-0210-000",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=18,
    nvlink_version=5,
    ecc_supported=True,
    mig_profiles=GB300_MIG,
    mig_max_gpu_instances=7,
    fan_count=0,
    sources=sourced(
        (
            "name memory_mib power_default_limit_w power_max_limit_w power_idle_w temp_idle_c "
            "fan_count",
            _GB300_SMI,
        ),
        (
            "compute_capability",
            "GB300 kernels load as sm_103 (compute capability 10.3) in the same public session",
        ),
        (
            "brand architecture family",
            "NVML brand NVIDIA for datacenter parts since R520; GFD rule 10.x => blackwell",
        ),
        (
            "sm_count cuda_cores memory_bus_width_bits memory_type nvlink_links nvlink_version "
            "pcie_generation pcie_link_width",
            _BLACKWELL_ULTRA,
        ),
        ("memory_reserved_mib bar1_mib", "estimate: the GB200's scaled by the frame buffer"),
        (
            "pci_device_id pci_subsystem_id vbios_version board_part_number",
            "estimate: no public GB300 PCI ids or identity strings found; GB200 pattern",
        ),
        ("power_min_limit_w", "estimate: Hopper-like 200 W floor"),
        (
            "temp_max_load_c temp_slowdown_c temp_shutdown_c temp_max_operating_c "
            "memory_temp_offset_c clock_sm_idle_mhz clock_sm_base_mhz clock_sm_max_mhz "
            "clock_mem_mhz clock_video_max_mhz",
            "estimate: as the B200 profile (same HBM3e speed, 8 TB/s)",
        ),
        ("ecc_supported", "NVIDIA GB300 NVL72 datasheet: ECC always on for HBM3e"),
        ("driver_version cuda_version", f"{DRIVER_SOURCE}; the GB300 capture ran 580.82.07"),
        (
            "mig_profiles mig_max_gpu_instances",
            "NVIDIA DGX Station GB300 MIG playbook (profile names and ids, 7 instances), with "
            "estimates as documented next to GB300_MIG",
        ),
    ),
)
