"""Fault declarations: validation (naming the bad field), resolution to record entries, NVIDIA's
health rule and the DRA taints each fault implies."""

from __future__ import annotations

import math

import pytest
from fgo_common import dradevices
from fgo_common.config import parse_cluster_config
from fgo_common.faults import (
    FaultSpecError,
    device_taints,
    gpu_lost,
    is_critical,
    parse_document,
    parse_duration,
    parse_entry,
    record_faults,
)
from fgo_common.nodebuild import build_node_topology
from fgo_common.telemetry import faults_at
from fgo_common.topology import UNHEALTHY, MigDevice, NodeTopology

CREATED = 1_800_000_000.0


def entry(**kw: object) -> dict[str, object]:
    return {"node": "n1", "gpu": 0, **kw}


def test_document_keeps_valid_entries_and_names_each_invalid_field() -> None:
    text = """
- {node: n1, gpu: 0, kind: xid, code: 79}
- {node: n1, gpu: 1, kind: xid}
- {node: n1, gpu: 2, kind: meltdown}
- {node: n1, gpu: GPU-abc, kind: ecc, count: 3, doubleBit: 1, start: 30s, duration: 2m}
- {node: n1, gpu: 3, kind: thermal, colour: red}
"""
    specs, errors = parse_document(text, "cm", CREATED)
    assert [s.id for s in specs] == ["cm#faults[0]", "cm#faults[3]"]
    assert [e.field for e in errors] == ["faults[1].code", "faults[2].kind", "faults[4].colour"]
    ecc = specs[1]
    assert (ecc.start, ecc.end) == (CREATED + 30, CREATED + 150)
    assert (ecc.count, ecc.double_bit) == (3, 1)
    assert math.isinf(specs[0].end)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (entry(kind="xid", code=0), "f.code"),
        (entry(kind="xid", code="79"), "f.code"),
        (entry(kind="thermal", code=3), "f.code"),
        (entry(kind="gpuLost", count=2), "f.count"),
        (entry(kind="power", duration="soon"), "f.duration"),
        (entry(kind="power", duration=0), "f.duration"),
        (entry(kind="power", start="2026-13-01T00:00:00Z"), "f.start"),
        ({"gpu": 0, "kind": "power"}, "f.node"),
        ({"node": "n1", "kind": "power"}, "f.gpu"),
        (entry(gpu="card0", kind="power"), "f.gpu"),
        (entry(gpu=-1, kind="power"), "f.gpu"),
        ("xid 79", "f"),
    ],
)
def test_invalid_entries_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(FaultSpecError) as info:
        parse_entry(raw, "f", "cm", CREATED)
    assert info.value.field == field


def test_absolute_start_and_durations() -> None:
    spec = parse_entry(
        entry(kind="power", start="2027-01-14T08:00:00Z", duration="1.5h"), "f", "cm", CREATED
    )
    assert spec.start == 1_799_913_600.0
    assert spec.end - spec.start == 5400
    assert parse_duration(90, "d") == 90
    assert parse_duration("250ms", "d") == 0.25
    assert not spec.active(spec.start - 1) and spec.active(spec.start)
    assert not spec.active(spec.end)


@pytest.mark.parametrize(
    ("code", "critical"),
    [(79, True), (48, True), (94, True), (13, False), (31, False), (43, False), (45, False),
     (68, False), (109, False)],
)  # fmt: skip
def test_application_xids_do_not_make_the_gpu_unhealthy(code: int, critical: bool) -> None:
    spec = parse_entry(entry(kind="xid", code=code), "f", "cm", CREATED)
    assert any(is_critical(f) for f in record_faults(spec)) is critical


def test_record_entries_feed_the_telemetry_model() -> None:
    def folded(**kw: object):
        spec = parse_entry(entry(**kw), "f", "cm", CREATED)
        return faults_at(record_faults(spec), CREATED + 1)

    ecc = folded(kind="ecc", count=5, doubleBit=2, aggregate=10)
    assert (ecc.ecc_sbe_volatile, ecc.ecc_dbe_volatile) == (5, 2)
    assert (ecc.ecc_sbe_aggregate, ecc.ecc_dbe_aggregate) == (15, 2)
    assert ecc.xid_last == 48  # an uncorrectable ECC error arrives as XID 48
    assert folded(kind="xid", code=79).xid_last == 79
    assert folded(kind="thermal").thermal and folded(kind="power").power
    assert folded(kind="degraded", count=7).pcie_replay_count == 7
    lost = record_faults(parse_entry(entry(kind="gpuLost"), "f", "cm", CREATED))
    assert gpu_lost(lost, CREATED + 1) and not gpu_lost(lost, CREATED - 1)
    assert all(is_critical(f) for f in lost)
    single = record_faults(parse_entry(entry(kind="ecc", count=5), "f", "cm", CREATED))
    assert not any(is_critical(f) for f in single)


def taints_of(kind: str, **kw: object) -> list[dict[str, str]]:
    faults = record_faults(parse_entry(entry(kind=kind, **kw), "f", "cm", CREATED))
    healthy = not any(is_critical(f) for f in faults)
    return device_taints(
        faults, healthy, driver="gpu.nvidia.com", xid_key="xid", lost_key="gpu-lost"
    )


def test_taints_by_severity() -> None:
    assert taints_of("xid", code=79) == [
        {"key": "gpu.nvidia.com/xid", "value": "79", "effect": "NoExecute"}
    ]
    assert taints_of("xid", code=48) == [
        {"key": "gpu.nvidia.com/xid", "value": "48", "effect": "NoSchedule"}
    ]
    assert taints_of("gpuLost") == [
        {"key": "gpu.nvidia.com/gpu-lost", "value": "true", "effect": "NoExecute"}
    ]
    assert taints_of("xid", code=13) == []
    assert taints_of("thermal") == []
    assert taints_of("degraded") == []


def topology_with_gpus(count: int) -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "H100", "count": count}]}}}
    )
    return build_node_topology("n1", config.pools["p"], config, kwok=True)


def test_mig_device_fault_taints_only_that_device() -> None:
    topology = topology_with_gpus(1)
    gpu = topology.gpus[0]
    gpu.mig_enabled = True
    gpu.mig_devices = [
        MigDevice(f"MIG-{i}", "3g.40gb", i + 1, 0, 9, 2, 4 * i, 4, 40192, 60) for i in range(2)
    ]
    target = gpu.mig_devices[0]
    spec = parse_entry(entry(gpu=target.uuid, kind="xid", code=48), "f", "cm", CREATED)
    gpu.faults = record_faults(spec, target.uuid)
    target.health = UNHEALTHY
    devices = {d.uuid: d for d in dradevices.node_devices(topology)}
    assert devices[target.uuid].device["taints"][0]["value"] == "48"
    assert not any(devices[m.uuid].tainted for m in gpu.mig_devices[1:])
