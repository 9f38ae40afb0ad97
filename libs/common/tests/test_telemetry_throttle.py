"""Telemetry model: clock event reasons, violation counters, clock-event counts, degraded
performance, and the DCGM health watches of fgo_common.faults (issue 12)."""

from __future__ import annotations

import dataclasses

from fgo_common.config import load_cluster_config
from fgo_common.faults import dcgm_health, is_critical
from fgo_common.names import (
    HEALTH_RESULT_FAIL,
    HEALTH_RESULT_PASS,
    HEALTH_RESULT_WARN,
    HEALTH_WATCH_SYSTEMS,
)
from fgo_common.nodebuild import build_node_topology
from fgo_common.telemetry import (
    CLOCKS_EVENT_GPU_IDLE,
    CLOCKS_EVENT_HW_POWER_BRAKE,
    CLOCKS_EVENT_HW_SLOWDOWN,
    CLOCKS_EVENT_HW_THERMAL,
    CLOCKS_EVENT_SW_POWER_CAP,
    DEFAULT_BOOT_TIME,
    NO_FAULTS,
    FaultState,
    clock_event_counts,
    clocks_event_reasons,
    profile_for,
    sample_gpu,
    violation_ns,
)
from fgo_common.topology import GpuRecord, Holder, PodUsage, UtilizationRange

T0 = 1_780_000_000.0


def _gpu(*faults: dict[str, object], util: int | None = None) -> GpuRecord:
    config = load_cluster_config("nodePools: {p: {gpus: [{type: H100, count: 1}]}}")
    gpu = build_node_topology("n", config.pools["p"], config, kwok=True).gpus[0]
    gpu.faults = [dict(f) for f in faults]
    if util is not None:
        gpu.status.holders.append(Holder("ns", "p", "c", "uid"))
        gpu.status.usage["uid"] = PodUsage(UtilizationRange(util, util), 1000, since=T0 - 900)
    return gpu


# --- violation counters -----------------------------------------------------------------------


def test_violation_counts_active_time_in_ns_up_to_now() -> None:
    faults = [{"kind": "thermal", "since": T0 - 30, "until": T0 + 30}]
    assert violation_ns(faults, "thermal", T0, DEFAULT_BOOT_TIME) == 30 * 10**9
    assert violation_ns(faults, "thermal", T0 + 100, DEFAULT_BOOT_TIME) == 60 * 10**9
    assert violation_ns(faults, "thermal", T0 - 60, DEFAULT_BOOT_TIME) == 0
    assert violation_ns(faults, "power", T0, DEFAULT_BOOT_TIME) == 0


def test_violation_overlapping_faults_count_once_and_never_before_boot() -> None:
    faults = [
        {"kind": "power", "since": T0 - 100, "until": T0 - 40},
        {"kind": "power", "since": T0 - 60, "until": T0 - 20},
        {"kind": "power"},  # no since: active since boot
    ]
    boot = T0 - 200
    assert violation_ns(faults, "power", T0, boot) == 200 * 10**9
    assert violation_ns(faults[:2], "power", T0, boot) == 80 * 10**9


def test_violation_is_non_decreasing_in_time() -> None:
    faults = [{"kind": "thermal", "since": T0 + 5, "until": T0 + 17}]
    values = [violation_ns(faults, "thermal", T0 + dt, DEFAULT_BOOT_TIME) for dt in range(30)]
    assert values == sorted(values) and values[-1] == 12 * 10**9


# --- clock event reasons ----------------------------------------------------------------------


def test_reason_bits_per_cause() -> None:
    profile = profile_for(_gpu())
    idle_power = profile.power_idle_w
    limit = profile.power_default_limit_w
    assert clocks_event_reasons(0, idle_power, profile, NO_FAULTS) == CLOCKS_EVENT_GPU_IDLE
    assert clocks_event_reasons(100, limit, profile, NO_FAULTS) == CLOCKS_EVENT_SW_POWER_CAP
    assert clocks_event_reasons(50, idle_power * 2, profile, NO_FAULTS) == 0
    thermal = clocks_event_reasons(50, idle_power * 2, profile, FaultState(thermal=True))
    assert thermal == CLOCKS_EVENT_HW_SLOWDOWN | CLOCKS_EVENT_HW_THERMAL
    brake = clocks_event_reasons(50, idle_power * 2, profile, FaultState(power=True))
    assert brake == CLOCKS_EVENT_HW_SLOWDOWN | CLOCKS_EVENT_HW_POWER_BRAKE
    # NVIDIA has no reason bit for a degraded GPU.
    assert clocks_event_reasons(50, idle_power * 2, profile, FaultState(degraded=True)) == 0


