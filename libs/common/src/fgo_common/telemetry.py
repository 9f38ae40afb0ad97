"""The telemetry model: every number a GPU reports, as a pure function of (record, profile, t).

The status-exporter and nvidia-smi both call :func:`sample_gpu` independently and get the same
values for the same instant (to the bucket), so Prometheus and nvidia-smi never disagree. Random
parts are seeded by (seed, GPU UUID, pod, time bucket); physical coherence lives here, once:
power follows utilisation between the profile's idle draw and its limit, temperature follows
power with a lag, clocks boost under load, framebuffer use never exceeds what exists, energy only
grows.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from fgo_common.profiles import GpuProfile
from fgo_common.topology import GpuRecord, PodUsage

BUCKET_SECONDS = 10.0
TEMPERATURE_LAG_BUCKETS = 3


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU (or MIG device) at one instant, in the units dcgm-exporter and NVML use."""

    gpu_util: int  # %
    mem_copy_util: int  # %
    encoder_util: int  # %
    decoder_util: int  # %
    fb_total_mib: int
    fb_used_mib: int
    fb_free_mib: int
    fb_reserved_mib: int
    power_w: float
    power_limit_w: float
    energy_mj: int  # total energy since the simulated boot, mJ (monotonic)
    gpu_temp_c: int
    mem_temp_c: int
    sm_clock_mhz: int
    mem_clock_mhz: int
    gr_engine_active: float  # ratio 0..1
    sm_active: float
    sm_occupancy: float
    tensor_active: float
    dram_active: float
    fp16_active: float
    pcie_tx_bytes_per_s: int
    pcie_rx_bytes_per_s: int
    pcie_replay_count: int
    pstate: int


def _unit_random(*parts: object) -> float:
    """Deterministic uniform [0, 1) from ``parts`` (stable across processes, unlike hash())."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "big")) / 2.0**64


def pod_utilization(usage: PodUsage, gpu_id: str, pod_uid: str, bucket: int, seed: int) -> int:
    """A pod's utilisation in one bucket: uniform in its inclusive [min, max] range."""
    low, high = usage.utilization.min, usage.utilization.max
    if high <= low:
        return max(0, min(100, low))
    span = high - low + 1
    return low + int(_unit_random(seed, gpu_id, pod_uid, bucket) * span)


def _utilization_at(usages: dict[str, PodUsage], gpu_id: str, bucket: int, seed: int) -> int:
    total = sum(pod_utilization(u, gpu_id, uid, bucket, seed) for uid, u in usages.items())
    return min(100, total)


def _power(profile: GpuProfile, util: int) -> float:
    span = profile.power_default_limit_w - profile.power_idle_w
    # Power rises steeply at low load then flattens, as measured on datacenter GPUs.
    return float(profile.power_idle_w + span * (util / 100.0) ** 0.8)


def _energy_mj(gpu: GpuRecord, profile: GpuProfile, t: float, boot: float) -> int:
    """Idle draw since boot, plus each current holder's extra draw since it started, plus what
    holders that have gone already banked: non-decreasing in t by construction."""
    idle_j = profile.power_idle_w * max(0.0, t - boot)
    extra_j = 0.0
    for usage in gpu.status.usage.values():
        mid = (usage.utilization.min + usage.utilization.max) / 2
        since = usage.since or t
        extra_j += (_power(profile, int(mid)) - profile.power_idle_w) * max(0.0, t - since)
    return int((idle_j + extra_j + gpu.status.energy_banked_j) * 1000)


def sample_gpu(
    gpu: GpuRecord,
    profile: GpuProfile,
    t: float,
    *,
    seed: int = 0,
    boot_time: float = 1_767_225_600.0,  # 2026-01-01T00:00:00Z: a fixed "boot" keeps energy pure
    usages: dict[str, PodUsage] | None = None,
    memory_total_mib: int | None = None,
) -> GpuSample:
    """Sample ``gpu`` at unix time ``t``. ``usages``/``memory_total_mib`` select a MIG device."""
    usage_map = gpu.status.usage if usages is None else usages
    bucket = math.floor(t / BUCKET_SECONDS)
    util = _utilization_at(usage_map, gpu.id, bucket, seed)
    lagged = (
        sum(
            _utilization_at(usage_map, gpu.id, bucket - lag, seed)
            for lag in range(TEMPERATURE_LAG_BUCKETS)
        )
        / TEMPERATURE_LAG_BUCKETS
    )

    power = _power(profile, util) + (_unit_random(seed, gpu.id, "power", bucket) - 0.5) * 2.0
    power = max(profile.power_idle_w * 0.95, min(profile.power_default_limit_w, power))
    temp_span = profile.temp_max_load_c - profile.temp_idle_c
    temp = profile.temp_idle_c + temp_span * (lagged / 100.0) ** 0.9
    temp += (_unit_random(seed, gpu.id, "temp", bucket) - 0.5) * 1.0

    busy = util > 0
    sm_clock = profile.clock_sm_max_mhz if busy else profile.clock_sm_idle_mhz
    if busy and util > 90:
        # Sustained full load pulls the boost clock down a little, as power capping does.
        sm_clock = int(sm_clock - (profile.clock_sm_max_mhz - profile.clock_sm_base_mhz) * 0.15)

    total = memory_total_mib if memory_total_mib is not None else gpu.memory_mib
    reserved = 0 if memory_total_mib is not None else profile.memory_reserved_mib
    used = min(total - reserved, sum(u.fb_used_mib for u in usage_map.values()))
    ratio = util / 100.0
    pcie_peak = 2_000_000_000 * profile.pcie_generation * profile.pcie_link_width // 16
    return GpuSample(
        gpu_util=util,
        mem_copy_util=int(util * 0.35),
        encoder_util=0,
        decoder_util=0,
        fb_total_mib=total,
        fb_used_mib=used,
        fb_free_mib=total - reserved - used,
        fb_reserved_mib=reserved,
        power_w=round(power, 3),
        power_limit_w=profile.power_default_limit_w,
        energy_mj=_energy_mj(gpu, profile, t, boot_time),
        gpu_temp_c=round(temp),
        mem_temp_c=round(temp) + profile.memory_temp_offset_c
        if profile.memory_temp_offset_c
        else 0,
        sm_clock_mhz=sm_clock,
        mem_clock_mhz=profile.clock_mem_mhz,
        gr_engine_active=round(ratio, 6),
        sm_active=round(ratio * 0.92, 6),
        sm_occupancy=round(ratio * 0.55, 6),
        tensor_active=round(ratio * 0.45, 6),
        dram_active=round(ratio * 0.38, 6),
        fp16_active=round(ratio * 0.05, 6),
        pcie_tx_bytes_per_s=int(pcie_peak * ratio * 0.05),
        pcie_rx_bytes_per_s=int(pcie_peak * ratio * 0.12),
        pcie_replay_count=0,
        pstate=0,
    )
