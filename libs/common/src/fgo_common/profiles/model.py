"""Typed model of a GPU product (a "profile") and its MIG profile table."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MigPlacement:
    """A valid placement of a GPU instance: first memory slice and slice count."""

    start: int
    size: int


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One GPU-instance profile as ``nvidia-smi mig -lgip`` / NVML report it."""

    name: str  # e.g. "1g.10gb", "1g.10gb+me", "1g.20gb"
    gi_profile_id: int  # the "ID" column of `mig -lgip`
    ci_profile_id: int  # compute-instance profile id of the full-size CI in this GI
    max_instances: int  # "Instances Total"
    memory_mib: int  # "Memory Size" in MiB
    memory_slices: int
    compute_slices: int
    sm_count: int  # "SM" column
    copy_engines: int
    decoders: int
    encoders: int
    jpeg: int
    ofa: int
    p2p: bool
    placements: tuple[MigPlacement, ...]
    # NVML_GPU_INSTANCE_PROFILE_* constant (the index nvmlDeviceGetGpuInstanceProfileInfo takes);
    # -1 where unknown. nvidia-smi lists profiles by (slice count, this index).
    nvml_profile_index: int = -1

    @property
    def resource_suffix(self) -> str:
        """Name as used in ``nvidia.com/mig-<suffix>`` resources (``+`` becomes ``.``)."""
        return self.name.replace("+", ".")


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """Everything the simulator knows about one GPU product.

    ``sources`` maps a field name (or a group such as "power") to where its value comes from:
    a public datasheet or the real captures in ../shared/reference.
    """

    key: str  # short id used in configs: "k80", "h100-80gb-hbm3", ...
    name: str  # exactly as NVML / nvidia-smi print it
    aliases: tuple[str, ...]
    brand: str  # NVML brand string as `nvidia-smi -q` prints it: "Tesla", "NVIDIA", ...
    architecture: str  # `nvidia-smi -q` Product Architecture, lower-case: "hopper", "ada lovelace"
    family: str  # GFD `nvidia.com/gpu.family`
    compute_capability: tuple[int, int]
    memory_mib: int  # total FB memory as NVML reports it
    memory_reserved_mib: int  # driver-reserved FB as `nvidia-smi -q` shows it
    memory_bus_width_bits: int
    memory_type: str  # "GDDR5", "GDDR6", "HBM2e", "HBM3", "HBM3e"
    bar1_mib: int
    cuda_cores: int
    sm_count: int
    pci_device_id: int  # 32-bit NVML pciDeviceId (device << 16 | vendor 0x10DE)
    pci_subsystem_id: int
    pcie_generation: int
    pcie_link_width: int
    power_idle_w: float
    power_default_limit_w: float
    power_min_limit_w: float
    power_max_limit_w: float
    temp_idle_c: int
    temp_max_load_c: int
    temp_slowdown_c: int
    temp_shutdown_c: int
    temp_max_operating_c: int
    memory_temp_offset_c: int  # HBM runs a few degrees from the core; 0 where NVML has no sensor
    clock_sm_idle_mhz: int
    clock_sm_base_mhz: int
    clock_sm_max_mhz: int
    clock_mem_mhz: int
    clock_video_max_mhz: int
    vbios_version: str
    board_part_number: str
    driver_version: str
    cuda_version: str
    nvlink_links: int = 0
    nvlink_version: int = 0
    ecc_supported: bool = True
    mig_profiles: tuple[MigProfile, ...] = ()
    mig_max_gpu_instances: int = 0
    fan_count: int = 0  # 0 prints "N/A" for the fan column (passively cooled boards)
    gpu_part_number: str = "N/A"  # `nvidia-smi -q` "GPU Part Number"
    inforom_image_version: str = "N/A"  # `nvidia-smi -q` "Inforom Version / Image Version"
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)

    def mig_profile(self, name: str) -> MigProfile:
        for profile in self.mig_profiles:
            if name in (profile.name, profile.resource_suffix):
                return profile
        allowed = ", ".join(p.name for p in self.mig_profiles) or "none (not MIG-capable)"
        raise KeyError(f"{self.name} has no MIG profile {name!r}; allowed: {allowed}")
