"""Summary statistics for latencies and rates: pure functions, unit-tested.

Percentiles use linear interpolation between closest ranks (numpy's default "linear" method,
also what Prometheus' quantile over raw samples approximates), so p50 of [1, 2] is 1.5. Small
samples are reported with their count so a p99 of ten values is not over-read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

SUMMARY_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Iterable[float]) -> dict[str, float | int | None]:
    """count, min, mean, p50/p90/p95/p99 and max; all None (count 0) for no values."""
    data = [float(v) for v in values]
    out: dict[str, float | int | None] = {"count": len(data)}
    keys = ["min", "mean", *(f"p{int(q)}" for q in SUMMARY_PERCENTILES), "max"]
    if not data:
        out.update(dict.fromkeys(keys))
        return out
    out["min"] = min(data)
    out["mean"] = sum(data) / len(data)
    for q in SUMMARY_PERCENTILES:
        out[f"p{int(q)}"] = percentile(data, q)
    out["max"] = max(data)
    return out


def per_second_counts(timestamps: Iterable[float], start: float | None = None) -> list[int]:
    """How many of ``timestamps`` fall in each 1-second bucket from ``start`` (default: first).

    Buckets run to the last timestamp, empty ones included: scheduler_perf's throughput
    collector samples the same way (scheduled pods per interval).
    """
    times = sorted(timestamps)
    if not times:
        return []
    origin = times[0] if start is None else start
    buckets = [0] * (math.floor(times[-1] - origin) + 1)
    for t in times:
        index = math.floor(t - origin)
        if index >= 0:
            buckets[index] += 1
    return buckets


def throughput(timestamps: Sequence[float], start: float | None = None) -> dict[str, float | None]:
    """Events per second over [start (or first event), last event]: average and per-second
    percentiles (full 1-second buckets only, as scheduler_perf reports them)."""
    if not timestamps:
        return {"average": None, "p50": None, "p90": None, "p99": None, "window_s": None}
    origin = min(timestamps) if start is None else start
    window = max(timestamps) - origin
    average = len(timestamps) / window if window > 0 else None
    buckets = per_second_counts(timestamps, origin)
    # The last bucket is partial (it ends at the last event): leave it out unless it is all.
    full = [float(b) for b in (buckets[:-1] if len(buckets) > 1 else buckets)]
    return {
        "average": average,
        "p50": percentile(full, 50) if full else None,
        "p90": percentile(full, 90) if full else None,
        "p99": percentile(full, 99) if full else None,
        "window_s": window,
    }


def latencies(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """``end[k] - start[k]`` for every key present in both (seconds, may be negative)."""
    return {k: end[k] - start[k] for k in start.keys() & end.keys()}


def fmt_seconds(value: float | int | None) -> str:
    """Human-readable duration: ms below 1 s, otherwise seconds."""
    if value is None:
        return "—"
    if abs(value) < 1.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def fmt_bytes(value: float | int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024.0 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024.0
    return f"{size:.1f} GiB"
