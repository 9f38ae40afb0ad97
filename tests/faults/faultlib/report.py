"""The fault table: per fault, how often it was injected, how long recovery took, what broke.

Recovery time is measured from the moment the fault is lifted (the killed component is running
again, the partition is over, the node is gone) until the invariant checker is first green, with
the churn paused at that moment so "green" has a fixed target. After a further settle period the
checker runs once more; what it reports then is the fault's violation count (must be 0).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Outcome:
    recovery_s: float | None  # None: never green within the timeout
    violations: list[str]  # after the settle period
    note: str = ""
    crashes: list[str] = field(default_factory=list)  # unexpected exits during the episode


@dataclass
class FaultResult:
    fault: str
    injected: int = 0
    recoveries_s: list[float] = field(default_factory=list)
    not_recovered: int = 0
    violations: int = 0
    crashes: int = 0
    examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (with few samples p99 is the maximum)."""
        if not self.recoveries_s:
            return None
        ordered = sorted(self.recoveries_s)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class FaultReport:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.started = dt.datetime.now(dt.UTC)
        self.results: dict[str, FaultResult] = {}
        self.load: dict[str, object] = {}
        self.shutdown_s: dict[str, float] = {}  # SIGTERM -> exit, per service

    def add(self, fault: str, outcome: Outcome) -> None:
        result = self.results.setdefault(fault, FaultResult(fault))
        result.injected += 1
        if outcome.recovery_s is None:
            result.not_recovered += 1
        else:
            result.recoveries_s.append(round(outcome.recovery_s, 2))
        result.violations += len(outcome.violations)
        result.crashes += len(outcome.crashes)
        result.examples += outcome.violations[: max(0, 5 - len(result.examples))]
        result.examples += [f"crash: {c}" for c in outcome.crashes][
            : max(0, 8 - len(result.examples))
        ]
        if outcome.note and outcome.note not in result.notes:
            result.notes.append(outcome.note)

    def markdown(self) -> str:
        def fmt(value: float | None) -> str:
            return "—" if value is None else f"{value:.1f} s"

        lines = [
            f"Fault suite ({self.mode}), {self.started:%Y-%m-%d %H:%M} UTC",
            "",
            "| fault | injected | recovery p50 | recovery p99 | not recovered | violations | crashes |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.results.values():
            lines.append(
                f"| {r.fault} | {r.injected} | {fmt(r.percentile(50))} | {fmt(r.percentile(99))} "
                f"| {r.not_recovered} | {r.violations} | {r.crashes} |"
            )
        notes = [(r.fault, n) for r in self.results.values() for n in r.notes]
        if notes:
            lines += ["", "Notes:", ""]
            lines += [f"- {fault}: {note}" for fault, note in notes]
        if self.load:
            lines += ["", "Load: " + ", ".join(f"{k} {v}" for k, v in self.load.items())]
        if self.shutdown_s:
            lines += [
                "",
                "SIGTERM to exit: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(self.shutdown_s.items())),
            ]
        bad = [(r.fault, e) for r in self.results.values() for e in r.examples]
        if bad:
            lines += ["", "Violations and crashes (first of each fault):", ""]
            lines += [f"- {fault}: {e}" for fault, e in bad]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = f"{self.started:%Y%m%dT%H%M%S}"
        data = {
            "mode": self.mode,
            "started": self.started.isoformat(),
            "load": self.load,
            "shutdown_s": self.shutdown_s,
            "faults": [
                asdict(r) | {"p50_s": r.percentile(50), "p99_s": r.percentile(99)}
                for r in self.results.values()
            ],
        }
        for name in (f"{self.mode}-{stamp}", f"{self.mode}-latest"):
            (directory / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
            (directory / f"{name}.md").write_text(self.markdown())
        return directory / f"{self.mode}-latest.md"
