"""FaultBook: declarations in, record faults / health / Events / timers out (pure, no API)."""

from __future__ import annotations

import copy

from fgo_common.config import parse_cluster_config
from fgo_common.kube.watch import ADDED, DELETED, MODIFIED, WatchEvent
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import HEALTHY, UNHEALTHY, MigDevice, NodeTopology
from fgo_status_updater.faults import FaultBook
from fgo_status_updater.findings import Finding

CREATED = "2027-01-15T08:00:00Z"
T0 = 1_800_000_000.0  # == CREATED


def record() -> NodeTopology:
    config = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "H100", "count": 4}]}}})
    return build_node_topology("n1", config.pools["p"], config, kwok=True)


def cm(text: str, name: str = "faults", rv: str = "1") -> dict[str, object]:
    return {
        "metadata": {
            "name": name,
            "namespace": "gpu-operator",
            "uid": "u1",
            "resourceVersion": rv,
            "creationTimestamp": CREATED,
        },
        "data": {"faults.yaml": text},
    }


class Book:
    def __init__(self) -> None:
        self.reported: list[Finding] = []
        self.book = FaultBook(self.reported.append)
        self.stored: NodeTopology | None = None

    def declare(self, text: str, kind: str = ADDED) -> set[str]:
        return self.book.on_configmap(WatchEvent(kind, cm(text)))

    def reconcile(self, t: float) -> tuple[NodeTopology, list[Finding]]:
        """What the controller does: a fresh record carrying the stored faults, then apply."""
        new = record()
        if self.stored is not None:
            for gpu, old in zip(new.gpus, self.stored.gpus, strict=True):
                gpu.faults, gpu.health = copy.deepcopy(old.faults), old.health
            new.generation = self.stored.generation  # the reconciler's: GPU set unchanged
        findings = self.book.apply(new, self.stored, t)
        self.stored = new
        return new, findings


def test_inject_then_expire_with_events_and_timers() -> None:
    b = Book()
    nodes = b.declare(
        "- {node: n1, gpu: 1, kind: xid, code: 79, start: 10s, duration: 20s}\n"
        "- {node: n1, gpu: 2, kind: xid, code: 13}\n"
        "- {node: n2, gpu: 0, kind: thermal}\n"
    )
    assert nodes == {"n1", "n2"}
    assert b.book.next_change("n1", T0) == 10

    rec, findings = b.reconcile(T0 + 1)
    assert rec.gpus[1].health == HEALTHY and not rec.gpus[1].faults
    assert rec.gpus[2].health == HEALTHY  # application XID: NVIDIA's rule keeps it Healthy
    assert rec.gpus[2].faults[0]["code"] == 13
    assert [f.reason for f in findings] == ["GpuFaultInjected"]

    rec, findings = b.reconcile(T0 + 10)
    assert rec.gpus[1].health == UNHEALTHY
    assert rec.gpus[1].faults == [
        {"kind": "xid", "code": 79, "injected": "faults#faults[0]", "since": T0 + 10,
         "until": T0 + 30}
    ]  # fmt: skip
    assert [f.reason for f in findings] == ["GpuFaultInjected"]
    assert "XID 79 on GPU 1" in findings[0].message and "until" in findings[0].message
    assert b.book.next_change("n1", T0 + 10) == 20

    _, findings = b.reconcile(T0 + 15)
    assert findings == []  # nothing changed: no repeated Event

    rec, findings = b.reconcile(T0 + 30)
    assert rec.gpus[1].health == HEALTHY and not rec.gpus[1].faults
    assert [f.reason for f in findings] == ["GpuFaultCleared"]
    assert b.book.next_change("n1", T0 + 30) is None


def test_removal_clears_and_invalid_entries_are_reported() -> None:
    b = Book()
    b.declare("- {node: n1, gpu: 0, kind: gpuLost}\n- {node: n1, gpu: 0, kind: xid}\n")
    assert [f.reason for f in b.reported] == ["InvalidGpuFault"]
    assert "faults[1].code" in b.reported[0].message
    rec, _ = b.reconcile(T0 + 1)
    assert rec.gpus[0].health == UNHEALTHY
    assert rec.gpus[0].faults[0]["kind"] == "lost"

    assert b.declare("[]\n", MODIFIED) == {"n1"}
    rec, findings = b.reconcile(T0 + 2)
    assert rec.gpus[0].health == HEALTHY and not rec.gpus[0].faults
    assert [f.reason for f in findings] == ["GpuFaultCleared"]

    b.declare("- {node: n1, gpu: GPU-nope, kind: power}\n", MODIFIED)
    _, findings = b.reconcile(T0 + 3)
    assert [f.reason for f in findings] == ["InvalidGpuFault"]
    assert b.book.on_configmap(WatchEvent(DELETED, cm(""))) == {"n1"}


def test_other_faults_are_left_alone() -> None:
    b = Book()
    rec = record()
    rec.gpus[3].faults = [{"kind": "retired", "message": "removed from the pool"}]
    rec.gpus[3].health = UNHEALTHY
    b.stored = rec
    b.declare("- {node: n1, gpu: 3, kind: thermal}\n")
    new = copy.deepcopy(rec)
    b.book.apply(new, rec, T0 + 1)
    assert [f["kind"] for f in new.gpus[3].faults] == ["retired", "thermal"]
    assert new.gpus[3].health == UNHEALTHY  # still retired


def test_mig_device_fault_makes_only_that_device_unhealthy() -> None:
    b = Book()
    rec = record()
    gpu = rec.gpus[0]
    gpu.mig_enabled = True
    gpu.mig_devices = [
        MigDevice(f"MIG-{i}", "3g.40gb", i + 1, 0, 9, 2, 4 * i, 4, 40192, 60) for i in range(2)
    ]
    b.declare("- {node: n1, gpu: MIG-1, kind: xid, code: 48}\n")
    findings = b.book.apply(rec, None, T0 + 1)
    assert gpu.health == HEALTHY
    assert [m.health for m in gpu.mig_devices] == [HEALTHY, UNHEALTHY]
    assert gpu.faults[0]["mig"] == "MIG-1"
    assert [f.reason for f in findings] == ["GpuFaultInjected"]

    b.declare("[]\n", MODIFIED)
    b.book.apply(rec, None, T0 + 2)
    assert [m.health for m in gpu.mig_devices] == [HEALTHY, HEALTHY] and not gpu.faults


def test_generation_follows_injected_health_changes() -> None:
    b = Book()
    assert b.reconcile(T0)[0].generation == 1
    b.declare("- {node: n1, gpu: 0, kind: xid, code: 79}\n")
    first, _ = b.reconcile(T0 + 1)
    assert first.generation == 2  # the reconciler kept 1; the new health bumps it
    same, _ = b.reconcile(T0 + 2)
    assert same.generation == 2
    b.declare("[]\n", MODIFIED)
    cleared, _ = b.reconcile(T0 + 3)
    assert cleared.generation == 3
