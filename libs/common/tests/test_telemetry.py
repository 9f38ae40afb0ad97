"""The telemetry model: pure, coherent, reproducible."""

from __future__ import annotations

import dataclasses

from fgo_common.config import load_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.profiles import BUILTIN_CATALOG
from fgo_common.telemetry import BUCKET_SECONDS, sample_gpu
from fgo_common.topology import Holder, PodUsage, UtilizationRange

CONFIG = load_cluster_config("nodePools: {p: {gpus: [{type: H100, count: 1}]}}")
T0 = 1_780_000_000.0


def _busy_gpu(low: int, high: int):  # type: ignore[no-untyped-def]
    node = build_node_topology("n", CONFIG.pools["p"], CONFIG, kwok=True)
    gpu = node.gpus[0]
    gpu.status.holders = [Holder("ns", "p", "c", "uid")]
    gpu.status.usage["uid"] = PodUsage(UtilizationRange(low, high), 40_000, since=T0 - 3600)
    return gpu, BUILTIN_CATALOG.get(gpu.profile)


def test_same_inputs_same_numbers() -> None:
    gpu, profile = _busy_gpu(10, 90)
    assert sample_gpu(gpu, profile, T0) == sample_gpu(gpu, profile, T0)
    first, later = sample_gpu(gpu, profile, T0), sample_gpu(gpu, profile, T0 + 0.5)
    # Within one bucket only the energy and power-capping counters move.
    assert (
        dataclasses.replace(
            later,
            energy_mj=first.energy_mj,
            sw_power_cap_ns=first.sw_power_cap_ns,
            power_violation_ns=first.power_violation_ns,
        )
        == first
    )
    assert sample_gpu(gpu, profile, T0, seed=1) != sample_gpu(gpu, profile, T0, seed=2)


def test_utilization_within_range_and_moves() -> None:
    gpu, profile = _busy_gpu(10, 90)
    values = [sample_gpu(gpu, profile, T0 + i * BUCKET_SECONDS).gpu_util for i in range(200)]
    assert min(values) >= 10
    assert max(values) <= 90
    assert len(set(values)) > 20


def test_power_temperature_follow_load() -> None:
    idle_gpu, profile = _busy_gpu(0, 0)
    busy_gpu, _ = _busy_gpu(100, 100)
    idle = sample_gpu(idle_gpu, profile, T0)
    busy = sample_gpu(busy_gpu, profile, T0)
    assert (
        profile.power_idle_w * 0.9 <= idle.power_w < busy.power_w <= profile.power_default_limit_w
    )
    assert idle.gpu_temp_c < busy.gpu_temp_c
    assert idle.sm_clock_mhz < busy.sm_clock_mhz
    assert busy.tensor_active > idle.tensor_active


def test_framebuffer_never_exceeds_total() -> None:
    gpu, profile = _busy_gpu(50, 50)
    gpu.status.usage["uid"].fb_used_mib = 10**7
    sample = sample_gpu(gpu, profile, T0)
    assert sample.fb_used_mib + sample.fb_free_mib + sample.fb_reserved_mib == sample.fb_total_mib
    assert sample.fb_free_mib >= 0


def test_energy_monotonic() -> None:
    gpu, profile = _busy_gpu(20, 80)
    energies = [sample_gpu(gpu, profile, T0 + i * 7.3).energy_mj for i in range(100)]
    assert energies == sorted(energies)
    assert energies[-1] > energies[0]