def test_sample_carries_the_bits_and_counters_of_its_faults() -> None:
    gpu = _gpu({"kind": "thermal", "since": T0 - 50}, {"kind": "power", "since": T0 - 20})
    sample = sample_gpu(gpu, profile_for(gpu), T0)
    expected = CLOCKS_EVENT_GPU_IDLE | CLOCKS_EVENT_HW_SLOWDOWN
    expected |= CLOCKS_EVENT_HW_THERMAL | CLOCKS_EVENT_HW_POWER_BRAKE
    assert sample.clocks_event_reasons == expected
    assert (sample.thermal_violation_ns, sample.power_violation_ns) == (50 * 10**9, 20 * 10**9)
    healthy = sample_gpu(_gpu(), profile_for(gpu), T0)
    assert healthy.clocks_event_reasons == CLOCKS_EVENT_GPU_IDLE
    assert (healthy.thermal_violation_ns, healthy.power_violation_ns) == (0, 0)


# --- degraded ---------------------------------------------------------------------------------


def test_degraded_lowers_sm_clock_and_pcie_throughput_under_load() -> None:
    fault = {"kind": "degraded", "since": T0 - 10}
    busy, slow = _gpu(util=60), _gpu(fault, util=60)
    profile = profile_for(busy)
    fast_s, slow_s = sample_gpu(busy, profile, T0), sample_gpu(slow, profile, T0)
    assert fast_s.gpu_util == slow_s.gpu_util == 60
    assert slow_s.sm_clock_mhz < fast_s.sm_clock_mhz
    assert slow_s.sm_clock_mhz <= profile.clock_sm_base_mhz * 0.7
    assert 0 < slow_s.pcie_tx_bytes_per_s < fast_s.pcie_tx_bytes_per_s
    assert 0 < slow_s.pcie_rx_bytes_per_s < fast_s.pcie_rx_bytes_per_s
    assert slow_s.degraded and not fast_s.degraded
    # Before the fault starts, nothing differs.
    assert (
        sample_gpu(slow, profile, T0 - 20).sm_clock_mhz
        == sample_gpu(busy, profile, T0 - 20).sm_clock_mhz
    )


# --- DCGM_EXP_CLOCK_EVENTS_COUNT --------------------------------------------------------------


def test_clock_event_counts_count_samples_in_the_window() -> None:
    # Thermal from 95 s before t (a multiple of 30 s): DCGM samples at t-90, -60, -30, 0.
    t = T0 - T0 % 30
    gpu = _gpu({"kind": "thermal", "since": t - 95})
    counts = clock_event_counts(gpu, profile_for(gpu), t, window_s=300, interval_s=30)
    assert counts == {
        CLOCKS_EVENT_GPU_IDLE: 10,
        CLOCKS_EVENT_HW_SLOWDOWN: 4,
        CLOCKS_EVENT_HW_THERMAL: 4,
    }
    # A shorter window sees fewer samples; an ended fault drops out of the window.
    short = clock_event_counts(gpu, profile_for(gpu), t, window_s=60, interval_s=30)
    assert short[CLOCKS_EVENT_HW_THERMAL] == 2
    gone = _gpu({"kind": "thermal", "since": t - 1000, "until": t - 400})
    assert CLOCKS_EVENT_HW_THERMAL not in clock_event_counts(gone, profile_for(gone), t)


