"""The telemetry model: every number a GPU reports, as a pure function of (record, profile, t).

The status-exporter and nvidia-smi both call :func:`sample_gpu` (and :func:`sample_mig_device`)
independently and get the same values for the same instant (to the bucket), so Prometheus and
nvidia-smi never disagree. Random parts are seeded by (seed, GPU or MIG UUID, pod, time bucket);
physical coherence lives here, once: power follows utilisation between the profile's idle draw
and its limit, temperature follows power with a lag, clocks boost under load and drop when
throttled, framebuffer use never exceeds what exists, energy only grows, the profiling ratios are
fixed fractions of utilisation, a MIG-enabled GPU's load is the SM-weighted sum of its MIG
devices' loads, and injected faults (``GpuRecord.faults``) show up as XID, ECC, row-remapping and
PCIe-replay counters and as throttling.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fgo_common.profiles import BUILTIN_CATALOG, DEFAULT_PROFILE_KEY, GpuProfile, ProfileCatalog
from fgo_common.telemetry_physics import LoadPhysics, memory_power_w, physics_for
from fgo_common.topology import GpuRecord, MigDevice, PodUsage

BUCKET_SECONDS = 10.0
TEMPERATURE_LAG_BUCKETS = 3
DEFAULT_BOOT_TIME = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a fixed "boot" keeps energy pure
# Framebuffer a MIG GPU instance shows as used with nothing running (its driver context), as
# real MIG devices report 13 MiB idle.
MIG_INSTANCE_OVERHEAD_MIB = 13
# A pod recorded as using its whole device (the status-updater's value without a memory
# annotation, as the reference writes it) uses a realistic amount instead: a CUDA context plus
# a share of the rest that grows with the middle of its utilisation range (75 % of the board at
# 100 %). A process can never hold the whole board: the driver keeps its reserve.
CUDA_CONTEXT_MIB = 512
DEFAULT_FB_SHARE_AT_FULL_LOAD = 0.75

# Fault kinds read from ``GpuRecord.faults`` (each a mapping with ``kind`` and optional
# ``since`` / ``until`` unix times bounding when it is active):
#   {kind: xid, code: 79}                      last XID error (DCGM_FI_DEV_XID_ERRORS)
#   {kind: ecc, sbeVolatile, dbeVolatile, sbeAggregate, dbeAggregate}   ECC error counts
#   {kind: remappedRows, correctable, uncorrectable, failure: bool}
#   {kind: pcieReplay, count}
#   {kind: thermal}                            thermal slowdown: hot, clocks down
#   {kind: power}                              power brake: power capped low, clocks down
#   {kind: degraded}                           degraded performance: SM clock and PCIe
#                                              throughput down (no clock event reason)
FAULT_XID = "xid"
FAULT_ECC = "ecc"
FAULT_REMAPPED_ROWS = "remappedRows"
FAULT_PCIE_REPLAY = "pcieReplay"
FAULT_THERMAL = "thermal"
FAULT_POWER = "power"
FAULT_DEGRADED = "degraded"

# Clock event reason bits (DCGM dcgm_fields.h DCGM_CLOCKS_EVENT_REASON_*, the same values as
# NVML's nvmlClocksEventReason*; 0x2, 0x10 and 0x100 are never set by the simulator).
CLOCKS_EVENT_GPU_IDLE = 0x001
CLOCKS_EVENT_CLOCKS_SETTING = 0x002
CLOCKS_EVENT_SW_POWER_CAP = 0x004
CLOCKS_EVENT_HW_SLOWDOWN = 0x008
CLOCKS_EVENT_SYNC_BOOST = 0x010
CLOCKS_EVENT_SW_THERMAL = 0x020
CLOCKS_EVENT_HW_THERMAL = 0x040
CLOCKS_EVENT_HW_POWER_BRAKE = 0x080
CLOCKS_EVENT_DISPLAY_CLOCKS = 0x100
CLOCKS_EVENT_SUPPORTED = 0x1FF
# Power at or above this share of the limit counts as the SW power cap holding clocks down.
SW_POWER_CAP_SHARE = 0.99
# A degraded GPU runs its SM clock at most at this share of the base clock, and its PCIe link
# (retraining, replaying) moves this share of the data.
DEGRADED_CLOCK_SHARE = 0.7
DEGRADED_PCIE_SHARE = 0.5
# dcgm-exporter's defaults: DCGM samples each watched field every collect interval
# (DCGM_EXPORTER_INTERVAL, 30 s), and DCGM_EXP_CLOCK_EVENTS_COUNT counts the samples of the
# last DCGM_EXPORTER_CLOCK_EVENTS_COUNT_WINDOW_SIZE (5 min) that carry each reason.
DCGM_SAMPLE_INTERVAL_SECONDS = 30.0
CLOCK_EVENTS_WINDOW_SECONDS = 300.0
# DCGM_EXP_XID_ERRORS_COUNT counts the XID events of the last DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE
# (dcgm-exporter's default: 5 min).
XID_COUNT_WINDOW_SECONDS = 300.0

# XIDs whose meaning implies a memory error, so the ECC / row-remap counters agree with them.
_XID_DOUBLE_BIT = frozenset({48, 94, 95})
_XID_ROW_REMAP_EVENT = 63
_XID_ROW_REMAP_FAILURE = 64


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
    # Error state, from GpuRecord.faults (0 = none).
    xid_last: int = 0
    ecc_sbe_volatile: int = 0
    ecc_dbe_volatile: int = 0
    ecc_sbe_aggregate: int = 0
    ecc_dbe_aggregate: int = 0
    remapped_rows_correctable: int = 0
    remapped_rows_uncorrectable: int = 0
    row_remap_failure: bool = False
    thermal_throttled: bool = False
    power_throttled: bool = False
    degraded: bool = False
    # Why clocks are below their maximum (CLOCKS_EVENT_* bits), and the cumulative time the
    # thermal / power-brake slowdowns have held them down (ns, as DCGM 4 reports violations).
    clocks_event_reasons: int = 0
    thermal_violation_ns: int = 0
    # DCGM_FI_DEV_POWER_VIOLATION: SW power capping plus HW power braking (never both at once).
    power_violation_ns: int = 0
    sw_power_cap_ns: int = 0  # nvidia-smi "SW Power Capping"
    power_brake_ns: int = 0  # nvidia-smi "HW Power Braking"
    memory_power_w: float | None = None  # HBM power (None: NVML does not report it)
    bar1_used_mib: int = 1
    fan_speed_percent: int | None = None  # None: a passively cooled board (NVML: N/A)
    video_clock_mhz: int = 0
    # Degrees left before the slowdown limit (what Hopper and later report as "T.Limit").
    tlimit_margin_c: int = 0

    @property
    def fb_used_percent(self) -> float:
        usable = self.fb_total_mib - self.fb_reserved_mib
        return round(100.0 * self.fb_used_mib / usable, 6) if usable > 0 else 0.0


@dataclass(frozen=True, slots=True)
class FaultState:
    """What the active faults of a GPU amount to at one instant."""

    xid_last: int = 0
    ecc_sbe_volatile: int = 0
    ecc_dbe_volatile: int = 0
    ecc_sbe_aggregate: int = 0
    ecc_dbe_aggregate: int = 0
    remapped_rows_correctable: int = 0
    remapped_rows_uncorrectable: int = 0
    row_remap_failure: bool = False
    pcie_replay_count: int = 0
    thermal: bool = False
    power: bool = False
    degraded: bool = False


NO_FAULTS = FaultState()


def _int(raw: Mapping[str, Any], key: str) -> int:
    try:
        return max(0, int(raw.get(key) or 0))
    except (TypeError, ValueError):
        return 0


def _active(fault: Mapping[str, Any], t: float) -> bool:
    try:
        since = float(fault.get("since") or 0.0)
        until = float(fault.get("until") or math.inf)
    except (TypeError, ValueError):
        return False
    return since <= t < until


def faults_at(faults: Iterable[Mapping[str, Any]], t: float) -> FaultState:
    """Fold the faults active at ``t`` into counters. Unknown kinds and bad values are ignored
    (the writer validates; a reader must not crash on a newer writer's record)."""
    active = [f for f in faults if isinstance(f, Mapping) and _active(f, t)]
    if not active:
        return NO_FAULTS
    xids = sorted(
        (float(f.get("since") or 0.0), _int(f, "code"))
        for f in active
        if f.get("kind") == FAULT_XID
    )
    xid = xids[-1][1] if xids else 0
    sbe_vol = dbe_vol = sbe_agg = dbe_agg = remap_c = remap_u = replays = 0
    failure = thermal = power = degraded = False
    for fault in active:
        kind = fault.get("kind")
        if kind == FAULT_ECC:
            sbe_vol += _int(fault, "sbeVolatile")
            dbe_vol += _int(fault, "dbeVolatile")
            sbe_agg += _int(fault, "sbeAggregate")
            dbe_agg += _int(fault, "dbeAggregate")
        elif kind == FAULT_REMAPPED_ROWS:
            remap_c += _int(fault, "correctable")
            remap_u += _int(fault, "uncorrectable")
            failure = failure or bool(fault.get("failure", False))
        elif kind == FAULT_PCIE_REPLAY:
            replays += _int(fault, "count")
        elif kind == FAULT_THERMAL:
            thermal = True
        elif kind == FAULT_POWER:
            power = True
        elif kind == FAULT_DEGRADED:
            degraded = True
    # An XID that reports a memory error implies the counters that error increments.
    codes = {code for _, code in xids}
    if codes & _XID_DOUBLE_BIT:
        dbe_vol = max(dbe_vol, 1)
        remap_u = max(remap_u, 1)
    if _XID_ROW_REMAP_EVENT in codes:
        remap_u = max(remap_u, 1)
    if _XID_ROW_REMAP_FAILURE in codes:
        failure = True
    return FaultState(
        xid_last=xid,
        ecc_sbe_volatile=sbe_vol,
        ecc_dbe_volatile=dbe_vol,
        # Aggregate (persistent) counts include the volatile ones.
        ecc_sbe_aggregate=max(sbe_agg, sbe_vol),
        ecc_dbe_aggregate=max(dbe_agg, dbe_vol),
        remapped_rows_correctable=remap_c,
        remapped_rows_uncorrectable=remap_u,
        row_remap_failure=failure,
        pcie_replay_count=replays,
        thermal=thermal,
        power=power,
        degraded=degraded,
    )


def violation_ns(faults: Iterable[Mapping[str, Any]], kind: str, t: float, boot: float) -> int:
    """How long (ns) faults of ``kind`` have been active between ``boot`` and ``t``: the
    violation counter of that slowdown. Non-decreasing in ``t`` while the record keeps the
    faults; overlapping faults of one kind count once."""
    return int(sum(until - since for since, until in fault_spans(faults, kind, t, boot)) * 1e9)


def fault_spans(
    faults: Iterable[Mapping[str, Any]], kind: str, t: float, boot: float
) -> list[tuple[float, float]]:
    """The disjoint, sorted time spans within ``[boot, t]`` in which a ``kind`` fault held."""
    spans: list[tuple[float, float]] = []
    for fault in faults:
        if not isinstance(fault, Mapping) or fault.get("kind") != kind:
            continue
        try:
            since = max(boot, float(fault.get("since") or 0.0))
            until = min(t, float(fault.get("until") or math.inf))
        except (TypeError, ValueError):
            continue
        if until > since:
            spans.append((since, until))
    merged: list[tuple[float, float]] = []
    for since, until in sorted(spans):
        if merged and since <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], until))
        else:
            merged.append((since, until))
    return merged


