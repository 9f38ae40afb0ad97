"""Pod annotations the status-updater reads — utilisation, ``gpu-fraction``, ``gpu-memory``,
``fake-gpu-operator/allocated-devices`` — with any value a user can type (annotations are free
strings up to 256 KiB). A bad value is reported once as a finding (a Warning Event on the pod)
and ignored; it never raises out of the reconcile of the node, which would stall every pod on
that node."""

from __future__ import annotations

from typing import Any

import pytest
from badinput_counts import tried
from corpus import NASTY_SCALARS
from fgo_common import annotations as ann
from fgo_common.topology import PodUsage, UtilizationRange
from fgo_status_updater.findings import Finding
from fgo_status_updater.usage import (
    UsagePolicy,
    UtilizationFormatError,
    parse_utilization,
    pod_usage,
)
from hypothesis import given, settings
from hypothesis import strategies as st

SURFACE = "pod annotations: status-updater parsers"
MEMORY_MIB = 81559

TEXTS = [str(v) for v in NASTY_SCALARS if v is not None] + [
    "50",
    "50-90",
    " 5 - 7 ",
    "90-10",
    "101",
    "-5",
    "5-",
    "-",
    "1.5",
    "0x10",
    "\u0665\u0660",  # Arabic-Indic digits "50"
    "5\n",
    "50-90-100",
    "4Gi",
    "4096",
    "0",
    "0.0",
    "1e-300",
    "1.0000001",
    "-0.5",
    "81559MiB",
    "99999999999999999999Ti",
    "9" * 400 + "Gi",
    "nvidia.com/gpu=GPU-1,GPU-2",
    "nvidia.com/gpu=",
    "=GPU-1",
    ";;;",
    "nvidia.com/gpu=GPU-1;nvidia.com/gpu=GPU-2",
    "x" * 262_144,
]
annotation_text = st.one_of(st.sampled_from(TEXTS), st.text(max_size=60))
KEYS = [ann.SIMULATED_UTILIZATION, ann.GPU_FRACTION, ann.GPU_MEMORY, ann.ALLOCATED_DEVICES]


def pod(
    annotations: dict[str, str], *, phase: str = "Running", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u1",
            "annotations": annotations,
            "labels": labels or {},
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"phase": phase},
    }


def usage_of(annotations: dict[str, str], **kw: Any) -> tuple[PodUsage, list[Finding]]:
    findings: list[Finding] = []
    usage = pod_usage(
        pod(annotations, **kw),
        MEMORY_MIB,
        policy=UsagePolicy(),
        pod_groups={},
        knative_percent=None,
        previous=None,
        since=0.0,
        findings=findings,
    )
    return usage, findings


@pytest.mark.parametrize("value", TEXTS, ids=range(len(TEXTS)))
def test_utilization_values(value: str) -> None:
    tried(SURFACE)
    try:
        parsed = parse_utilization(value)
    except UtilizationFormatError as exc:
        assert len(str(exc)) < 300_000
        usage, findings = usage_of({ann.SIMULATED_UTILIZATION: value})
        assert [f.reason for f in findings] == ["InvalidUtilizationAnnotation"]
        assert usage.utilization == UtilizationRange(50, 90)  # the default applies
        return
    assert 0 <= parsed.min <= parsed.max <= 100


@pytest.mark.parametrize("value", TEXTS, ids=range(len(TEXTS)))
def test_memory_and_fraction_values(value: str) -> None:
    for key in (ann.GPU_MEMORY, ann.GPU_FRACTION):
        tried(SURFACE)
        usage, findings = usage_of({key: value})
        assert 0 <= usage.fb_used_mib <= MEMORY_MIB
        if not _meaningful(key, value):
            # Refused values are reported, not silently taken as "the whole GPU". (A size above
            # the GPU's memory is meaningful: it is capped at the GPU, as on a real one.)
            assert findings, (key, value)


def _meaningful(key: str, value: str) -> bool:
    from fgo_common.units import parse_memory_mib

    try:
        if key == ann.GPU_MEMORY:
            return parse_memory_mib(value) > 0
        return 0.0 < float(value) <= 1.0
    except (ValueError, OverflowError):
        return False


@pytest.mark.parametrize("value", TEXTS, ids=range(len(TEXTS)))
def test_allocated_devices_values(value: str) -> None:
    tried(SURFACE)
    try:
        parsed = ann.parse_allocated_devices(value)
    except ValueError as exc:
        assert "fake-gpu-operator/allocated-devices" in str(exc)
        return
    assert all(isinstance(ids, list) for ids in parsed.values())


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(st.sampled_from(KEYS), annotation_text, max_size=4),
    st.sampled_from(["Running", "Pending", "Succeeded", "Unknown"]),
    st.sampled_from([{}, {"workloadKind": "InferenceWorkload"}, {"workloadKind": "Train"}]),
)
def test_any_annotation_combination(
    annotations: dict[str, str], phase: str, labels: dict[str, str]
) -> None:
    tried(SURFACE)
    usage, findings = usage_of(annotations, phase=phase, labels=labels)
    assert 0 <= usage.utilization.min <= usage.utilization.max <= 100
    assert 0 <= usage.fb_used_mib <= MEMORY_MIB
    assert all(f.reason.startswith("Invalid") for f in findings)
