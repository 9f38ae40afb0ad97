"""Properties of the telemetry model over random records and times (issue 21): numbers that a
real GPU can never show together must never come out of the model together.

* memory: sum of process memory <= Used <= Total - Reserved, Free = Total - Reserved - Used,
  for whole GPUs, MIG-enabled GPUs and every MIG instance;
* power <= the limit, SM clock <= its maximum, lower under the SW power cap than at boost;
* the SW power-capping counter never decreases and grows while the reason is active.
"""

from __future__ import annotations

import math

from fgo_common.identity import gpu_uuid, mig_uuid
from fgo_common.profiles import BUILTIN_CATALOG, GpuProfile
from fgo_common.profiles._data import BUILTIN_PROFILES
from fgo_common.telemetry import (
    BUCKET_SECONDS,
    CLOCKS_EVENT_GPU_IDLE,
    CLOCKS_EVENT_SW_POWER_CAP,
    process_memory_mib,
    profile_for,
    sample_gpu,
    sample_mig_device,
    sw_power_cap_ns,
)
from fgo_common.telemetry_physics import physics_for
from fgo_common.topology import GpuRecord, Holder, MigDevice, PodUsage, UtilizationRange
from hypothesis import given, settings
from hypothesis import strategies as st

T0 = 1_790_000_000.0
KEYS = sorted(p.key for p in BUILTIN_PROFILES)
EXAMPLES = settings(max_examples=300, deadline=None)


@st.composite
def _usage(draw: st.DrawFn, device_mib: int) -> PodUsage:
    low = draw(st.integers(0, 100))
    high = draw(st.integers(low, 100))
    # Explicit use (annotation), the whole device (no annotation), or more than exists.
    fb = draw(
        st.one_of(
            st.integers(0, device_mib),
            st.just(device_mib),
            st.integers(device_mib, device_mib * 2 + 1),
        )
    )
    since = draw(st.one_of(st.just(0.0), st.floats(T0 - 7 * 86400, T0)))
    return PodUsage(UtilizationRange(low, high), fb, since=since)


def _hold(usages: dict[str, PodUsage], holders: list[Holder], usage: PodUsage, n: int) -> None:
    uid = f"uid-{len(usages)}-{n}"
    usages[uid] = usage
    holders.append(Holder("ns", uid, "c", uid))


@st.composite
def records(draw: st.DrawFn) -> GpuRecord:
    profile = BUILTIN_CATALOG.get(draw(st.sampled_from(KEYS)))
    gpu = GpuRecord(
        id=gpu_uuid("node", 0), index=0, minor=0, product=profile.name,
        memory_mib=profile.memory_mib, profile=profile.key, bus_id="00000000:18:00.0",
    )  # fmt: skip
    if profile.mig_capable and draw(st.booleans()):
        gpu.mig_enabled = True
        start, slices = 0, 8
        for gi in range(1, 8):
            spec = draw(st.sampled_from(profile.mig_profiles))
            if start + spec.memory_slices > slices:
                break
            device = MigDevice(
                mig_uuid(gpu.id, gi, 0), spec.name, gi, 0, spec.gi_profile_id,
                spec.ci_profile_id, start, spec.memory_slices, spec.memory_mib, spec.sm_count,
            )  # fmt: skip
            start += spec.memory_slices
            for n in range(draw(st.integers(0, 2))):
                _hold(device.usage, device.holders, draw(_usage(spec.memory_mib)), n)
            gpu.mig_devices.append(device)
    else:
        for n in range(draw(st.integers(0, 4))):
            _hold(gpu.status.usage, gpu.status.holders, draw(_usage(gpu.memory_mib)), n)
    return gpu


times = st.floats(T0, T0 + 86400)


@EXAMPLES
@given(records(), times)
def test_memory_invariant(gpu: GpuRecord, t: float) -> None:
    profile = profile_for(gpu)
    s = sample_gpu(gpu, profile, t)
    assert 0 <= s.fb_used_mib <= s.fb_total_mib - s.fb_reserved_mib
    assert s.fb_free_mib == s.fb_total_mib - s.fb_reserved_mib - s.fb_used_mib
    if not gpu.mig_enabled:
        procs = process_memory_mib(gpu, profile)
        assert sum(procs.values()) <= s.fb_used_mib
        assert all(m >= 0 for m in procs.values())
        # An unannotated pod never shows the whole board as its own.
        assert all(m < gpu.memory_mib for m in procs.values())
        assert s.bar1_used_mib <= profile.bar1_mib
        return
    used = 0
    for device in gpu.mig_devices:
        m = sample_mig_device(gpu, device, profile, t, parent=s)
        procs = process_memory_mib(gpu, profile, device)
        assert sum(procs.values()) <= m.fb_used_mib <= m.fb_total_mib
        assert m.fb_free_mib == m.fb_total_mib - m.fb_used_mib
        used += m.fb_used_mib
    assert used == s.fb_used_mib


