"""RSS and CPU of named processes from /proc, sampled once a second and grouped by phase.

Groups keep our services' cost apart from the control plane's: ``ours`` (the chart's services run
as local processes), ``control-plane`` (etcd, kube-apiserver, scheduler, controller-manager,
KWOK) and ``harness`` (this benchmark's own watches and scrapes). The whole machine's busy time
comes from /proc/stat, so the load of anything else on the host (``other``) is visible too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
GROUPS = ("ours", "control-plane", "harness")
# Shorter sample pairs give no meaningful rate (CPU time advances in 10 ms ticks).
MIN_RATE_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Tracked:
    name: str
    group: str
    pid: int


@dataclass(frozen=True)
class ProcSample:
    pid: int
    cpu_s: float
    rss_bytes: int


@dataclass(frozen=True)
class Sample:
    t: float  # monotonic
    phase: str
    procs: dict[str, ProcSample]
    machine_busy_s: float
    machine_total_s: float


def read_proc(pid: int) -> ProcSample | None:
    """utime+stime (s) and resident set size of ``pid``; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss_pages = int(statm.split()[1])
    return ProcSample(pid, (utime + stime) / CLK_TCK, rss_pages * PAGE_SIZE)


def read_machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores summed."""
    line = Path("/proc/stat").read_text().splitlines()[0]
    values = [int(v) for v in line.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class ProcStats:
    group: str
    samples: int = 0
    rss_max_bytes: int = 0
    rss_mean_bytes: float = 0.0
    cpu_seconds: float = 0.0
    cpu_cores_mean: float = 0.0
    cpu_cores_max: float = 0.0


@dataclass
class PhaseStats:
    duration_s: float = 0.0
    procs: dict[str, ProcStats] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    machine_busy_cores: float = 0.0
    other_cores: float = 0.0  # machine busy minus everything tracked


class Sampler:
    """Samples tracked processes every ``interval_s`` while :meth:`run` runs."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.tracked: dict[str, Tracked] = {}
        self.samples: list[Sample] = []
        self.phase = "setup"
        self.t0 = time.monotonic()

    def track(self, items: list[Tracked]) -> None:
        for item in items:
            self.tracked[item.name] = item

    def group_of(self, name: str) -> str:
        tracked = self.tracked.get(name)
        return tracked.group if tracked else "?"

    def sample(self) -> Sample:
        procs = {}
        for name, item in self.tracked.items():
            got = read_proc(item.pid)
            if got is not None:
                procs[name] = got
        busy, total = read_machine_cpu()
        sample = Sample(time.monotonic(), self.phase, procs, busy, total)
        self.samples.append(sample)
        return sample

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    def phases(self) -> list[str]:
        seen: list[str] = []
        for s in self.samples:
            if s.phase not in seen:
                seen.append(s.phase)
        return seen

    def summary(self, phase: str) -> PhaseStats:
        """Per-process and per-group figures over consecutive sample pairs inside ``phase``."""
        return summarize_phase(self.samples, phase, self.group_of)

    def series(self) -> dict[str, list[list[float]]]:
        """Per process ``[t, rss MiB, cpu cores]`` and machine ``[t, busy cores]`` for plots."""
        out: dict[str, list[list[float]]] = {}
        prev: Sample | None = None
        for cur in self.samples:
            if prev is None:
                prev = cur
                continue
            dt = cur.t - prev.t
            # A phase switch samples right after a periodic sample: over a few milliseconds the
            # 10 ms /proc tick makes rates meaningless, so such pairs are merged.
            if dt < self.interval_s / 2:
                continue
            t = cur.t - self.t0
            for name, p in cur.procs.items():
                before = prev.procs.get(name)
                cores = (p.cpu_s - before.cpu_s) / dt if before and before.pid == p.pid else 0.0
                out.setdefault(name, []).append([t, p.rss_bytes / 2**20, max(cores, 0.0)])
            # Clipped to the core count: a VM's /proc/stat can catch up in bursts.
            busy = (cur.machine_busy_s - prev.machine_busy_s) / dt
            out.setdefault("machine", []).append([t, min(busy, float(os.cpu_count() or 1))])
            prev = cur
        return out

    def phase_spans(self) -> list[tuple[str, float, float]]:
        """(phase, start, end) in seconds since the sampler started, in order."""
        spans: list[tuple[str, float, float]] = []
        for s in self.samples:
            t = s.t - self.t0
            if spans and spans[-1][0] == s.phase:
                spans[-1] = (s.phase, spans[-1][1], t)
            else:
                spans.append((s.phase, t, t))
        return spans


def summarize_phase(
    samples: list[Sample], phase: str, group_of: Callable[[str], str]
) -> PhaseStats:
    """See :meth:`Sampler.summary`; ``group_of`` maps a process name to its group."""
    stats = PhaseStats()
    rss_sum: dict[str, float] = {}
    cpu_time: dict[str, float] = {}
    busy = 0.0
    for prev, cur in itertools.pairwise(samples):
        if cur.phase != phase:
            continue
        dt = cur.t - prev.t
        if dt <= 0:
            continue
        stats.duration_s += dt
        busy += cur.machine_busy_s - prev.machine_busy_s
        for name, p in cur.procs.items():
            ps = stats.procs.setdefault(name, ProcStats(group=group_of(name)))
            ps.samples += 1
            ps.rss_max_bytes = max(ps.rss_max_bytes, p.rss_bytes)
            rss_sum[name] = rss_sum.get(name, 0.0) + p.rss_bytes
            before = prev.procs.get(name)
            if before is not None and before.pid == p.pid:
                used = max(p.cpu_s - before.cpu_s, 0.0)
                ps.cpu_seconds += used
                cpu_time[name] = cpu_time.get(name, 0.0) + dt
                if dt >= MIN_RATE_INTERVAL_S:
                    ps.cpu_cores_max = max(ps.cpu_cores_max, used / dt)
    for name, ps in stats.procs.items():
        ps.rss_mean_bytes = rss_sum[name] / ps.samples
        ps.cpu_cores_mean = ps.cpu_seconds / cpu_time[name] if cpu_time.get(name) else 0.0
    tracked_cores = 0.0
    for group in GROUPS:
        members = [ps for ps in stats.procs.values() if ps.group == group]
        cores = sum(ps.cpu_cores_mean for ps in members)
        tracked_cores += cores
        stats.groups[group] = {
            "rss_max_bytes": float(sum(ps.rss_max_bytes for ps in members)),
            "cpu_cores_mean": cores,
            "cpu_seconds": sum(ps.cpu_seconds for ps in members),
        }
    if stats.duration_s > 0:
        stats.machine_busy_cores = busy / stats.duration_s
        stats.other_cores = max(stats.machine_busy_cores - tracked_cores, 0.0)
    return stats
