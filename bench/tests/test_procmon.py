import os

import pytest

from bench import procmon
from bench.procmon import ProcSample, Sample


def _sample(t: float, phase: str, busy: float, **procs: tuple[int, float, int]) -> Sample:
    return Sample(t, phase, {n: ProcSample(*v) for n, v in procs.items()}, busy, t * 2)


GROUPS = {"su": "ours", "api": "control-plane"}


def test_phase_summary_rates_and_memory() -> None:
    samples = [
        _sample(0.0, "setup", 0.0, su=(1, 0.0, 100), api=(2, 0.0, 1000)),
        _sample(1.0, "idle", 1.0, su=(1, 0.5, 200), api=(2, 0.25, 1000)),
        _sample(2.0, "idle", 2.0, su=(1, 1.0, 300), api=(2, 0.5, 3000)),
        _sample(3.0, "churn", 4.0, su=(1, 3.0, 900), api=(2, 1.5, 3000)),
    ]
    idle = procmon.summarize_phase(samples, "idle", GROUPS.__getitem__)
    assert idle.duration_s == 2.0
    su = idle.procs["su"]
    assert su.group == "ours"
    assert su.cpu_seconds == pytest.approx(1.0)
    assert su.cpu_cores_mean == pytest.approx(0.5)
    assert su.rss_max_bytes == 300
    assert su.rss_mean_bytes == 250
    assert idle.groups["ours"]["cpu_cores_mean"] == pytest.approx(0.5)
    assert idle.groups["control-plane"]["rss_max_bytes"] == 3000
    assert idle.machine_busy_cores == pytest.approx(1.0)
    assert idle.other_cores == pytest.approx(0.25)  # 1.0 busy - 0.5 ours - 0.25 api
    churn = procmon.summarize_phase(samples, "churn", GROUPS.__getitem__)
    assert churn.procs["su"].cpu_cores_mean == pytest.approx(2.0)


def test_a_restarted_process_does_not_count_negative_cpu() -> None:
    samples = [
        _sample(0.0, "p", 0.0, su=(1, 5.0, 100)),
        _sample(1.0, "p", 0.5, su=(7, 0.1, 100)),  # new pid: counters restarted
        _sample(2.0, "p", 1.0, su=(7, 0.6, 100)),
    ]
    s = procmon.summarize_phase(samples, "p", GROUPS.__getitem__)
    assert s.procs["su"].cpu_seconds == pytest.approx(0.5)
    assert s.procs["su"].cpu_cores_mean == pytest.approx(0.5)


def test_reading_this_process() -> None:
    got = procmon.read_proc(os.getpid())
    assert got is not None
    assert got.rss_bytes > 1 << 20
    assert got.cpu_s > 0
    busy, total = procmon.read_machine_cpu()
    assert 0 < busy <= total


def test_sampler_series_skips_instant_pairs_and_tracks_phases() -> None:
    sampler = procmon.Sampler(interval_s=1.0)
    sampler.t0 = 0.0
    sampler.samples = [
        _sample(1.0, "a", 0.0, su=(1, 0.0, 2**20)),
        _sample(2.0, "a", 1.0, su=(1, 0.5, 2**20)),
        _sample(2.001, "b", 1.0, su=(1, 0.5, 2**20)),  # phase switch right after a sample
        _sample(3.0, "b", 2.5, su=(1, 1.0, 2**21)),
    ]
    series = sampler.series()
    assert series["su"] == [[2.0, 1.0, 0.5], [3.0, 2.0, 0.5]]
    assert series["machine"] == [[2.0, 1.0], [3.0, 1.5]]
    assert sampler.phases() == ["a", "b"]
    assert sampler.phase_spans() == [("a", 1.0, 2.0), ("b", 2.001, 3.0)]
