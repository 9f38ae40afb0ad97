"""Per-node topology record: identity, YAML round trip, reference compatibility."""

from __future__ import annotations

import uuid

import pytest
import yaml
from fgo_common.config import load_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import (
    HOLDER_DRA,
    Holder,
    NodeTopology,
    PodUsage,
    TopologyFormatError,
    UtilizationRange,
)

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
