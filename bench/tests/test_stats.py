import math

import pytest

from bench import stats


def test_percentile_interpolates_between_ranks() -> None:
    assert stats.percentile([1.0, 2.0], 50) == 1.5
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert stats.percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert stats.percentile([5.0], 99) == 5.0


def test_percentile_bounds_are_min_and_max() -> None:
    values = [7.0, -1.0, 3.5, 2.0]
    assert stats.percentile(values, 0) == -1.0
    assert stats.percentile(values, 100) == 7.0


def test_percentile_matches_numpy_linear_method() -> None:
    numpy = pytest.importorskip("numpy")
    values = [0.13, 0.9, 0.02, 4.1, 0.5, 0.51, 2.2, 0.05, 1.0, 0.33, 0.7]
    for q in (1, 25, 50, 90, 95, 99):
        assert stats.percentile(values, q) == pytest.approx(float(numpy.percentile(values, q)))


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        stats.percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        stats.percentile([], 50)


def test_summarize() -> None:
    s = stats.summarize([4, 1, 3, 2])
    assert s["count"] == 4
    assert s["min"] == 1.0
    assert s["max"] == 4.0
    assert s["mean"] == 2.5
    assert s["p50"] == 2.5
    assert s["p99"] == pytest.approx(3.97)


def test_summarize_empty_has_every_key_as_none() -> None:
    s = stats.summarize([])
    assert s["count"] == 0
    assert {k for k, v in s.items() if v is None} == {
        "min",
        "mean",
        "p50",
        "p90",
        "p95",
        "p99",
        "max",
    }


def test_per_second_counts_includes_empty_buckets() -> None:
    assert stats.per_second_counts([10.0, 10.2, 12.9, 13.0], start=10.0) == [2, 0, 1, 1]
    assert stats.per_second_counts([]) == []
    # Events before start are ignored rather than wrapped into the last bucket.
    assert stats.per_second_counts([9.0, 10.5], start=10.0) == [1]


def test_throughput_average_and_full_buckets() -> None:
    # 10 events per second for 3 seconds, then 1 event in a partial 4th second.
    times = [i / 10 for i in range(30)] + [3.05]
    tp = stats.throughput(times, start=0.0)
    assert tp["window_s"] == pytest.approx(3.05)
    assert tp["average"] == pytest.approx(31 / 3.05)
    assert tp["p50"] == 10.0  # the partial last bucket (1 event) is left out


def test_throughput_of_nothing() -> None:
    assert stats.throughput([])["average"] is None


def test_latencies_only_for_keys_in_both() -> None:
    assert stats.latencies({"a": 1.0, "b": 2.0}, {"b": 2.5, "c": 9.0}) == {"b": 0.5}


def test_formatting() -> None:
    assert stats.fmt_seconds(0.1234) == "123 ms"
    assert stats.fmt_seconds(12.345) == "12.35 s"
    assert stats.fmt_seconds(None) == "—"
    assert stats.fmt_bytes(512) == "512 B"
    assert stats.fmt_bytes(80 * 2**20) == "80.0 MiB"
    assert not math.isnan(float(stats.fmt_bytes(3 * 2**30).split()[0]))