def clocks_event_reasons(util: int, power_w: float, profile: GpuProfile, faults: FaultState) -> int:
    """The CLOCKS_EVENT_* bits a GPU reports: idle when nothing runs, the SW power cap when it
    draws its limit, HW slowdown with its thermal / power-brake cause for those faults. A
    degraded GPU sets none: NVIDIA has no reason bit for it, its clocks are just lower."""
    bits = CLOCKS_EVENT_GPU_IDLE if util == 0 else 0
    if power_w >= profile.power_default_limit_w * SW_POWER_CAP_SHARE:
        bits |= CLOCKS_EVENT_SW_POWER_CAP
    if faults.thermal:
        bits |= CLOCKS_EVENT_HW_SLOWDOWN | CLOCKS_EVENT_HW_THERMAL
    if faults.power:
        bits |= CLOCKS_EVENT_HW_SLOWDOWN | CLOCKS_EVENT_HW_POWER_BRAKE
    return bits


def _demand(profile: GpuProfile, physics: LoadPhysics, util: float) -> float:
    """What the load would draw at full boost clock: it rises steeply at low load then
    flattens (as measured on datacenter GPUs) and reaches the limit at the cap onset."""
    span = profile.power_default_limit_w - profile.power_idle_w
    onset = max(1, min(100, physics.cap_onset_util))
    return float(profile.power_idle_w + span * (max(0.0, util) / onset) ** 0.8)


