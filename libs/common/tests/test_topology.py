"""Per-node topology record: identity, YAML round trip, reference compatibility."""

from __future__ import annotations

import uuid

import pytest
import yaml
from fgo_common import topology
from fgo_common.config import load_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import (
    HOLDER_DRA,
    Holder,
    MigConfigStatus,
    NodeTopology,
    PodUsage,
    TopologyFormatError,
    UtilizationRange,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

CONFIG = load_cluster_config(
    "nodePools: {default: {gpus: [{type: Tesla K80, count: 2}]}, big: {gpus: [{type: H100, count: 8}]}}"
)


def test_uuid_matches_reference_scheme() -> None:
    node = build_node_topology("node-a", CONFIG.pools["default"], CONFIG, kwok=True)
    expected = "GPU-" + str(uuid.uuid5(uuid.UUID(int=0), "node-a-1"))
    assert node.gpus[1].id == expected
    again = build_node_topology("node-a", CONFIG.pools["default"], CONFIG, kwok=True)
    assert [g.id for g in again.gpus] == [g.id for g in node.gpus]


def test_bus_ids_unique_and_numa_split() -> None:
    node = build_node_topology("n", CONFIG.pools["big"], CONFIG, kwok=False)
    assert len({g.bus_id for g in node.gpus}) == 8
    assert [g.numa_node for g in node.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(g.bus_id.startswith("00000000:") for g in node.gpus)


def test_round_trip_with_holders_and_usage() -> None:
    node = build_node_topology("n", CONFIG.pools["default"], CONFIG, kwok=True)
    gpu = node.gpus[0]
    gpu.status.holders = [
        Holder("ns", "a", "main", "uid-a", HOLDER_DRA, "ns/claim"),
        Holder("ns", "b", "main", "uid-b", HOLDER_DRA, "ns/claim"),
    ]
    gpu.status.usage["uid-a"] = PodUsage(UtilizationRange(10, 30), 1024, namespace="ns", pod="a")
    back = NodeTopology.from_yaml(node.to_yaml())
    assert back == node


def test_reference_readers_see_their_fields() -> None:
    node = build_node_topology("n", CONFIG.pools["default"], CONFIG, kwok=True)
    node.gpus[0].status.holders = [Holder("ns", "p", "c", "uid")]
    raw = yaml.safe_load(node.to_yaml())
    assert raw["gpuProduct"] == "Tesla K80"
    assert raw["gpuMemory"] == 11441
    assert raw["gpus"][0]["status"]["allocatedBy"] == {
        "namespace": "ns",
        "pod": "p",
        "container": "c",
    }
    assert raw["gpus"][1]["status"]["allocatedBy"] == {"namespace": "", "pod": "", "container": ""}


def test_reads_reference_written_record() -> None:
    text = """
gpuMemory: 11441
gpuProduct: Tesla-K80
migStrategy: mixed
gpus:
  - id: GPU-8d5b3e5d-3e2c-5a8e-9d6a-1b2c3d4e5f60
    status:
      allocatedBy: {namespace: default, pod: p1, container: c}
      podGpuUsageStatus:
        uid-1: {utilization: {min: 80, max: 100}, fbUsed: 11441, useKnativeUtilization: false}
  - id: GPU-00000000-0000-0000-0000-000000000001
    status:
      allocatedBy: {namespace: "", pod: "", container: ""}
      podGpuUsageStatus: {}
"""
    node = NodeTopology.from_yaml(text, "n")
    assert node.node_name == "n"
    assert node.gpus[0].status.allocated_by == Holder("default", "p1", "c")
    assert node.gpus[0].status.usage["uid-1"].utilization == UtilizationRange(80, 100)
    assert node.gpus[1].status.is_free
    assert node.gpus[1].index == 1


@pytest.mark.parametrize("text", ["[", "- a\n- b", "gpus: [{status: {}}]", "gpuMemory: lots"])
def test_malformed_records(text: str) -> None:
    with pytest.raises(TopologyFormatError):
        NodeTopology.from_yaml(text)


# The record codec: libyaml when present, the same documents as the pure-Python codec.

_CODEC_CONFIG = load_cluster_config(
    "migStrategy: mixed\n"
    "nodePools:\n"
    "  full: {gpus: [{type: H100, count: 8}]}\n"
    "  mig: {gpus: [{type: H100, count: 8}], mig: {config: all-balanced}}\n"
    "  old: {gpus: [{type: Tesla K80, count: 2}]}\n"
)


def _real_records() -> list[NodeTopology]:
    """Records as the status-updater writes them: shared and exclusive holders of both kinds,
    usage with start times, banked counters, MIG devices with holders, a MIG config status,
    faults (one with a message longer than a YAML line, one with non-ASCII text)."""
    full = build_node_topology("gpu-node-1", _CODEC_CONFIG.pools["full"], _CODEC_CONFIG, kwok=True)
    for i, gpu in enumerate(full.gpus):
        uid = f"0b6f1f3c-5d0e-4a57-9d1e-{i:012d}"
        holders = [
            Holder("team-a", f"train-{i}", "main", uid, HOLDER_DRA, f"team-a/claim-{i}"),
            Holder("team-b", f"infer-{i}", "srv", uid + "b", resource="nvidia.com/gpu"),
        ]
        gpu.status.holders = holders[: 1 + i % 2]
        for h in gpu.status.holders:
            gpu.status.usage[h.pod_uid] = PodUsage(
                UtilizationRange(50, 90), 40960 + i, i % 3 == 0, h.namespace, h.pod, 1.7e9 + i / 8
            )
        gpu.status.energy_banked_j = 123456.789 + i
        gpu.status.sw_cap_banked_ns = 10**12 + i
    full.gpus[2].health = "Unhealthy"
    full.gpus[2].faults = [
        {
            "kind": "retired",
            "message": "removed from the pool; kept until released " * 3,
        },
        {"kind": "xid", "xid": 79, "injected": True, "message": "GPU perdu — « fell off »"},
    ]
    mig = build_node_topology("gpu-node-2", _CODEC_CONFIG.pools["mig"], _CODEC_CONFIG, kwok=False)
    mig.mig_config = MigConfigStatus("all-balanced", "all-1g.10gb", "pending", 1.7e9, "in use")
    for i, gpu in enumerate(mig.gpus):
        for j, dev in enumerate(gpu.mig_devices):
            uid = f"7c1d2e3f-0000-4000-8000-{i:06d}{j:06d}"
            dev.holders = [Holder("ns", f"job-{i}-{j}", "main", uid, HOLDER_DRA, f"ns/c-{j}")]
            dev.usage[uid] = PodUsage(UtilizationRange(10, 10), 512, False, "ns", f"job-{i}-{j}")
    old = build_node_topology("gpu-node-3", _CODEC_CONFIG.pools["old"], _CODEC_CONFIG, kwok=True)
    return [full, mig, old]


def _pure_dump(record: NodeTopology) -> str:
    return str(
        yaml.dump(
            record.to_dict(), Dumper=yaml.SafeDumper, sort_keys=False, default_flow_style=False
        )
    )


def test_codec_uses_libyaml_and_writes_the_pure_python_document() -> None:
    assert topology._codec().libyaml  # the images and the workspace ship PyYAML with libyaml
    records = _real_records()
    assert any(g.mig_devices and g.mig_devices[0].holders for g in records[1].gpus)
    for record in records:
        text = record.to_yaml()
        assert text == _pure_dump(record)  # byte for byte
        assert NodeTopology.from_yaml(text) == record
        pure = NodeTopology.from_dict(yaml.load(text, Loader=yaml.SafeLoader))
        assert pure == record


_PRINTABLE_ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


def _with_text(message: str, pod: str) -> NodeTopology:
    record = NodeTopology.from_dict(_real_records()[2].to_dict())
    record.gpus[0].faults = [{"kind": "custom", "message": message}]
    record.gpus[0].status.holders = [Holder("ns", pod, "c", "uid")]
    return record


@settings(max_examples=150, deadline=None)
@given(_PRINTABLE_ASCII, _PRINTABLE_ASCII)
def test_codec_writes_the_pure_python_document_for_printable_ascii(message: str, pod: str) -> None:
    record = _with_text(message, pod)
    text = record.to_yaml()
    assert text == _pure_dump(record)
    assert NodeTopology.from_yaml(text) == record


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200), st.text(max_size=40))
def test_codec_reads_both_emitters_documents_for_any_text(message: str, pod: str) -> None:
    # Strings that need escapes (control or non-ASCII characters) are folded at different
    # columns by the two emitters once longer than a line; either document reads back the same.
    record = _with_text(message, pod)
    for text in (record.to_yaml(), _pure_dump(record)):
        assert NodeTopology.from_yaml(text) == record
        pure = NodeTopology.from_dict(yaml.load(text, Loader=yaml.SafeLoader))
        assert pure == record


def test_codec_without_libyaml_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _real_records()
    expected = [r.to_yaml() for r in records]
    monkeypatch.delattr(yaml, "CSafeLoader")
    monkeypatch.delattr(yaml, "CSafeDumper")
    topology._codec.cache_clear()
    try:
        with capture_logs() as logs:
            for record, text in zip(records, expected, strict=True):
                assert record.to_yaml() == text
                assert NodeTopology.from_yaml(text) == record
            with pytest.raises(TopologyFormatError):
                NodeTopology.from_yaml("gpus: [")
        assert not topology._codec().libyaml
        assert [e["event"] for e in logs] == ["topology.yaml_without_libyaml"]
        assert logs[0]["log_level"] == "warning"
    finally:
        topology._codec.cache_clear()
