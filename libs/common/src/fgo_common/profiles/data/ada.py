"""Ada Lovelace (compute capability 8.9): L4 and L40S. Neither supports MIG."""

from __future__ import annotations

from fgo_common.profiles.data._common import CUDA_VERSION, DRIVER_SOURCE, DRIVER_VERSION
from fgo_common.profiles.data._helpers import sourced
from fgo_common.profiles.model import GpuProfile

_L4_Q = "public nvidia-smi -q of an L4 (driver 550.90.07)"
_L4_SMI = "public nvidia-smi tables of L4 nodes (23034MiB, 72W cap, P8 idle 11-17 W)"

NVIDIA_L4 = GpuProfile(
    key="l4",
    name="NVIDIA L4",
    aliases=("L4", "NVIDIA-L4"),
    brand="NVIDIA",
    architecture="ada lovelace",
    family="ada-lovelace",
    compute_capability=(8, 9),
    memory_mib=23034,
    memory_reserved_mib=556,
    memory_bus_width_bits=192,
    memory_type="GDDR6",
    bar1_mib=32768,
    cuda_cores=7424,
    sm_count=58,
    pci_device_id=0x27B810DE,
    pci_subsystem_id=0x16CA10DE,
    pcie_generation=4,
    pcie_link_width=16,
    power_idle_w=16.0,
    power_default_limit_w=72.0,
    power_min_limit_w=40.0,
    power_max_limit_w=72.0,
    temp_idle_c=33,
    temp_max_load_c=76,
    temp_slowdown_c=88,
    temp_shutdown_c=91,
    temp_max_operating_c=86,
    memory_temp_offset_c=0,
    clock_sm_idle_mhz=210,
    clock_sm_base_mhz=795,
    clock_sm_max_mhz=2040,
    clock_mem_mhz=6251,
    clock_video_max_mhz=1770,
    vbios_version="95.04.29.00.06",
    board_part_number="900-2G193-0000-000",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=0,
    nvlink_version=0,
    ecc_supported=True,
    fan_count=0,
    gpu_part_number="27B8-895-A1",
    inforom_image_version="G193.0200.00.01",
    sources=sourced(
        (
            "name brand architecture memory_mib memory_reserved_mib bar1_mib pci_device_id "
            "pci_subsystem_id pcie_generation pcie_link_width power_default_limit_w "
            "power_min_limit_w power_max_limit_w power_idle_w temp_idle_c clock_sm_idle_mhz "
            "clock_sm_max_mhz clock_mem_mhz clock_video_max_mhz vbios_version board_part_number "
            "gpu_part_number inforom_image_version ecc_supported fan_count",
            _L4_Q,
        ),
        (
            "temp_max_operating_c temp_slowdown_c temp_shutdown_c",
            f"{_L4_Q}: 33 C + 53 C T.Limit margin = 86 C; slowdown/shutdown T.Limit -2/-5 C",
        ),
        ("memory_temp_offset_c", f"{_L4_Q}: Memory Current Temp N/A"),
        ("temp_max_load_c", f"{_L4_SMI}: 76 C at 71 W / 99% utilisation"),
        ("family compute_capability", "CUDA programming guide: L4 is 8.9; GFD 8.9 => ada-lovelace"),
        (
            "cuda_cores sm_count memory_bus_width_bits memory_type clock_sm_base_mhz",
            "NVIDIA L4 datasheet / Ada whitepaper: 58 SMs, 7424 cores, 192-bit GDDR6, 795 MHz base",
        ),
        ("driver_version cuda_version", DRIVER_SOURCE),
        ("nvlink_links nvlink_version", "L4 has no NVLink"),
        ("mig_profiles mig_max_gpu_instances", "NVIDIA MIG user guide: L4 is not MIG-capable"),
    ),
)

_L40S_SMI = (
    "public nvidia-smi tables of L40S nodes (46068MiB, 350W cap, P8 idle 22-34 W at 26-35 C)"
)

NVIDIA_L40S = GpuProfile(
    key="l40s",
    name="NVIDIA L40S",
    aliases=("L40S", "NVIDIA-L40S"),
    brand="NVIDIA",
    architecture="ada lovelace",
    family="ada-lovelace",
    compute_capability=(8, 9),
    memory_mib=46068,
    memory_reserved_mib=560,
    memory_bus_width_bits=384,
    memory_type="GDDR6",
    bar1_mib=65536,
    cuda_cores=18176,
    sm_count=142,
    pci_device_id=0x26B910DE,
    pci_subsystem_id=0x185110DE,
    pcie_generation=4,
    pcie_link_width=16,
    power_idle_w=30.0,
    power_default_limit_w=350.0,
    power_min_limit_w=100.0,
    power_max_limit_w=350.0,
    temp_idle_c=30,
    temp_max_load_c=70,
    temp_slowdown_c=88,
    temp_shutdown_c=91,
    temp_max_operating_c=86,
    memory_temp_offset_c=0,
    clock_sm_idle_mhz=210,
    clock_sm_base_mhz=1110,
    clock_sm_max_mhz=2520,
    clock_mem_mhz=9001,
    clock_video_max_mhz=1965,
    vbios_version="95.02.66.00.02",
    board_part_number="900-2G133-0080-000",
    driver_version=DRIVER_VERSION,
    cuda_version=CUDA_VERSION,
    nvlink_links=0,
    nvlink_version=0,
    ecc_supported=True,
    fan_count=0,
    sources=sourced(
        ("name memory_mib power_default_limit_w power_max_limit_w fan_count", _L40S_SMI),
        ("power_idle_w temp_idle_c", f"estimate: middle of {_L40S_SMI}"),
        ("brand architecture", "public nvidia-smi -q of an L40S (driver 550.127.05)"),
        ("family compute_capability", "CUDA programming guide: L40S is 8.9"),
        (
            "cuda_cores sm_count memory_bus_width_bits memory_type clock_sm_base_mhz "
            "clock_sm_max_mhz",
            "NVIDIA L40S datasheet: 142 SMs, 18176 cores, 48 GB 384-bit GDDR6, 1110/2520 MHz",
        ),
        ("clock_mem_mhz", "NVIDIA L40S datasheet: 18 Gbps GDDR6 (nvidia-smi reports 9001 MHz)"),
        ("pci_device_id", "PCI ID database: 10de:26b9 = AD102GL [L40S]"),
        (
            "pci_subsystem_id vbios_version board_part_number clock_video_max_mhz",
            "estimate: no public nvidia-smi -q of an L40S board found; values follow the L40 "
            "family numbering",
        ),
        (
            "bar1_mib memory_reserved_mib power_min_limit_w",
            "estimate: scaled from the L4 capture (same Ada generation)",
        ),
        ("temp_max_load_c", "estimate: passively cooled 350 W board under sustained load"),
        (
            "temp_max_operating_c temp_slowdown_c temp_shutdown_c memory_temp_offset_c",
            f"estimate: same T.Limit offsets as {_L4_Q}",
        ),
        ("clock_sm_idle_mhz", "estimate: Ada P8 idle clock as on the L4 capture"),
        ("pcie_generation pcie_link_width", "NVIDIA L40S datasheet: PCIe Gen4 x16"),
        ("ecc_supported", "NVIDIA L40S datasheet: ECC on by default"),
        ("driver_version cuda_version", DRIVER_SOURCE),
        ("nvlink_links nvlink_version", "NVIDIA L40S datasheet: no NVLink"),
        ("mig_profiles mig_max_gpu_instances", "NVIDIA MIG user guide: L40S is not MIG-capable"),
    ),
)