def _power(profile: GpuProfile, util: float) -> float:
    """Mean board power at ``util``: the demand, held at the limit by the SW power cap."""
    return min(profile.power_default_limit_w, _demand(profile, physics_for(profile), util))


def _capped(physics: LoadPhysics, util: int, faults: FaultState) -> bool:
    """The SW power cap holds the board: its load demands the limit (a power brake holds
    power far below the limit, so the SW cap is not what limits it then)."""
    return util > 0 and util >= physics.cap_onset_util and not faults.power


def _power_at(
    gpu_id: str, profile: GpuProfile, util: int, bucket: int, *, seed: int, faults: FaultState
) -> float:
    physics = physics_for(profile)
    limit = profile.power_default_limit_w
    noise = _unit_random(seed, gpu_id, "power", bucket)
    if _capped(physics, util, faults):
        # Held at the limit: within half a percent below it, never above.
        return limit * (1.0 - 0.005 * noise)
    power = _demand(profile, physics, util) + (noise - 0.5) * 2.0
    # Uncapped: below the share at which the cap counts as engaged.
    power = max(profile.power_idle_w * 0.95, min(limit * (SW_POWER_CAP_SHARE - 0.005), power))
    if faults.power:
        # Power brake (external signal): capped at the minimum limit.
        power = min(power, profile.power_min_limit_w)
    return power