def test_clock_event_counts_agree_with_sample_gpu_at_each_sample() -> None:
    t = T0 - T0 % 30 + 29  # between two samples: the last one is at t - 29
    gpu = _gpu({"kind": "power", "since": t - 29 - 95}, util=100)
    profile = profile_for(gpu)
    counts = clock_event_counts(gpu, profile, t, window_s=300, interval_s=30)
    expected: dict[int, int] = {}
    for k in range(10):
        bits = sample_gpu(gpu, profile, t - 29 - 30 * k).clocks_event_reasons
        for bit in (1 << b for b in range(9)):
            if bits & bit:
                expected[bit] = expected.get(bit, 0) + 1
    assert counts == expected and counts[CLOCKS_EVENT_HW_POWER_BRAKE] == 4


# --- DCGM health (fgo_common.faults) ----------------------------------------------------------


def _failing(faults: list[dict[str, object]]) -> set[str]:
    return {s for s, (result, _) in dcgm_health(faults, T0).items() if result == HEALTH_RESULT_FAIL}


def test_health_fail_exactly_when_nvidia_rule_says_unhealthy() -> None:
    cases = [
        {"kind": "xid", "code": 79},
        {"kind": "xid", "code": 48},
        {"kind": "xid", "code": 95},
        {"kind": "xid", "code": 31},
        {"kind": "xid", "code": 13},
        {"kind": "xid", "code": 92},
        {"kind": "lost"},
        {"kind": "ecc", "sbeVolatile": 3, "dbeVolatile": 0},
        {"kind": "thermal"},
        {"kind": "power"},
        {"kind": "pcieReplay", "count": 9},
        {"kind": "degraded"},
        {"xid": 64},  # the record's earliest spelling
    ]
    for fault in cases:
        critical = is_critical(fault) or "xid" in fault
        assert bool(_failing([fault])) == critical, fault


def test_health_systems_and_codes() -> None:
    health = dcgm_health([{"kind": "xid", "code": 79}, {"kind": "thermal"}], T0)
    assert set(health) == set(HEALTH_WATCH_SYSTEMS)
    assert health["PCIE"] == (HEALTH_RESULT_FAIL, "DCGM_FR_XID_ERROR")
    assert health["THERMAL"] == (HEALTH_RESULT_WARN, "DCGM_FR_CLOCK_THROTTLE_THERMAL")
    assert health["MEM"] == (HEALTH_RESULT_PASS, "DCGM_FR_OK")
    assert dcgm_health([{"kind": "xid", "code": 48}], T0)["MEM"] == (
        HEALTH_RESULT_FAIL,
        "DCGM_FR_VOLATILE_DBE_DETECTED",
    )
    assert dcgm_health([{"kind": "ecc", "sbeVolatile": 2}], T0)["MEM"] == (
        HEALTH_RESULT_WARN,
        "DCGM_FR_VOLATILE_SBE_DETECTED",
    )
    # WARN never hides a FAIL on the same system.
    both = dcgm_health([{"kind": "pcieReplay", "count": 1}, {"kind": "lost"}], T0)
    assert both["PCIE"][0] == HEALTH_RESULT_FAIL
    assert all(v == (HEALTH_RESULT_PASS, "DCGM_FR_OK") for v in dcgm_health([], T0).values())


def test_health_mig_only_fault_warns_and_inactive_faults_pass() -> None:
    mig = dcgm_health([{"kind": "xid", "code": 79, "mig": "MIG-x"}], T0)
    assert mig["PCIE"] == (HEALTH_RESULT_WARN, "DCGM_FR_XID_ERROR")
    later = [{"kind": "xid", "code": 79, "since": T0 + 10}]
    assert not _failing(later)
    assert _failing([dict(later[0], since=T0 - 10)]) == {"PCIE"}
    ended = [{"kind": "lost", "since": T0 - 20, "until": T0 - 10}]
    assert not _failing(ended)


def test_gpu_sample_is_unchanged_without_faults() -> None:
    """The new fields default to the no-fault values for a record without faults."""
    gpu = _gpu(util=30)
    sample = sample_gpu(gpu, profile_for(gpu), T0)
    assert dataclasses.replace(sample, clocks_event_reasons=0) == dataclasses.replace(
        sample, clocks_event_reasons=0, thermal_violation_ns=0, power_violation_ns=0
    )
    assert not sample.degraded
