"""The result document of one `make bench` run: what results.json holds, and its checker.

Scenarios fill a :class:`ScenarioResult` as they go (so a scenario stopped by its time budget
still has everything measured so far) and print each figure the moment it is known.
The JSON layout is versioned by ``SCHEMA``; :func:`validate` checks a document against it
(a small hand-written checker: the layout is simple and a jsonschema dependency is not worth it).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "fgo-bench/1"
STATUSES = ("ok", "partial", "failed", "skipped")
COMPARISONS = ("<=", "<", ">=", ">")


@dataclass
class Target:
    """One of the issue's targets, with what this run measured for it."""

    name: str
    comparison: str  # measured <comparison> limit means met
    limit: float
    unit: str
    measured: float | None = None
    # Why it is missed (what bounds it, what would fix it) or a caveat on how it was measured.
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return {
            "<=": self.measured <= self.limit,
            "<": self.measured < self.limit,
            ">=": self.measured >= self.limit,
            ">": self.measured > self.limit,
        }[self.comparison]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["met"] = self.met
        return out


@dataclass
class ScenarioResult:
    """Everything one scenario measured; safe to serialise at any moment."""

    name: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    started_at: float = field(default_factory=time.time)
    duration_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    # Named point lists for the plots: [[x, y], ...] or [[x, y1, y2...], ...].
    series: dict[str, list[list[float]]] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def say(self, text: str) -> None:
        print(f"[{self.name}] {text}", file=sys.stderr, flush=True)

    def figure(self, key: str, value: Any, text: str | None = None) -> Any:
        """Record ``figures[key] = value`` and print it (``text`` is the human form)."""
        self.figures[key] = value
        self.say(f"{key}: {text if text is not None else value}")
        return value

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"note: {text}")

    def target(self, target: Target) -> Target:
        self.targets.append(target)
        state = {True: "MET", False: "MISSED", None: "not measured"}[target.met]
        shown = "—" if target.measured is None else f"{target.measured:.3g} {target.unit}"
        self.say(
            f"target {target.name}: {shown} ({target.comparison} {target.limit:g} "
            f"{target.unit}) -> {state}"
        )
        return target

    def finish(self, status: str, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.duration_s = time.time() - self.started_at

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["targets"] = [t.to_dict() for t in self.targets]
        return out


def _expect(errors: list[str], where: str, value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        errors.append(f"{where}: expected {'/'.join(k.__name__ for k in kinds)}, got bool")
        return False
    if not isinstance(value, kinds):
        errors.append(
            f"{where}: expected {'/'.join(k.__name__ for k in kinds)}, got {type(value).__name__}"
        )
        return False
    return True


_NUMBER = (int, float)
_TOP_LEVEL: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "started_at": _NUMBER,
    "finished_at": _NUMBER,
    "machine": (dict,),
    "config": (dict,),
    "scenarios": (list,),
    "footprint": (dict,),
}
_MACHINE: dict[str, tuple[type, ...]] = {
    "cpu_model": (str,),
    "cores": (int,),
    "memory_bytes": (int,),
    "kubernetes_version": (str,),
}
_SCENARIO: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "title": (str,),
    "params": (dict,),
    "status": (str,),
    "duration_s": _NUMBER,
    "figures": (dict,),
    "series": (dict,),
    "targets": (list,),
    "notes": (list,),
}
_TARGET: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "comparison": (str,),
    "limit": _NUMBER,
    "unit": (str,),
    "note": (str,),
}


def _check_fields(
    errors: list[str], where: str, obj: dict[str, Any], spec: dict[str, tuple[type, ...]]
) -> None:
    for key, kinds in spec.items():
        if key not in obj:
            errors.append(f"{where}.{key}: missing")
        else:
            _expect(errors, f"{where}.{key}", obj[key], kinds)


def validate(doc: Any) -> list[str]:
    """Problems with ``doc`` as a results.json document; empty when it is valid."""
    errors: list[str] = []
    if not _expect(errors, "$", doc, (dict,)):
        return errors
    _check_fields(errors, "$", doc, _TOP_LEVEL)
    if doc.get("schema") not in (None, SCHEMA) and isinstance(doc.get("schema"), str):
        errors.append(f"$.schema: expected {SCHEMA!r}, got {doc['schema']!r}")
    if isinstance(doc.get("machine"), dict):
        _check_fields(errors, "$.machine", doc["machine"], _MACHINE)
    for i, scenario in enumerate(doc.get("scenarios") or []):
        where = f"$.scenarios[{i}]"
        if not _expect(errors, where, scenario, (dict,)):
            continue
        _check_fields(errors, where, scenario, _SCENARIO)
        if scenario.get("status") not in STATUSES:
            errors.append(
                f"{where}.status: one of {', '.join(STATUSES)}, got {scenario.get('status')!r}"
            )
        for name, points in (scenario.get("series") or {}).items():
            if not isinstance(points, list) or not all(
                isinstance(p, list) and all(isinstance(x, _NUMBER) for x in p) for p in points
            ):
                errors.append(f"{where}.series.{name}: expected a list of number lists")
        for j, target in enumerate(scenario.get("targets") or []):
            twhere = f"{where}.targets[{j}]"
            if not _expect(errors, twhere, target, (dict,)):
                continue
            _check_fields(errors, twhere, target, _TARGET)
            if target.get("comparison") not in COMPARISONS:
                errors.append(f"{twhere}.comparison: one of {', '.join(COMPARISONS)}")
            if "measured" not in target:
                errors.append(f"{twhere}.measured: missing")
            elif target["measured"] is not None:
                _expect(errors, f"{twhere}.measured", target["measured"], _NUMBER)
            if target.get("met") not in (True, False, None):
                errors.append(f"{twhere}.met: expected true, false or null")
    return errors