def _sm_clock_at(
    gpu_id: str, profile: GpuProfile, util: int, bucket: int, *, seed: int, faults: FaultState
) -> int:
    """SM clock from the power headroom: idle clock when idle, full boost while the load's
    demand stays under the limit, and under the SW power cap lower in proportion to how far the
    demand exceeds the limit, down to the product's measured clock at 100 % load."""
    if util <= 0:
        return profile.clock_sm_idle_mhz
    physics = physics_for(profile)
    top = profile.clock_sm_max_mhz
    clock = top
    if _capped(physics, util, faults):
        limit = profile.power_default_limit_w
        excess_full = _demand(profile, physics, 100) - limit
        excess = _demand(profile, physics, util) - limit
        share = min(1.0, excess / excess_full) if excess_full > 0 else 1.0
        low = min(top, physics.sm_clock_full_load_mhz)
        clock = round(top - (top - low) * share)
        # The controller hunts around its target in the driver's 15 MHz steps.
        if _unit_random(seed, gpu_id, "clock", bucket) < 0.5:
            clock -= 15
    return max(profile.clock_sm_idle_mhz, min(top, clock))


def clock_event_counts(
    gpu: GpuRecord,
    profile: GpuProfile,
    t: float,
    *,
    seed: int = 0,
    window_s: float = CLOCK_EVENTS_WINDOW_SECONDS,
    interval_s: float = DCGM_SAMPLE_INTERVAL_SECONDS,
) -> dict[int, int]:
    """DCGM_EXP_CLOCK_EVENTS_COUNT: per reason bit, how many of DCGM's samples of the last
    ``window_s`` (one every ``interval_s``, on multiples of it) carried that bit. The same
    bits :func:`sample_gpu` reports at each sample instant."""
    counts: dict[int, int] = {}
    if interval_s <= 0 or window_s <= 0:
        return counts
    last = math.floor(t / interval_s)
    first = math.floor((t - window_s) / interval_s) + 1
    for tick in range(first, last + 1):
        at = tick * interval_s
        bucket = math.floor(at / BUCKET_SECONDS)
        faults = faults_at(gpu.faults, at) if gpu.faults else NO_FAULTS
        util = _gpu_utilization_at(gpu, profile, bucket, seed)
        power = _power_at(gpu.id, profile, util, bucket, seed=seed, faults=faults)
        bits = clocks_event_reasons(util, power, profile, faults)
        for bit in range(CLOCKS_EVENT_SUPPORTED.bit_length()):
            if bits & (1 << bit):
                counts[1 << bit] = counts.get(1 << bit, 0) + 1
    return counts


def xid_counts(
    faults: Iterable[Mapping[str, Any]], t: float, *, window_s: float = XID_COUNT_WINDOW_SECONDS
) -> dict[int, int]:
    """DCGM_EXP_XID_ERRORS_COUNT: per XID code, how many XID events of the GPU happened in
    ``[t - window_s, t]``.

    Each ``xid`` entry of the record is one event at its ``since``, as the driver logs one Xid
    line when the error happens: a ``duration`` (``until``) says how long the fault stays
    declared, not that it repeats, so an XID lasting 10 minutes counts once and leaves the
    count ``window_s`` after it began. Only entries the record still holds can count (the
    status-updater drops a fault when it ends or is removed). An entry without a ``since`` (its
    time unknown) is not counted; ``mig`` entries count for their GPU, as DCGM keys the events
    by GPU. The ECC double-bit fault's implied XID 48 is a record entry of its own
    (``fgo_common.faults.record_faults``), so it counts like any other. Bad values are ignored,
    as in :func:`faults_at`."""
    counts: dict[int, int] = {}
    if window_s <= 0:
        return counts
    for fault in faults:
        if not isinstance(fault, Mapping) or fault.get("kind") != FAULT_XID:
            continue
        code = _int(fault, "code")
        try:
            since = float(fault.get("since") or 0.0)
        except (TypeError, ValueError):
            continue
        if code > 0 and since > 0 and t - window_s <= since <= t:
            counts[code] = counts.get(code, 0) + 1
    return counts


