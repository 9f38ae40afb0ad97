"""Device-plugin time-slicing / MPS in the record: selection by node label, replicas per GPU,
renamed resource, bad configs fall back to unshared with an Event."""

from __future__ import annotations

from typing import Any

from fgo_common.topology import NodeTopology
from fgo_status_updater.reconcile import NodeInputs, NodeOutcome, reconcile_node
from su_helpers import config, container, node, pod

TEXT = """
nodePoolLabelKey: run.ai/simulated-gpu-node-pool
nodePools:
  default:
    gpus: [{type: H100, count: 2}]
devicePluginConfig:
  configs:
    ts4:
      version: v1
      sharing:
        timeSlicing:
          resources: [{name: nvidia.com/gpu, replicas: 4}]
    renamed:
      version: v1
      sharing:
        timeSlicing:
          renameByDefault: true
          resources: [{name: nvidia.com/gpu, replicas: 2}]
    mps:
      version: v1
      sharing:
        mps:
          resources: [{name: nvidia.com/gpu, replicas: 2}]
    broken:
      version: v1
      sharing:
        mps:
          renameByDefault: true
          resources: [{name: nvidia.com/gpu, replicas: 2}]
"""
CFG = config(TEXT)


def run(
    pods: list[dict[str, Any]], label: str | None, prev: NodeTopology | None = None
) -> NodeOutcome:
    the_node = node()
    if label is not None:
        the_node["metadata"]["labels"]["nvidia.com/device-plugin.config"] = label
    return reconcile_node(NodeInputs("node-a", the_node, CFG, prev, pods=pods, now=1795860600.0))


def sharers(record: NodeTopology) -> list[list[str]]:
    return [[h.pod for h in g.status.holders] for g in record.gpus]


def test_unlabelled_node_is_unshared() -> None:
    out = run([pod(f"p{i}", gpus=1) for i in range(3)], None)
    assert out.record is not None and out.record.sharing is None
    assert sum(len(h) for h in sharers(out.record)) == 2
    assert any(f.reason == "InsufficientGpus" for f in out.findings)


def test_four_sharers_per_gpu_and_the_ninth_waits() -> None:
    pods = [pod(f"p{i}", gpus=1) for i in range(9)]
    out = run(pods, "ts4")
    record = out.record
    assert record is not None and record.sharing is not None
    assert record.sharing.strategy == "time-slicing" and record.sharing.config == "ts4"
    assert [len(h) for h in sharers(record)] == [4, 4]
    assert {h.sharing for g in record.gpus for h in g.status.holders} == {"TimeSlicing"}
    assert [f.obj.name for f in out.findings if f.reason == "InsufficientGpus"] == ["p8"]
    # kept across a restart / recompute
    again = run(pods, "ts4", NodeTopology.from_yaml(record.to_yaml()))
    assert again.record is not None and sharers(again.record) == sharers(record)


def test_renamed_resource_and_mps() -> None:
    shared = [
        pod(f"s{i}", containers=[container("main", extra={"nvidia.com/gpu.shared": 1})])
        for i in range(4)
    ]
    out = run(shared, "renamed")
    assert out.record is not None
    assert [len(h) for h in sharers(out.record)] == [2, 2]
    assert {h.resource for g in out.record.gpus for h in g.status.holders} == {
        "nvidia.com/gpu.shared"
    }
    mps = run([pod("m0", gpus=1), pod("m1", gpus=1)], "mps")
    assert mps.record is not None and mps.record.sharing is not None
    assert mps.record.sharing.fail_requests_greater_than_one
    assert {h.sharing for g in mps.record.gpus for h in g.status.holders} == {"MPS"}


def test_bad_config_falls_back_unshared_with_event() -> None:
    out = run([pod("p0", gpus=1)], "broken")
    assert out.record is not None and out.record.sharing is None
    (finding,) = [f for f in out.findings if f.reason == "InvalidDevicePluginConfig"]
    assert "sharing.mps.renameByDefault" in finding.message
    assert finding.obj.name == "node-a"
    unknown = run([], "nope")
    assert any(f.reason == "UnknownDevicePluginConfig" for f in unknown.findings)


def test_replica_ids_reported_by_the_kubelet_are_recorded() -> None:
    from fgo_common.identity import gpu_uuid

    uuid1 = gpu_uuid("node-a", 1)
    p = pod("k0", gpus=1)
    p["metadata"].setdefault("annotations", {})["fake-gpu-operator/allocated-devices"] = (
        f"nvidia.com/gpu={uuid1}::3"
    )
    out = run([p], "ts4")
    assert out.record is not None
    assert sharers(out.record) == [[], ["k0"]], out.findings


def test_live_switch_to_fewer_replicas_keeps_holders() -> None:
    pods = [pod(f"p{i}", gpus=1) for i in range(8)]
    first = run(pods, "ts4")
    assert first.record is not None
    prev = NodeTopology.from_yaml(first.record.to_yaml())
    for _ in range(2):  # the switch, then a recompute from the switched record
        out = run([*pods, pod("late", gpus=1)], "mps", prev)
        assert out.record is not None and out.record.sharing is not None
        assert out.record.sharing.strategy == "mps"
        assert [len(h) for h in sharers(out.record)] == [4, 4]
        assert [f.obj.name for f in out.findings if f.reason == "InsufficientGpus"] == ["late"]
        prev = NodeTopology.from_yaml(out.record.to_yaml())
