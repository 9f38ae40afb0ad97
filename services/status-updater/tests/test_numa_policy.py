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


# --- CPU and memory on the zone (issue 24: the rule and the NRT agree) -----------------------------


def cpu_cfg(policy: str = "single-numa-node") -> Any:
    return config(
        f"""
nodePoolLabelKey: run.ai/simulated-gpu-node-pool
nodePools:
  default:
    gpus: [{{type: H100, count: 8}}]
    numa: {{zones: 2, cpuPerZone: "16", memPerZone: 64Gi, topologyManagerPolicy: {policy}}}
"""
    )


def cpu_pod(name: str, gpus: int, cpu: str, memory: str = "1Gi") -> dict[str, Any]:
    main = container("main", gpus)
    main["resources"]["requests"] = {"cpu": cpu, "memory": memory}
    return pod(name, containers=[main])


def test_cpu_decides_the_zone_when_gpus_fit_both() -> None:
    # a takes 2 GPUs and 12 of zone 0's 16 CPUs; b (2 GPUs, 8 CPUs) fits zone 0's GPUs but not
    # its 4 CPUs left: it goes to zone 1, as the NRT shows zone 0 with 4 CPUs available.
    out = run([cpu_pod("a", 2, "12"), cpu_pod("b", 2, "8")], cpu_cfg())
    assert holdings(out.record) == {"a": [0, 1], "b": [4, 5]}
    assert "TopologyAffinityError" not in reasons(out)


def test_cpu_or_memory_fitting_no_zone_with_the_gpus_is_refused() -> None:
    out = run([cpu_pod("a", 2, "12"), cpu_pod("b", 4, "2"), cpu_pod("c", 2, "8")], cpu_cfg())
    # c: zone 0 has 2 GPUs but 4 CPUs left; zone 1 has no GPU left.
    assert holdings(out.record) == {"a": [0, 1], "b": [4, 5, 6, 7]}
    (finding,) = [f for f in out.findings if f.reason == "TopologyAffinityError"]
    assert finding.obj.name == "c"
    assert finding.message.startswith(
        "2 nvidia.com/gpu with 8 CPU and 1Gi memory do not fit on one NUMA node"
    )
    assert "free per zone: node-0: 2 GPU, 4 CPU, 63Gi memory; node-1: 0 GPU, 14 CPU" in (
        finding.message
    )
    out = run([cpu_pod("m", 1, "1", "100Gi")], cpu_cfg())
    assert holdings(out.record) == {}
    assert "TopologyAffinityError" in reasons(out)


def test_cpu_is_not_judged_by_other_policies() -> None:
    out = run([cpu_pod("a", 2, "12"), cpu_pod("b", 2, "8")], cpu_cfg("best-effort"))
    assert holdings(out.record) == {"a": [0, 1], "b": [2, 3]}


def test_zone_cpu_from_the_node_allocatable() -> None:
    inputs = NodeInputs(
        node_name="node-a",
        node={**node(), "status": {"allocatable": {"cpu": "8", "memory": "16Gi"}}},
        config=cfg(),
        previous=None,
        pods=[cpu_pod("a", 1, "3"), cpu_pod("b", 1, "2")],
        now=NOW,
    )
    out = reconcile_node(inputs, ReconcileOptions())
    # 4 CPUs per zone: a leaves 1 on zone 0, so b goes to zone 1.
    assert holdings(out.record) == {"a": [0], "b": [4]}