@functools.lru_cache(maxsize=256)
def _resolve_profile(
    catalog: ProfileCatalog, key: str, product: str, memory_mib: int
) -> GpuProfile:
    profile = catalog.find(key) if key else None
    if profile is None:
        profile = catalog.find(product)
    if profile is None:
        # A custom product: generic physics, the record's name and memory (as the config does).
        base = catalog.get(DEFAULT_PROFILE_KEY)
        return dataclasses.replace(
            base,
            key=key or f"custom:{product}",
            name=product,
            aliases=(),
            memory_mib=memory_mib,
            memory_reserved_mib=0,
            sources={"all": "custom product: generic values, name and memory from the record"},
        )
    if memory_mib and memory_mib != profile.memory_mib:
        return dataclasses.replace(
            profile,
            memory_mib=memory_mib,
            memory_reserved_mib=min(profile.memory_reserved_mib, memory_mib // 8),
        )
    return profile


def profile_for(gpu: GpuRecord, catalog: ProfileCatalog = BUILTIN_CATALOG) -> GpuProfile:
    """The profile a GPU record names (by key, else by product), with the record's memory;
    products without built-in data get generic physics under their own name."""
    return _resolve_profile(catalog, gpu.profile, gpu.product, gpu.memory_mib)


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


def _utilization_at(usages: Mapping[str, PodUsage], gpu_id: str, bucket: int, seed: int) -> int:
    total = sum(pod_utilization(u, gpu_id, uid, bucket, seed) for uid, u in usages.items())
    return min(100, total)


def _mig_weight(device: MigDevice, profile: GpuProfile) -> float:
    """Share of the GPU's SMs a MIG device owns: how much its load counts for the whole GPU."""
    if profile.sm_count > 0 and device.sm_count > 0:
        return min(1.0, device.sm_count / profile.sm_count)
    slices = profile.mig_max_gpu_instances or 7
    return min(1.0, max(1, device.placement_size) / slices)


def _gpu_utilization_at(gpu: GpuRecord, profile: GpuProfile, bucket: int, seed: int) -> int:
    """Whole-GPU utilisation; on a MIG-enabled GPU the SM-weighted sum of its MIG devices'."""
    if gpu.mig_enabled and gpu.mig_devices:
        total = sum(
            _utilization_at(d.usage, d.uuid, bucket, seed) * _mig_weight(d, profile)
            for d in gpu.mig_devices
        )
        return min(100, round(total))
    return _utilization_at(gpu.status.usage, gpu.id, bucket, seed)


def _extra_energy_j(
    usages: Mapping[str, PodUsage], profile: GpuProfile, weight: float, t: float
) -> float:
    extra = 0.0
    for usage in usages.values():
        mid = (usage.utilization.min + usage.utilization.max) / 2 * weight
        since = usage.since or t
        extra += (_power(profile, mid) - profile.power_idle_w) * max(0.0, t - since)
    return extra


def _energy_mj(gpu: GpuRecord, profile: GpuProfile, t: float, boot: float) -> int:
    """Idle draw since boot, plus each current holder's extra draw since it started, plus what
    holders that have gone already banked: non-decreasing in t by construction."""
    idle_j = profile.power_idle_w * max(0.0, t - boot)
    if gpu.mig_enabled and gpu.mig_devices:
        extra_j = sum(
            _extra_energy_j(d.usage, profile, _mig_weight(d, profile), t) for d in gpu.mig_devices
        )
    else:
        extra_j = _extra_energy_j(gpu.status.usage, profile, 1.0, t)
    return int((idle_j + extra_j + gpu.status.energy_banked_j) * 1000)


def pod_fb_wanted_mib(usage: PodUsage, device_mib: int) -> int:
    """The framebuffer a pod's process asks for on a device of ``device_mib``: the record's
    value, or for a pod recorded as using the whole device (no memory annotation) a CUDA
    context plus a share of the device that follows the middle of its utilisation range."""
    if 0 <= usage.fb_used_mib < device_mib:
        return usage.fb_used_mib
    mid = max(0.0, min(100.0, (usage.utilization.min + usage.utilization.max) / 2.0))
    context = min(CUDA_CONTEXT_MIB, device_mib)
    return context + int((device_mib - context) * DEFAULT_FB_SHARE_AT_FULL_LOAD * mid / 100.0)


def process_fb_mib(
    usages: Mapping[str, PodUsage], device_mib: int, budget_mib: int
) -> dict[str, int]:
    """Each pod's process memory (keyed like ``usages``) on a device of ``device_mib`` with
    ``budget_mib`` usable: what each asks for, granted oldest first (then by UID) until the
    budget is spent, so the processes never hold more than the device has to give."""
    out: dict[str, int] = {}
    left = max(0, budget_mib)
    for uid, usage in sorted(usages.items(), key=lambda item: (item[1].since, item[0])):
        granted = min(left, max(0, pod_fb_wanted_mib(usage, device_mib)))
        out[uid] = granted
        left -= granted
    return out


def _mig_budgets(gpu: GpuRecord, profile: GpuProfile) -> dict[str, int]:
    """Framebuffer each MIG device can show as used: its own size, within what the GPU has
    left after the instances before it (instance sizes normally sum below the usable memory;
    this keeps records with odd sizes coherent too)."""
    left = max(0, gpu.memory_mib - min(profile.memory_reserved_mib, gpu.memory_mib))
    out: dict[str, int] = {}
    for device in sorted(gpu.mig_devices, key=lambda d: (d.gi_id, d.ci_id, d.uuid)):
        out[device.uuid] = min(max(0, device.memory_mib), left)
        left -= out[device.uuid]
    return out


def _mig_fb(device: MigDevice, budget: int) -> tuple[int, dict[str, int]]:
    """(used, per-process) framebuffer of one MIG device with ``budget`` MiB to show."""
    overhead = min(MIG_INSTANCE_OVERHEAD_MIB, budget)
    procs = process_fb_mib(device.usage, device.memory_mib, budget - overhead)
    return overhead + sum(procs.values()), procs


def process_memory_mib(
    gpu: GpuRecord, profile: GpuProfile, device: MigDevice | None = None
) -> dict[str, int]:
    """Framebuffer (MiB) of each pod's process on ``gpu`` (or its MIG ``device``), keyed by
    pod UID: what nvidia-smi lists per process. Their sum never exceeds the device's Used."""
    if device is not None:
        return _mig_fb(device, _mig_budgets(gpu, profile).get(device.uuid, 0))[1]
    total = gpu.memory_mib
    return process_fb_mib(gpu.status.usage, total, total - min(profile.memory_reserved_mib, total))


def _fb_used(gpu: GpuRecord, profile: GpuProfile) -> int:
    if gpu.mig_enabled and gpu.mig_devices:
        budgets = _mig_budgets(gpu, profile)
        return sum(_mig_fb(d, budgets[d.uuid])[0] for d in gpu.mig_devices)
    return sum(process_memory_mib(gpu, profile).values())


def _pod_distribution(low: int, high: int) -> list[float]:
    """P(util = k), k = 0..100, of one pod (as :func:`pod_utilization` draws it)."""
    dist = [0.0] * 101
    if high <= low:
        dist[max(0, min(100, low))] = 1.0
        return dist
    share = 1.0 / (high - low + 1)
    for value in range(low, high + 1):
        dist[max(0, min(100, value))] += share
    return dist


def _sum_capped(a: list[float], b: list[float]) -> list[float]:
    """Distribution of min(100, x + y) for independent x ~ a, y ~ b."""
    out = [0.0] * 101
    for i, pa in enumerate(a):
        if pa:
            for j, pb in enumerate(b):
                if pb:
                    out[min(100, i + j)] += pa * pb
    return out


@functools.lru_cache(maxsize=1024)
def _cap_probability(
    groups: tuple[tuple[float, tuple[tuple[int, int], ...]], ...], onset: int, mig: bool
) -> float:
    """Share of buckets in which pods with these utilisation ranges drive the GPU to the cap
    onset: each group is (weight, pod ranges) of one device (the GPU itself, or a MIG device
    whose load counts for the GPU by its SM share, as :func:`_gpu_utilization_at` sums it)."""
    if not mig:
        dist = [1.0] + [0.0] * 100
        for low, high in groups[0][1] if groups else ():
            dist = _sum_capped(dist, _pod_distribution(low, high))
        return sum(dist[onset:])
    # MIG: weighted device loads, summed on a 1 % grid.
    total = [1.0] + [0.0] * 100
    peak = 0.0
    for weight, ranges in groups:
        dev = [1.0] + [0.0] * 100
        for low, high in ranges:
            dev = _sum_capped(dev, _pod_distribution(low, high))
        scaled = [0.0] * 101
        for value, chance in enumerate(dev):
            scaled[min(100, round(value * weight))] += chance
        total = _sum_capped(total, scaled)
        peak += weight * min(100, sum(max(lo, hi) for lo, hi in ranges))
    if round(peak) < onset:
        return 0.0
    # The grid's rounding must not hide a load that can reach the onset.
    return max(sum(total[onset:]), 1e-3)


def _overlap(spans: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans)


def sw_power_cap_ns(
    gpu: GpuRecord,
    profile: GpuProfile,
    t: float,
    *,
    boot_time: float = DEFAULT_BOOT_TIME,
) -> int:
    """The SW Power Capping counter (ns): time since ``boot_time`` the SW power cap held the
    GPU, from its current holders as energy is. Between two holders' start times the set of
    holders is fixed and the counter grows at the share of buckets whose load reaches the cap
    onset (each such bucket reports the SW Power Cap reason), except while a power brake holds
    power below the cap. Pure in (record, t), so it survives restarts; non-decreasing in t
    while the record keeps its holders. A holder without a start time counts from boot."""
    onset = max(1, min(100, physics_for(profile).cap_onset_util))
    mig = gpu.mig_enabled and bool(gpu.mig_devices)
    groups: list[tuple[float, Mapping[str, PodUsage]]]
    if mig:
        groups = [(_mig_weight(d, profile), d.usage) for d in gpu.mig_devices]
    else:
        groups = [(1.0, gpu.status.usage)]
    starts = sorted(
        {max(boot_time, u.since or boot_time) for _, group in groups for u in group.values()}
    )
    starts = [start for start in starts if start < t]
    if not starts:
        return 0
    brake = fault_spans(gpu.faults, FAULT_POWER, t, boot_time) if gpu.faults else []
    total = 0.0
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else t
        key = tuple(
            (
                round(weight, 6),
                tuple(
                    sorted(
                        (u.utilization.min, u.utilization.max)
                        for u in group.values()
                        if max(boot_time, u.since or boot_time) <= start
                    )
                ),
            )
            for weight, group in groups
        )
        share = _cap_probability(key, onset, mig)
        if share > 0:
            total += share * (end - start - _overlap(brake, start, end))
    return int(total * 1e9)


def sample_gpu(
    gpu: GpuRecord,
    profile: GpuProfile,
    t: float,
    *,
    seed: int = 0,
    boot_time: float = DEFAULT_BOOT_TIME,
) -> GpuSample:
    """Sample ``gpu`` at unix time ``t`` (a MIG device: :func:`sample_mig_device`)."""
    bucket = math.floor(t / BUCKET_SECONDS)

    def util_at(b: int) -> int:
        return _gpu_utilization_at(gpu, profile, b, seed)

    loaded = bool(gpu.status.usage) or (gpu.mig_enabled and any(d.usage for d in gpu.mig_devices))
    if loaded:
        util = util_at(bucket)
        lagged = (
            util + sum(util_at(bucket - lag) for lag in range(1, TEMPERATURE_LAG_BUCKETS))
        ) / float(TEMPERATURE_LAG_BUCKETS)
    else:
        util, lagged = 0, 0.0  # nobody uses it now or in the lag window: skip the hashing
    faults = faults_at(gpu.faults, t) if gpu.faults else NO_FAULTS

    power = _power_at(gpu.id, profile, util, bucket, seed=seed, faults=faults)
    temp_span = profile.temp_max_load_c - profile.temp_idle_c
    temp = profile.temp_idle_c + temp_span * (lagged / 100.0) ** 0.9
    temp += (_unit_random(seed, gpu.id, "temp", bucket) - 0.5) * 1.0

    busy = util > 0
    sm_clock = _sm_clock_at(gpu.id, profile, util, bucket, seed=seed, faults=faults)
    if faults.thermal:
        # Thermal slowdown: the GPU sits at its slowdown threshold and sheds clock to stay there.
        temp = max(temp, profile.temp_slowdown_c + 1.0)
        if busy:
            sm_clock = min(sm_clock, int(profile.clock_sm_base_mhz * 0.6))
    if faults.power and busy:
        # Power brake (external signal): power capped at the minimum limit, clocks follow.
        sm_clock = min(sm_clock, int(profile.clock_sm_base_mhz * 0.5))
    if faults.degraded:
        # A degraded GPU cannot reach its clocks (idle clocks are below the cap anyway).
        sm_clock = min(sm_clock, int(profile.clock_sm_base_mhz * DEGRADED_CLOCK_SHARE))

    total = gpu.memory_mib
    reserved = min(profile.memory_reserved_mib, total)
    used = max(0, min(total - reserved, _fb_used(gpu, profile)))
    # Holders that have gone keep their capped time: the status-updater banks it in the record.
    sw_cap_ns = sw_power_cap_ns(gpu, profile, t, boot_time=boot_time)
    sw_cap_ns += gpu.status.sw_cap_banked_ns
    brake_ns = violation_ns(gpu.faults, FAULT_POWER, t, boot_time) if gpu.faults else 0
    ratio = util / 100.0
    pcie_peak = 2_000_000_000 * profile.pcie_generation * profile.pcie_link_width // 16
    if faults.degraded:
        pcie_peak = int(pcie_peak * DEGRADED_PCIE_SHARE)
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
        mem_temp_c=(round(temp) + profile.memory_temp_offset_c)
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
        pcie_replay_count=faults.pcie_replay_count,
        pstate=0,
        xid_last=faults.xid_last,
        ecc_sbe_volatile=faults.ecc_sbe_volatile,
        ecc_dbe_volatile=faults.ecc_dbe_volatile,
        ecc_sbe_aggregate=faults.ecc_sbe_aggregate,
        ecc_dbe_aggregate=faults.ecc_dbe_aggregate,
        remapped_rows_correctable=faults.remapped_rows_correctable,
        remapped_rows_uncorrectable=faults.remapped_rows_uncorrectable,
        row_remap_failure=faults.row_remap_failure,
        thermal_throttled=faults.thermal,
        power_throttled=faults.power,
        degraded=faults.degraded,
        clocks_event_reasons=clocks_event_reasons(util, power, profile, faults),
        # Time under each slowdown: the SW cap from the holders' load, the HW slowdowns from
        # the record's faults (while it keeps them).
        thermal_violation_ns=violation_ns(gpu.faults, FAULT_THERMAL, t, boot_time)
        if gpu.faults
        else 0,
        power_violation_ns=sw_cap_ns + brake_ns,
        sw_power_cap_ns=sw_cap_ns,
        power_brake_ns=brake_ns,
        memory_power_w=_rounded(memory_power_w(physics_for(profile), power)),
        bar1_used_mib=_bar1_used(profile, used),
        fan_speed_percent=fan_speed_percent(profile, round(temp)),
        video_clock_mhz=video_clock_mhz(profile, sm_clock),
        tlimit_margin_c=profile.temp_max_operating_c - round(temp),
    )


