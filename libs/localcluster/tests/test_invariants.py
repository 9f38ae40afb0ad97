"""The invariant checker's pure part: a consistent snapshot is green, and each kind of drift the
fault suite must catch is reported with a message naming the node, pod and device."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fgo_common.annotations import ALLOCATED_DEVICES
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import HOLDER_DRA, UNHEALTHY, Holder, NodeTopology
from fgo_localcluster.invariants import (
    ExporterTarget,
    Sample,
    Scope,
    Snapshot,
    check,
    effective_request,
    expected_capacity,
    parse_exposition,
)

NS = "work"
URL = "http://exporter/metrics"


def record(node: str, count: int = 4, *, kwok: bool = True) -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "h100", "count": count}]}}}
    )
    return build_node_topology(node, config.pools["p"], config, kwok=kwok)


def node_obj(
    name: str, gpus: int, healthy: int | None = None, *, kwok: bool = True
) -> dict[str, Any]:
    alloc = gpus if healthy is None else healthy
    return {
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"} if kwok else {}},
        "status": {
            "capacity": {"cpu": "32", "nvidia.com/gpu": str(gpus)},
            "allocatable": {"cpu": "32", "nvidia.com/gpu": str(alloc)},
        },
    }


def pod(
    name: str,
    node: str,
    gpus: int = 0,
    *,
    uid: str | None = None,
    phase: str = "Running",
    claim: str | None = None,
    init_gpus: int = 0,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [
            {"name": "main", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}}
        ],
    }
    status: dict[str, Any] = {"phase": phase}
    if init_gpus:
        spec["initContainers"] = [
            {"name": "init", "resources": {"limits": {"nvidia.com/gpu": str(init_gpus)}}}
        ]
    if claim:
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "t"}]
        status["resourceClaimStatuses"] = [{"name": "gpu", "resourceClaimName": claim}]
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid or f"uid-{name}",
            "annotations": annotations or {},
        },
        "spec": spec,
        "status": status,
    }


def hold(rec: NodeTopology, index: int, p: dict[str, Any], *, claim: str = "") -> None:
    rec.gpus[index].status.holders.append(
        Holder(
            namespace=NS,
            pod=p["metadata"]["name"],
            container="main",
            pod_uid=p["metadata"]["uid"],
            kind=HOLDER_DRA if claim else "device-plugin",
            claim=claim,
        )
    )


def slices_for(rec: NodeTopology, generation: int = 1) -> list[dict[str, Any]]:
    devices = [
        {"name": f"gpu-{g.minor}", "attributes": {"uuid": {"string": g.id}}} for g in rec.gpus
    ]
    return [
        {
            "metadata": {"name": f"{rec.node_name}-gpu"},
            "spec": {
                "driver": "gpu.nvidia.com",
                "nodeName": rec.node_name,
                "pool": {"name": rec.node_name, "generation": generation, "resourceSliceCount": 1},
                "devices": devices,
            },
        }
    ]


def claim_obj(name: str, node: str, device: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {
                            "request": "gpu",
                            "driver": "gpu.nvidia.com",
                            "pool": node,
                            "device": device,
                        }
                    ]
                }
            }
        },
    }


def samples_for(rec: NodeTopology) -> list[Sample]:
    out = []
    for g in rec.gpus:
        base = {"gpu": str(g.index), "UUID": g.id, "Hostname": rec.node_name}
        keys = {(h.namespace, h.pod, h.container) for h in g.status.holders}
        if not keys:
            out.append(Sample("DCGM_FI_DEV_FB_USED", base, 0.0))
        for ns, p, c in keys:
            out.append(
                Sample(
                    "DCGM_FI_DEV_FB_USED", {**base, "namespace": ns, "pod": p, "container": c}, 1.0
                )
            )
    return out


@pytest.fixture
def world() -> tuple[Snapshot, Scope]:
    """Two KWOK nodes: a device-plugin pod holding 2 GPUs, a DRA pod holding gpu-3, an idle pod."""
    a, b = record("a"), record("b")
    dp = pod("dp", "a", 2)
    dra = pod("dra", "a", claim="c1")
    idle = pod("idle", "b")
    hold(a, 0, dp)
    hold(a, 1, dp)
    hold(a, 3, dra, claim=f"{NS}/c1")
    snap = Snapshot(
        records={"a": a, "b": b},
        nodes={"a": node_obj("a", 4), "b": node_obj("b", 4)},
        pods=[dp, dra, idle],
        claims={f"{NS}/c1": claim_obj("c1", "a", "gpu-3")},
        slices=slices_for(a) + slices_for(b),
    )
    snap.scrapes = {URL: samples_for(a) + samples_for(b)}
    scope = Scope(topology_namespace="gpu-operator", exporters=(ExporterTarget(URL),))
    return snap, scope


def kinds(snapshot: Snapshot, scope: Scope) -> list[str]:
    return [v.kind for v in check(snapshot, scope)]


def test_consistent_world_is_green(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    assert check(snap, scope) == []


def test_pod_holding_too_few_gpus(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    snap.records["a"].gpus[1].status.holders.clear()
    snap.scrapes = {URL: samples_for(snap.records["a"]) + samples_for(snap.records["b"])}
    violations = check(snap, scope)
    assert [v.kind for v in violations] == ["holdings"]
    assert "pod work/dp requests 1" not in violations[0].message
    assert "requests 2 device(s), the record gives it 1" in violations[0].message


def test_gpu_held_twice_and_stale_holder(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    ghost = pod("ghost", "a", 1)
    hold(snap.records["a"], 0, ghost)  # GPU 0 now also held by a pod the API does not have
    snap.scrapes = {URL: samples_for(snap.records["a"]) + samples_for(snap.records["b"])}
    assert sorted(kinds(snap, scope)) == ["exclusivity", "stale-holder"]


def test_shared_claim_is_not_double_holding(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    other = pod("dra2", "a", claim="c1")
    snap.pods.append(other)
    hold(snap.records["a"], 3, other, claim=f"{NS}/c1")
    snap.scrapes = {URL: samples_for(snap.records["a"]) + samples_for(snap.records["b"])}
    assert check(snap, scope) == []


def test_finished_pod_still_holding(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    snap.pods[0]["status"]["phase"] = "Succeeded"
    violations = check(snap, scope)
    assert {v.kind for v in violations} == {"stale-holder"}
    assert "Succeeded" in violations[0].message


def test_dra_pod_holding_other_device_than_its_claim(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    snap.claims[f"{NS}/c1"] = claim_obj("c1", "a", "gpu-2")
    violations = check(snap, scope)
    assert [v.kind for v in violations] == ["holdings"]
    assert "GPU 2" in violations[0].message and "GPU 3" in violations[0].message


def test_capacity_and_allocatable_follow_the_record(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    snap.nodes["b"] = node_obj("b", 5)
    assert kinds(snap, scope) == ["capacity"]
    snap.nodes["b"] = node_obj("b", 4)
    snap.records["b"].gpus[0].health = UNHEALTHY
    # Unhealthy GPU: allocatable must drop to 3.
    assert kinds(snap, scope) == ["capacity"]
    snap.nodes["b"] = node_obj("b", 4, healthy=3)
    assert check(snap, scope) == []


def test_slices_follow_the_record(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    stale = copy.deepcopy(snap.slices[1])
    stale["spec"]["devices"].pop()
    snap.slices[1] = stale
    assert kinds(snap, scope) == ["slices"]
    # A newer generation that is complete wins over the old one.
    snap.slices.append(slices_for(snap.records["b"], generation=2)[0])
    assert check(snap, scope) == []
    # A pool of a node without a record is stale.
    snap.slices += slices_for(record("gone"))
    scope.nodes = frozenset({"a", "b", "gone"})
    assert kinds(snap, scope) == ["slices"]


def test_metrics_must_match_holders(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    leftover = Sample(
        "DCGM_FI_DEV_FB_USED",
        {
            "UUID": snap.records["b"].gpus[0].id,
            "Hostname": "b",
            "namespace": NS,
            "pod": "old",
            "container": "main",
        },
        1.0,
    )
    assert isinstance(snap.scrapes[URL], list)
    snap.scrapes[URL].append(leftover)  # type: ignore[union-attr]
    violations = check(snap, scope)
    assert [v.kind for v in violations] == ["metrics"]
    assert "old" in violations[0].message
    snap.scrapes[URL] = "ConnectionRefusedError"
    assert kinds(snap, scope) == ["metrics"]


def test_record_of_a_deleted_node(world: tuple[Snapshot, Scope]) -> None:
    snap, scope = world
    del snap.nodes["b"]
    assert "record" in kinds(snap, scope)


def test_kubelet_node_record_follows_the_kubelets_choice() -> None:
    rec = record("real", kwok=False)
    p = pod("p", "real", 1)
    hold(rec, 0, p)
    snap = Snapshot(
        records={"real": rec}, nodes={"real": node_obj("real", 4, kwok=False)}, pods=[p]
    )
    scope = Scope(topology_namespace="x", slice_nodes=frozenset())
    missing = check(snap, scope)
    assert [v.kind for v in missing] == ["holdings"] and "annotation" in missing[0].message
    p["metadata"]["annotations"][ALLOCATED_DEVICES] = f"nvidia.com/gpu={rec.gpus[2].id}"
    assert [v.kind for v in check(snap, scope)] == ["holdings"]
    p["metadata"]["annotations"][ALLOCATED_DEVICES] = f"nvidia.com/gpu={rec.gpus[0].id}"
    assert check(snap, scope) == []


def test_effective_request_rules() -> None:
    assert effective_request(pod("p", "n", 1, init_gpus=3), "nvidia.com/gpu") == 3
    assert effective_request(pod("p", "n", 2, init_gpus=1), "nvidia.com/gpu") == 2
    sidecar = pod("p", "n", 1)
    sidecar["spec"]["initContainers"] = [
        {"name": "s", "restartPolicy": "Always", "resources": {"limits": {"nvidia.com/gpu": "1"}}},
        {"name": "i", "resources": {"limits": {"nvidia.com/gpu": "2"}}},
    ]
    # max(app 1 + sidecar 1, init 2 + sidecar 1) = 3
    assert effective_request(sidecar, "nvidia.com/gpu") == 3


def test_expected_capacity_per_mig_strategy() -> None:
    rec = record("m", 2)
    rec.mig_strategy = "none"
    assert expected_capacity(rec) == {"nvidia.com/gpu": (2, 2)}


def test_expected_capacity_when_dra_shares_the_gpus() -> None:
    rec = record("m", 3)
    rec.gpus[0].status.holders.append(Holder("ns", "dra-pod", kind=HOLDER_DRA, claim="ns/c"))
    rec.gpus[1].status.holders.append(Holder("ns", "dp-pod", resource="nvidia.com/gpu"))
    # Only the DRA-held GPU leaves allocatable: the extended-resource pod counts against it.
    assert expected_capacity(rec, dra_shared=True) == {"nvidia.com/gpu": (3, 2)}
    assert expected_capacity(rec) == {"nvidia.com/gpu": (3, 3)}


def test_parse_exposition_with_escapes() -> None:
    text = '# HELP x y\nDCGM_FI_DEV_FB_USED{UUID="GPU-1",pod="a\\"b",Hostname="n"} 12\nup 1\n'
    samples = parse_exposition(text)
    assert samples[0].labels == {"UUID": "GPU-1", "pod": 'a"b', "Hostname": "n"}
    assert samples[0].value == 12.0 and samples[1].name == "up"


def test_device_plugin_replicas_share_a_gpu(world: tuple[Snapshot, Scope]) -> None:
    """Time-slicing (record sharing, replicas 2): two replica holders of one GPU are no double
    holding, and capacity counts replicas."""
    import dataclasses

    from fgo_common import dpsharing

    snap, scope = world
    rec = snap.records["a"]
    rec.sharing = dpsharing.parse_config(
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}"
    )
    for gpu in rec.gpus:
        gpu.status.holders = [
            dataclasses.replace(h, sharing="TimeSlicing") if h.kind == "device-plugin" else h
            for h in gpu.status.holders
        ]
    extra = pod("dp2", "a", 1)
    snap.pods.append(extra)
    hold(rec, 0, extra)
    rec.gpus[0].status.holders[-1] = dataclasses.replace(
        rec.gpus[0].status.holders[-1], sharing="TimeSlicing"
    )
    snap.nodes["a"] = node_obj("a", 8)
    snap.scrapes = {URL: samples_for(rec) + samples_for(snap.records["b"])}
    assert expected_capacity(rec) == {"nvidia.com/gpu": (8, 8)}
    assert check(snap, scope) == []
    rec.sharing = None  # the same holders without sharing: GPU 0 held twice
    snap.nodes["a"] = node_obj("a", 4)
    assert "exclusivity" in kinds(snap, scope)
