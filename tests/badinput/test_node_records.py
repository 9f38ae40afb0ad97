"""Per-node records (``topology-<node>``) and the node snapshot (``topology.json``) as their
readers see them: a record damaged by a foreign writer, a truncated snapshot, wrong types in
every field. Readers (exporter, device plugin, DRA plugins, nvidia-smi) keep their last good
record only for ``TopologyFormatError`` / ``NodeStateError``; any other exception escapes their
watch loops and restarts them — on the same bad record, forever."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
import yaml
from badinput_counts import tried
from corpus import nasty_values, nested
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.nodestate import NodeStateError, decode_node_state, encode_node_state
from fgo_common.topology import NodeTopology, TopologyFormatError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

RECORD = "node record: fgo_common.topology.NodeTopology"
SNAPSHOT = "node snapshot: fgo_common.nodestate"

_CONFIG = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "H100", "count": 2}]}}})
GOOD = build_node_topology("n1", _CONFIG.pools["p"], _CONFIG, kwok=True).to_dict()


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in ``obj`` (dict keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, (*prefix, i))
    return out


PATHS = _paths(GOOD)


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


HAND = [
    ("gpus-string", {**GOOD, "gpus": "abc"}),
    ("gpus-ints", {**GOOD, "gpus": [1, 2]}),
    ("gpu-status-string", _replace(GOOD, ("gpus", 0, "status"), "bad")),
    ("gpu-mig-string", _replace(GOOD, ("gpus", 0, "mig"), "yes")),
    ("holders-string", _replace(GOOD, ("gpus", 0, "status"), {"holders": "x"})),
    ("usage-string", _replace(GOOD, ("gpus", 0, "status"), {"podGpuUsageStatus": {"a": "b"}})),
    ("allocated-by-string", _replace(GOOD, ("gpus", 0, "status"), {"allocatedBy": "pod"})),
    (
        "utilization-string",
        _replace(GOOD, ("gpus", 0, "status"), {"podGpuUsageStatus": {"a": {"utilization": "5"}}}),
    ),
    ("memory-inf", {**GOOD, "gpuMemory": float("inf")}),
    ("gpu-id-missing", _replace(GOOD, ("gpus", 0), {"index": 0})),
    ("other-devices-string", {**GOOD, "otherDevices": "x"}),
    ("nested", {**GOOD, "gpus": nested(500)}),
]


@pytest.mark.parametrize(("name", "doc"), HAND, ids=[n for n, _ in HAND])
def test_damaged_record_is_a_format_error(name: str, doc: dict[str, Any]) -> None:
    tried(RECORD)
    try:
        NodeTopology.from_dict(doc, "n1")
    except TopologyFormatError as exc:
        assert str(exc).strip()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=nasty_values())
def test_any_field_with_any_value(path: tuple[Any, ...], value: Any) -> None:
    tried(RECORD)
    doc = _replace(GOOD, path, value)
    with contextlib.suppress(TopologyFormatError):
        NodeTopology.from_dict(doc, "n1")


@pytest.mark.parametrize(
    "text",
    ["", "~", "[1, 2]", "gpus: [", "{a: " * 20_000 + "1" + "}" * 20_000, "\x00\x01"],
    ids=["empty", "null", "list", "unclosed", "nested-20k", "binary"],
)
def test_damaged_record_yaml(text: str) -> None:
    tried(RECORD)
    with pytest.raises(TopologyFormatError):
        NodeTopology.from_yaml(text, "n1")


def test_truncated_snapshot_at_every_length() -> None:
    """A snapshot cut short (a writer that died mid-write without the atomic rename, or a full
    disk): every prefix of a real snapshot is refused cleanly."""
    data = encode_node_state(NodeTopology.from_dict(GOOD, "n1"))
    step = max(1, len(data) // 400)
    for end in range(0, len(data), step):
        tried(SNAPSHOT)
        with pytest.raises(NodeStateError):
            decode_node_state(data[:end])


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(PATHS), value=nasty_values())
def test_snapshot_with_any_field_damaged(path: tuple[Any, ...], value: Any) -> None:
    tried(SNAPSHOT)
    doc = _replace(GOOD, path, value)
    try:
        data = json.dumps(doc)
    except ValueError:
        return
    with contextlib.suppress(NodeStateError):
        decode_node_state(data)


def test_yaml_record_round_trip_still_works() -> None:
    """The corpus is not vacuous: the undamaged record parses."""
    tried(RECORD)
    parsed = NodeTopology.from_yaml(yaml.safe_dump(GOOD), "n1")
    assert [g.id for g in parsed.gpus] == [g["id"] for g in GOOD["gpus"]]