def fan_speed_percent(profile: GpuProfile, gpu_temp_c: int) -> int | None:
    """Fan duty of an actively cooled board at ``gpu_temp_c``: a 30 % floor, rising linearly
    to 100 % at the profile's full-load temperature, as the boards' firmware curves do. None
    for passively cooled boards (no fan: NVML reports N/A)."""
    if profile.fan_count == 0:
        return None
    span = max(1, profile.temp_max_load_c - profile.temp_idle_c)
    rise = max(0, gpu_temp_c - profile.temp_idle_c)
    return min(100, 30 + 70 * rise // span)


def video_clock_mhz(profile: GpuProfile, sm_clock_mhz: int) -> int:
    """The video clock scales with the SM clock (one clock domain tree), up to its maximum."""
    if profile.clock_sm_max_mhz <= 0:
        return profile.clock_video_max_mhz
    return min(
        profile.clock_video_max_mhz,
        round(profile.clock_video_max_mhz * sm_clock_mhz / profile.clock_sm_max_mhz),
    )


def _bar1_used(profile: GpuProfile, fb_used: int) -> int:
    """BAR1 in use. Boards whose BAR1 covers the framebuffer map what the processes allocated
    (real H100: ~11252 MiB BAR1 at ~11251 MiB FB under load, 1 MiB idle); small-BAR boards
    (a 256 MiB BAR1) keep only a few MiB mapped (estimate)."""
    if profile.bar1_mib <= 0:
        return 0
    if profile.bar1_mib >= profile.memory_mib:
        return min(profile.bar1_mib, fb_used + 1)
    return min(profile.bar1_mib, 5 if fb_used > 0 else 1)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def sample_mig_device(
    gpu: GpuRecord,
    device: MigDevice,
    profile: GpuProfile,
    t: float,
    *,
    seed: int = 0,
    boot_time: float = DEFAULT_BOOT_TIME,
    parent: GpuSample | None = None,
) -> GpuSample:
    """Sample one MIG device of ``gpu`` as DCGM reports a GPU instance.

    Utilisation, framebuffer and the profiling ratios are the instance's own (its share of the
    parent's load is what :func:`sample_gpu` adds up); power, temperatures, clocks, energy, PCIe
    replays and error counters are device-wide, so they equal the parent's. Pass ``parent``
    (``sample_gpu`` of the same GPU at the same ``t``) to avoid computing it again.
    """
    if parent is None:
        parent = sample_gpu(gpu, profile, t, seed=seed, boot_time=boot_time)
    bucket = math.floor(t / BUCKET_SECONDS)
    util = _utilization_at(device.usage, device.uuid, bucket, seed)
    total = device.memory_mib
    used, procs = _mig_fb(device, _mig_budgets(gpu, profile).get(device.uuid, 0))
    ratio = util / 100.0
    weight = _mig_weight(device, profile)
    pcie_peak = 2_000_000_000 * profile.pcie_generation * profile.pcie_link_width // 16
    if parent.degraded:
        pcie_peak = int(pcie_peak * DEGRADED_PCIE_SHARE)
    return dataclasses.replace(
        parent,
        gpu_util=util,
        mem_copy_util=int(util * 0.35),
        fb_total_mib=total,
        fb_used_mib=used,
        fb_free_mib=max(0, total - used),
        fb_reserved_mib=0,
        # What the instance's processes allocated; its BAR1 aperture is sized by nvidia-smi.
        bar1_used_mib=sum(procs.values()),
        gr_engine_active=round(ratio, 6),
        sm_active=round(ratio * 0.92, 6),
        sm_occupancy=round(ratio * 0.55, 6),
        tensor_active=round(ratio * 0.45, 6),
        dram_active=round(ratio * 0.38, 6),
        fp16_active=round(ratio * 0.05, 6),
        pcie_tx_bytes_per_s=int(pcie_peak * ratio * weight * 0.05),
        pcie_rx_bytes_per_s=int(pcie_peak * ratio * weight * 0.12),
    )
