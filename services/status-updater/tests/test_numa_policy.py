"""A numa pool's Topology Manager policy on KWOK nodes: the status-updater is the kubelet there,
so with single-numa-node it refuses (TopologyAffinityError Event, no GPU) a pod whose GPUs
cannot come from one NUMA node, as a real kubelet would; other policies and real nodes keep the
plain pick (docs/numa.md)."""

from __future__ import annotations

from typing import Any

from fgo_common.topology import NodeTopology
from fgo_status_updater.reconcile import NodeInputs, NodeOutcome, ReconcileOptions, reconcile_node
from su_helpers import config, container, node, pod

NOW = 1795860600.0


def cfg(policy: str = "single-numa-node", scope: str = "container") -> Any:
    return config(
        f"""
nodePoolLabelKey: run.ai/simulated-gpu-node-pool
nodePools:
  default:
    gpus: [{{type: H100, count: 8}}]
    numa: {{zones: 2, topologyManagerPolicy: {policy}, topologyManagerScope: {scope}}}
"""
    )


def run(pods: list[dict[str, Any]], the_cfg: Any, *, kwok: bool = True) -> NodeOutcome:
    inputs = NodeInputs(
        node_name="node-a",
        node=node(kwok=kwok),
        config=the_cfg,
        previous=None,
        pods=pods,
        claims={},
        now=NOW,
    )
    return reconcile_node(inputs, ReconcileOptions())


def holdings(record: NodeTopology | None) -> dict[str, list[int]]:
    assert record is not None
    out: dict[str, list[int]] = {}
    for gpu in record.gpus:
        for h in gpu.status.holders:
            out.setdefault(h.pod, []).append(gpu.index)
    return out


def reasons(outcome: NodeOutcome) -> list[str]:
    return [f.reason for f in outcome.findings]


def test_fits_one_zone_is_admitted_on_one_zone() -> None:
    out = run([pod("a", gpus=3), pod("b", gpus=3)], cfg())
    assert holdings(out.record) == {"a": [0, 1, 2], "b": [4, 5, 6]}
    assert "TopologyAffinityError" not in reasons(out)


def test_spanning_zones_is_refused_with_an_event() -> None:
    out = run([pod("a", gpus=3), pod("b", gpus=3), pod("c", gpus=2)], cfg())
    # c: 2 GPUs free, one per zone: a single-numa-node kubelet refuses it.
    assert holdings(out.record) == {"a": [0, 1, 2], "b": [4, 5, 6]}
    (finding,) = [f for f in out.findings if f.reason == "TopologyAffinityError"]
    assert finding.obj.name == "c" and finding.type == "Warning"
    assert "free per zone: node-0: 1, node-1: 1" in finding.message


def test_more_than_a_zone_is_refused() -> None:
    out = run([pod("big", gpus=6)], cfg())
    assert holdings(out.record) == {}
    assert "TopologyAffinityError" in reasons(out)


def test_other_policies_and_real_nodes_keep_the_plain_pick() -> None:
    for the_cfg, kwok in ((cfg("best-effort"), True), (cfg("none"), True), (cfg(), False)):
        out = run([pod("big", gpus=6)], the_cfg, kwok=kwok)
        assert holdings(out.record) == {"big": [0, 1, 2, 3, 4, 5]}
        assert "TopologyAffinityError" not in reasons(out)


def test_container_scope_judges_single_gpu_containers_only() -> None:
    two = pod("two", containers=[container("x", 3), container("y", 3)])
    out = run([two], cfg(scope="container"))
    assert holdings(out.record) == {"two": [0, 1, 2, 3, 4, 5]}
    out = run([two], cfg(scope="pod"))
    assert holdings(out.record) == {}
    assert "TopologyAffinityError" in reasons(out)


def test_not_enough_gpus_at_all_stays_insufficient() -> None:
    out = run([pod("a", gpus=4), pod("b", gpus=4), pod("c", gpus=1)], cfg())
    assert "TopologyAffinityError" not in reasons(out)
    assert "InsufficientGpus" in reasons(out)