@EXAMPLES
@given(records(), times)
def test_power_and_clock_stay_in_their_envelope(gpu: GpuRecord, t: float) -> None:
    profile = profile_for(gpu)
    s = sample_gpu(gpu, profile, t)
    assert s.power_w <= profile.power_default_limit_w
    assert profile.clock_sm_idle_mhz <= s.sm_clock_mhz <= profile.clock_sm_max_mhz
    if s.memory_power_w is not None:
        assert 0 <= s.memory_power_w <= s.power_w
    if s.clocks_event_reasons & CLOCKS_EVENT_SW_POWER_CAP:
        assert s.power_w >= profile.power_default_limit_w * 0.99
        assert not s.clocks_event_reasons & CLOCKS_EVENT_GPU_IDLE
        if s.gpu_util >= physics_for(profile).cap_onset_util + 5:
            assert s.sm_clock_mhz < profile.clock_sm_max_mhz
    elif s.gpu_util > 0:
        assert s.sm_clock_mhz == profile.clock_sm_max_mhz
        assert s.power_w < profile.power_default_limit_w * 0.99


@EXAMPLES
@given(records(), times, st.floats(0.001, 3 * 86400))
def test_power_cap_counter_is_monotonic_and_grows_while_active(
    gpu: GpuRecord, t: float, later: float
) -> None:
    profile = profile_for(gpu)
    first, second = sample_gpu(gpu, profile, t), sample_gpu(gpu, profile, t + later)
    assert first.sw_power_cap_ns <= second.sw_power_cap_ns
    assert first.power_violation_ns <= second.power_violation_ns
    assert first.energy_mj <= second.energy_mj
    # Pure: a restarted reader computes the same counter for the same instant.
    assert sw_power_cap_ns(gpu, profile, t) == first.sw_power_cap_ns
    if first.clocks_event_reasons & CLOCKS_EVENT_SW_POWER_CAP:
        # Within the same bucket the reason stays active, and the counter moves.
        end = (math.floor(t / BUCKET_SECONDS) + 1) * BUCKET_SECONDS
        assert sw_power_cap_ns(gpu, profile, (t + end) / 2) > first.sw_power_cap_ns or (
            end - t < 1e-6
        )
    if not gpu.status.usage and not any(d.usage for d in gpu.mig_devices):
        assert second.sw_power_cap_ns == 0


def _loaded(profile: GpuProfile, low: int, high: int) -> GpuRecord:
    gpu = GpuRecord(
        id=gpu_uuid("node", 1), index=0, minor=0, product=profile.name,
        memory_mib=profile.memory_mib, profile=profile.key, bus_id="00000000:18:00.0",
    )  # fmt: skip
    gpu.status.holders.append(Holder("ns", "p", "c", "uid"))
    gpu.status.usage["uid"] = PodUsage(
        UtilizationRange(low, high), profile.memory_mib, since=T0 - 3600
    )
    return gpu


def test_full_load_is_capped_at_the_measured_clock_per_product() -> None:
    for key in KEYS:
        profile = BUILTIN_CATALOG.get(key)
        physics = physics_for(profile)
        full = _loaded(profile, 100, 100)
        clocks = {sample_gpu(full, profile, T0 + 10 * i).sm_clock_mhz for i in range(20)}
        low = physics.sm_clock_full_load_mhz
        assert clocks <= {low, low - 15}, key
        s = sample_gpu(full, profile, T0)
        assert s.clocks_event_reasons & CLOCKS_EVENT_SW_POWER_CAP, key
        # An hour at 100 %: the counter holds the whole hour.
        assert s.sw_power_cap_ns == 3600 * 10**9, key
        light = _loaded(profile, 10, 30)
        quiet = sample_gpu(light, profile, T0)
        assert quiet.sm_clock_mhz == profile.clock_sm_max_mhz, key
        assert quiet.sw_power_cap_ns == 0, key


def test_h100_numbers_match_the_real_board() -> None:
    profile = BUILTIN_CATALOG.get("h100")
    s = sample_gpu(_loaded(profile, 100, 100), profile, T0)
    assert 1290 <= s.sm_clock_mhz <= 1305  # real: 1290-1335 MHz at 100 % and 700 W
    assert 696.0 <= s.power_w <= 700.0
    assert s.memory_power_w is not None and 130 <= s.memory_power_w <= 140  # real: ~137 W
    # An unannotated pod at 100 %: a realistic share, not the whole board.
    used = sample_gpu(_loaded(profile, 100, 100), profile, T0).fb_used_mib
    assert used < profile.memory_mib - profile.memory_reserved_mib
    assert s.bar1_used_mib == used + 1  # real: BAR1 used ~ FB used under load
