"""Per-pod utilisation and memory: annotation parsing, workload defaults, Knative."""

from __future__ import annotations

import pytest
from fgo_common.topology import PodUsage, UtilizationRange
from fgo_status_updater.findings import Finding
from fgo_status_updater.usage import (
    UsagePolicy,
    UtilizationFormatError,
    parse_utilization,
    pod_usage,
)
from su_helpers import pod

POLICY = UsagePolicy(UtilizationRange(40, 60))


def usage_of(
    p: dict,
    *,
    groups: dict[str, str] | None = None,
    knative: int | None = None,
    previous: PodUsage | None = None,
) -> tuple[PodUsage, list[Finding]]:
    findings: list[Finding] = []
    u = pod_usage(
        p,
        1000,
        policy=POLICY,
        pod_groups=groups or {},
        knative_percent=knative,
        previous=previous,
        since=5.0,
        findings=findings,
    )
    return u, findings


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("0", 0, 0), ("100", 100, 100), ("10-30", 10, 30), (" 20 - 20 ", 20, 20), ("0-100", 0, 100)],
)
def test_valid_utilization(text: str, low: int, high: int) -> None:
    assert parse_utilization(text) == UtilizationRange(low, high)


@pytest.mark.parametrize("text", ["abc", "90-10", "-5", "101", "", "5-", "50-101", "1.5", "1e2"])
def test_invalid_utilization(text: str) -> None:
    with pytest.raises(UtilizationFormatError):
        parse_utilization(text)


@pytest.mark.parametrize("bad", ["abc", "90-10", "-5", "101"])
def test_bad_annotation_gives_one_warning_and_the_default(bad: str) -> None:
    p = pod("p", gpus=1, annotations={"run.ai/simulated-gpu-utilization": bad})
    u, findings = usage_of(p)
    assert u.utilization == UtilizationRange(40, 60)
    assert [f.reason for f in findings] == ["InvalidUtilizationAnnotation"]
    assert bad in findings[0].message
    assert findings[0].obj.kind == "Pod" and findings[0].obj.name == "p"


def test_bad_annotation_falls_back_to_the_workload_default() -> None:
    p = pod(
        "p",
        annotations={"run.ai/simulated-gpu-utilization": "x"},
        labels={"workloadKind": "TrainingWorkload"},
    )
    assert usage_of(p)[0].utilization == UtilizationRange(80, 100)


def test_annotation_wins_over_workload_kind() -> None:
    p = pod(
        "p",
        annotations={"run.ai/simulated-gpu-utilization": "10-20"},
        labels={"workloadKind": "TrainingWorkload"},
    )
    u, findings = usage_of(p)
    assert u.utilization == UtilizationRange(10, 20)
    assert findings == []


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("TrainingWorkload", (80, 100)),
        ("DistributedWorkload", (80, 100)),
        ("InteractiveWorkload", (0, 0)),
        ("SomethingElse", (40, 60)),
    ],
)
def test_workload_kind_defaults(kind: str, expected: tuple[int, int]) -> None:
    u, _ = usage_of(pod("p", labels={"workloadKind": kind}))
    assert (u.utilization.min, u.utilization.max) == expected
    assert not u.use_knative


def test_podgroup_priority_class() -> None:
    p = pod("p", annotations={"pod-group-name": "pg-1"})
    assert usage_of(p, groups={"default/pg-1": "build"})[0].utilization == UtilizationRange(0, 0)
    assert usage_of(p, groups={"default/pg-1": "train"})[0].utilization == UtilizationRange(80, 100)
    # PodGroup unknown (or the CRD absent): the configured default.
    assert usage_of(p)[0].utilization == UtilizationRange(40, 60)


def test_idle_and_non_running_pods_are_zero_but_keep_memory() -> None:
    idle = pod("runai-idle-gpu-abc", annotations={"run.ai/simulated-gpu-utilization": "90"})
    u, _ = usage_of(idle)
    assert u.utilization == UtilizationRange(0, 0)
    pending = pod("p", phase="Pending", annotations={"gpu-fraction": "0.5"})
    u, _ = usage_of(pending)
    assert u.utilization == UtilizationRange(0, 0)
    assert u.fb_used_mib == 500


@pytest.mark.parametrize(
    ("notes", "fb", "reasons"),
    [
        ({}, 1000, []),
        ({"gpu-fraction": "0.25"}, 250, []),
        ({"gpu-memory": "300"}, 300, []),
        ({"gpu-memory": "5000"}, 1000, []),  # capped at the GPU's memory
        ({"gpu-memory": "300", "gpu-fraction": "0.5"}, 300, []),
        ({"gpu-fraction": "2"}, 1000, ["InvalidGpuFractionAnnotation"]),
        ({"gpu-fraction": "half"}, 1000, ["InvalidGpuFractionAnnotation"]),
        ({"gpu-memory": "lots"}, 1000, ["InvalidGpuMemoryAnnotation"]),
    ],
)
def test_memory_share(notes: dict[str, str], fb: int, reasons: list[str]) -> None:
    u, findings = usage_of(pod("p", annotations=notes))
    assert u.fb_used_mib == fb
    assert [f.reason for f in findings] == reasons


def test_knative_value_and_its_fallbacks() -> None:
    p = pod("p", labels={"workloadKind": "InferenceWorkload"})
    u, _ = usage_of(p, knative=37)
    assert u.use_knative and u.utilization == UtilizationRange(37, 37)
    u, _ = usage_of(p)  # no value yet: 0
    assert u.utilization == UtilizationRange(0, 0)
    before = PodUsage(UtilizationRange(12, 12), use_knative=True)
    u, _ = usage_of(p, previous=before)  # restarted: keep what the record said
    assert u.utilization == UtilizationRange(12, 12)
    dist = pod("d", annotations={"pod-group-name": "g"})
    assert usage_of(dist, groups={"default/g": "distributed-inference"}, knative=5)[0].use_knative


def test_identity_and_since() -> None:
    u, _ = usage_of(pod("p", namespace="ns1"))
    assert (u.namespace, u.pod, u.since) == ("ns1", "p", 5.0)
