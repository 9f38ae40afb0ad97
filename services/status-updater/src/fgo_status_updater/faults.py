"""Injected GPU faults: declarations (ConfigMaps) in, ``GpuRecord.faults`` / ``health`` out.

The status-updater is the only writer of records, so it is the one that applies fault
declarations (format and meaning: ``fgo_common.faults``, docs/faults.md). ``FaultBook`` keeps the
valid declarations of every ``fake-gpu-operator/gpu-faults=true`` ConfigMap; after the reconciler
has computed a node's record, :meth:`FaultBook.apply` replaces that record's injected faults with
the declarations active now, sets health (critical XIDs and lost GPUs make a device Unhealthy;
clearing makes it Healthy again) and says when the node must be looked at again (the next start
or expiry): timers are work-queue marks, so nothing here outlives a restart that the record and
the ConfigMaps cannot rebuild. Events (injected / cleared) come from comparing the stored record
with the new one, so a restart does not repeat them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from fgo_common import faults as spec
from fgo_common.kube.watch import DELETED, WatchEvent
from fgo_common.topology import HEALTHY, UNHEALTHY, GpuRecord, MigDevice, NodeTopology

from fgo_status_updater.findings import NORMAL, WARNING, Finding, ObjectRef, node_ref
from fgo_status_updater.podinfo import Obj, meta

log = structlog.get_logger(__name__)

RETIRED_FAULT = "retired"  # reconcile.RETIRED_FAULT: a GPU kept only because it is still held


def _created(cm: Obj) -> float:
    stamp = str(meta(cm).get("creationTimestamp") or "")
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class _Declared:
    ref: ObjectRef
    specs: list[spec.FaultSpec]


@dataclass(slots=True)
class FaultBook:
    """The valid fault declarations of all fault ConfigMaps, by ConfigMap name."""

    report: Callable[[Finding], None]
    by_cm: dict[str, _Declared] = field(default_factory=dict)
    _unresolved: set[tuple[str, str]] = field(default_factory=set)  # (spec id, node) reported

    # --- input ---------------------------------------------------------------------------------
    def on_configmap(self, event: WatchEvent) -> set[str]:
        """Watch handler: re-read one ConfigMap; the nodes its old and new faults concern."""
        cm = event.obj
        m = meta(cm)
        name = str(m.get("name", ""))
        old = self.by_cm.pop(name, None)
        nodes = {s.node for s in old.specs} if old else set()
        if event.type == DELETED:
            return nodes
        ref = ObjectRef("ConfigMap", name, str(m.get("namespace", "")), str(m.get("uid", "")))
        text = (cm.get("data") or {}).get(spec.FAULTS_DATA_KEY)
        specs, errors = spec.parse_document(text, name, _created(cm))
        for error in errors:
            log.warning("faults.invalid", configmap=name, field=error.field, error=str(error))
            self.report(
                Finding(
                    ref,
                    "InvalidGpuFault",
                    f"ignored invalid fault declaration {error} (resourceVersion "
                    f"{m.get('resourceVersion')})",
                )
            )
        self.by_cm[name] = _Declared(ref, specs)
        return nodes | {s.node for s in specs}

    def specs_for(self, node: str) -> list[tuple[ObjectRef, spec.FaultSpec]]:
        return [
            (d.ref, s) for _, d in sorted(self.by_cm.items()) for s in d.specs if s.node == node
        ]

    # --- output --------------------------------------------------------------------------------
    def next_change(self, node: str, now: float) -> float | None:
        """Seconds until a declaration of ``node`` starts or ends (None: no timer needed)."""
        times = [
            t - now
            for _, s in self.specs_for(node)
            for t in (s.start, s.end)
            if math.isfinite(t) and t > now
        ]
        return min(times) if times else None

    def apply(
        self, record: NodeTopology, previous: NodeTopology | None, now: float
    ) -> list[Finding]:
        """Put the declarations active at ``now`` into ``record`` (in place); findings are the
        Events to emit (injected, cleared, unresolvable GPU)."""
        node = record.node_name
        findings: list[Finding] = []
        wanted: dict[str, list[dict[str, Any]]] = {}
        for ref, s in self.specs_for(node):
            if not s.active(now):
                continue
            target = _resolve(record, s.gpu)
            if target is None:
                key = (s.id, node)
                if key not in self._unresolved:
                    self._unresolved.add(key)
                    findings.append(
                        Finding(
                            ref,
                            "InvalidGpuFault",
                            f"ignored fault declaration {s.id.split('#', 1)[1]}.gpu: node "
                            f"{node} has no GPU or MIG device {s.gpu!r}",
                        )
                    )
                continue
            gpu, mig = target
            wanted.setdefault(gpu.id, []).extend(
                spec.record_faults(s, mig.uuid if mig is not None else "")
            )
        before = _injected(previous)
        for gpu in record.gpus:
            mine = wanted.get(gpu.id, [])
            had = any(f.get("injected") for f in gpu.faults)
            if not mine and not had:
                continue
            gpu.faults = [f for f in gpu.faults if not f.get("injected")] + mine
            _set_health(gpu, mine)
        after = _injected(record)
        if (
            previous is not None
            and record.generation <= previous.generation
            and _published_state(previous) != _published_state(record)
        ):
            # Health and taints are what consumers publish; the generation tells them.
            record.generation = previous.generation + 1
        uid = ""  # the Node's uid is not needed for an Event to show under `kubectl describe`
        for key in sorted(after.keys() - before.keys()):
            gpu_id, fid = key
            found = _spec_by_id(self.specs_for(node), fid)
            what = found.describe() if found else fid
            until = f", until {_when(found.end)}" if found and math.isfinite(found.end) else ""
            findings.append(
                Finding(
                    node_ref(node, uid),
                    "GpuFaultInjected",
                    f"injected {what} ({gpu_id}) from {fid} at {_when(after[key])}{until}",
                    WARNING,
                )
            )
        for key in sorted(before.keys() - after.keys()):
            gpu_id, fid = key
            findings.append(
                Finding(
                    node_ref(node, uid),
                    "GpuFaultCleared",
                    f"cleared fault {fid} on {gpu_id} (injected at {_when(before[key])}) at "
                    f"{_when(now)}",
                    NORMAL,
                )
            )
        return findings


def _spec_by_id(
    specs: Iterable[tuple[ObjectRef, spec.FaultSpec]], fid: str
) -> spec.FaultSpec | None:
    return next((s for _, s in specs if s.id == fid), None)


def _injected(record: NodeTopology | None) -> dict[tuple[str, str], float]:
    """(GPU UUID, declaration id) -> since, of every injected fault in a record."""
    out: dict[tuple[str, str], float] = {}
    for gpu in record.gpus if record else []:
        for f in gpu.faults:
            fid = f.get("injected")
            if fid:
                out[(gpu.id, str(fid))] = float(f.get("since") or 0.0)
    return out


def _published_state(record: NodeTopology) -> list[tuple[object, ...]]:
    return [
        (
            g.id,
            g.health,
            tuple(m.health for m in g.mig_devices),
            tuple(
                sorted(
                    (str(f.get("kind")), str(f.get("code")), str(f.get("mig")))
                    for f in g.faults
                    if f.get("injected")
                )
            ),
        )
        for g in record.gpus
    ]


def _resolve(record: NodeTopology, gpu: str) -> tuple[GpuRecord, MigDevice | None] | None:
    if gpu.isdigit():
        index = int(gpu)
        return next(((g, None) for g in record.gpus if g.index == index), None)
    wanted = gpu.lower()
    for g in record.gpus:
        if g.id.lower() == wanted:
            return g, None
        for mig in g.mig_devices:
            if mig.uuid.lower() == wanted:
                return g, mig
    return None


def _set_health(gpu: GpuRecord, injected: list[dict[str, Any]]) -> None:
    """Health after injection: critical whole-GPU faults (or a retired GPU) make the GPU
    Unhealthy; critical faults aimed at one MIG device make only that device Unhealthy."""
    whole = [f for f in injected if not f.get("mig")]
    retired = any(f.get("kind") == RETIRED_FAULT for f in gpu.faults)
    gpu.health = UNHEALTHY if retired or any(spec.is_critical(f) for f in whole) else HEALTHY
    for mig in gpu.mig_devices:
        hit = any(spec.is_critical(f) for f in injected if f.get("mig") == mig.uuid)
        mig.health = UNHEALTHY if hit else HEALTHY
