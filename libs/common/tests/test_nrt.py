"""NodeResourceTopology objects: zones, costs, resources, policies, and ``available`` following
the pods that hold GPUs (fgo_common.nrt)."""

from __future__ import annotations

from typing import Any

import pytest
from fgo_common.config import ConfigError, load_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.nrt import (
    PodDemand,
    build_nrt,
    legacy_policy,
    nrt_content,
    pod_demand,
    split_largest_remainder,
)
from fgo_common.topology import UNHEALTHY, Holder, NodeTopology
from fgo_common.units import (
    QuantityError,
    format_bytes,
    format_millis,
    quantity_bytes,
    quantity_millis,
)


def _record(numa: str, count: int = 8) -> tuple[Any, NodeTopology]:
    config = load_cluster_config(
        f"nodePools: {{p: {{gpus: [{{type: H100, count: {count}}}], numa: {numa}}}}}"
    )
    pool = config.pools["p"]
    return pool, build_node_topology("n1", pool, config, kwok=True)


def _resources(nrt: dict[str, Any], zone: int) -> dict[str, tuple[str, str, str]]:
    return {
        r["name"]: (r["capacity"], r["allocatable"], r["available"])
        for r in nrt["zones"][zone]["resources"]
    }


def _hold(record: NodeTopology, index: int, pod: str, namespace: str = "default") -> None:
    record.gpus[index].status.holders.append(Holder(namespace, pod, "c"))


def test_two_zones_shape_matches_the_reference() -> None:
    pool, record = _record("{zones: 2}")
    nrt = build_nrt(
        "n1", "uid-1", pool.numa, record, allocatable={"cpu": "32", "memory": "128Gi"}, pods=[]
    )
    assert nrt["apiVersion"] == "topology.node.k8s.io/v1alpha2"
    assert nrt["kind"] == "NodeResourceTopology"
    assert nrt["metadata"]["name"] == "n1"
    assert nrt["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "uid-1"}
    ]
    assert nrt["topologyPolicies"] == ["SingleNUMANodeContainerLevel"]
    assert nrt["attributes"] == [
        {"name": "topologyManagerPolicy", "value": "single-numa-node"},
        {"name": "topologyManagerScope", "value": "container"},
    ]
    assert [z["name"] for z in nrt["zones"]] == ["node-0", "node-1"]
    assert all(z["type"] == "Node" for z in nrt["zones"])
    assert nrt["zones"][1]["costs"] == [
        {"name": "node-0", "value": 21},
        {"name": "node-1", "value": 10},
    ]
    for zone in (0, 1):
        assert _resources(nrt, zone) == {
            "nvidia.com/gpu": ("4", "4", "4"),
            "cpu": ("16", "16", "16"),
            "memory": ("64Gi", "64Gi", "64Gi"),
        }
    # The zones are the record's numaNode values (what nvidia-smi and DRA show).
    assert [g.numa_node for g in record.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_uneven_split_remainder_to_lowest_zones_and_custom_distances() -> None:
    pool, record = _record("{zones: 4, distances: {self: 11, remote: 40}}", count=6)
    nrt = build_nrt("n1", "u", pool.numa, record, allocatable={}, pods=[])
    assert [_resources(nrt, z)["nvidia.com/gpu"][0] for z in range(4)] == ["2", "2", "1", "1"]
    assert nrt["zones"][2]["costs"][2] == {"name": "node-2", "value": 11}
    assert nrt["zones"][2]["costs"][0] == {"name": "node-0", "value": 40}
    # No allocatable and no cpuPerZone/memPerZone: GPUs only, as the reference.
    assert set(_resources(nrt, 0)) == {"nvidia.com/gpu"}


def test_explicit_gpus_per_zone_and_quantities() -> None:
    pool, record = _record("{zones: 2, gpusPerZone: [6, 2], cpuPerZone: 15500m, memPerZone: 1G}")
    nrt = build_nrt("n1", "u", pool.numa, record, allocatable={"cpu": "64"}, pods=[])
    assert _resources(nrt, 0)["nvidia.com/gpu"] == ("6", "6", "6")
    assert _resources(nrt, 1)["nvidia.com/gpu"] == ("2", "2", "2")
    assert _resources(nrt, 0)["cpu"] == ("15500m", "15500m", "15500m")
    assert _resources(nrt, 0)["memory"] == ("1000000000",) * 3


def test_available_follows_the_pods_holding_gpus() -> None:
    pool, record = _record("{zones: 2}")
    _hold(record, 0, "a")
    _hold(record, 1, "a")
    _hold(record, 3, "b")  # b spans both zones: 1 GPU in zone 0 ...
    _hold(record, 4, "b")  # ... and 1 in zone 1
    record.gpus[7].health = UNHEALTHY
    pods = [
        PodDemand("default", "a", 4000, 8 * 1024**3),
        PodDemand("default", "b", 3001, 3),
        PodDemand("default", "cpu-only", 5000, 0),  # holds no GPU: no zone to charge
    ]
    nrt = build_nrt(
        "n1", "u", pool.numa, record, allocatable={"cpu": "32", "memory": "128Gi"}, pods=pods
    )
    z0, z1 = _resources(nrt, 0), _resources(nrt, 1)
    assert z0["nvidia.com/gpu"] == ("4", "4", "1")
    assert z1["nvidia.com/gpu"] == ("4", "3", "2")  # GPU 7 unhealthy: not allocatable
    # b's 3001m split 1:1 with the odd millicore to the lower zone.
    assert z0["cpu"] == ("16", "16", f"{16000 - 4000 - 1501}m")
    assert z1["cpu"] == ("16", "16", f"{16000 - 1500}m")
    assert z0["memory"][2] == str(56 * 1024**3 - 2)
    assert z1["memory"][2] == str(64 * 1024**3 - 1)


def test_available_never_negative() -> None:
    pool, record = _record("{zones: 2, cpuPerZone: 1}")
    _hold(record, 0, "big")
    nrt = build_nrt(
        "n1", "u", pool.numa, record, allocatable={}, pods=[PodDemand("default", "big", 9000, 0)]
    )
    assert _resources(nrt, 0)["cpu"] == ("1", "1", "0")


def test_mig_holders_take_their_gpu() -> None:
    pool, record = _record("{zones: 2}")
    nrt = build_nrt("n1", "u", pool.numa, record, allocatable={}, pods=[])
    assert _resources(nrt, 0)["nvidia.com/gpu"][2] == "4"
    record.gpus[0].status.holders.append(Holder("ns", "p"))
    nrt = build_nrt("n1", "u", pool.numa, record, allocatable={}, pods=[])
    assert _resources(nrt, 0)["nvidia.com/gpu"][2] == "3"


@pytest.mark.parametrize(
    ("policy", "scope", "legacy"),
    [
        ("single-numa-node", "container", "SingleNUMANodeContainerLevel"),
        ("single-numa-node", "pod", "SingleNUMANodePodLevel"),
        ("restricted", "container", "RestrictedContainerLevel"),
        ("best-effort", "pod", "BestEffortPodLevel"),
        ("none", "container", "None"),
    ],
)
def test_legacy_policy(policy: str, scope: str, legacy: str) -> None:
    assert legacy_policy(policy, scope) == legacy
    pool, record = _record(
        f"{{zones: 2, topologyManagerPolicy: {policy}, topologyManagerScope: {scope}}}"
    )
    nrt = build_nrt("n1", "u", pool.numa, record, allocatable={}, pods=[])
    assert nrt["topologyPolicies"] == [legacy]
    assert nrt["attributes"][0]["value"] == policy


def test_nrt_content_ignores_server_fields() -> None:
    pool, record = _record("{zones: 2}")
    built = build_nrt("n1", "u", pool.numa, record, allocatable={}, pods=[])
    stored = {
        **built,
        "metadata": {
            **built["metadata"],
            "resourceVersion": "5",
            "uid": "x",
            "managedFields": [{}],
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
    }
    assert nrt_content(stored) == nrt_content(built)
    _hold(record, 0, "a")
    changed = build_nrt("n1", "u", pool.numa, record, allocatable={}, pods=[])
    assert nrt_content(stored) != nrt_content(changed)


def test_pod_demand_effective_requests() -> None:
    pod = {
        "metadata": {"namespace": "ns", "name": "p"},
        "spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}},
            ],
            "initContainers": [
                {"name": "init", "resources": {"requests": {"cpu": "4"}}},
                {
                    "name": "side",
                    "restartPolicy": "Always",
                    "resources": {"requests": {"cpu": "100m"}},
                },
            ],
            "overhead": {"cpu": "10m"},
        },
    }
    # cpu: max(1500 + 100, 4000) + 10 overhead; memory: 1Gi + 512Mi
    assert pod_demand(pod) == PodDemand("ns", "p", 4010, 1536 * 1024**2)
    assert pod_demand({"spec": {"containers": [{"resources": {"requests": {"cpu": "x"}}}]}}) == (
        PodDemand("", "", 0, 0)
    )


@pytest.mark.parametrize(
    ("total", "weights", "shares"),
    [(10, [1, 1], [5, 5]), (3, [1, 1], [2, 1]), (7, [3, 1, 0], [5, 2, 0]), (5, [0, 0], [0, 0])],
)
def test_split_largest_remainder(total: int, weights: list[int], shares: list[int]) -> None:
    assert split_largest_remainder(total, weights) == shares
    if sum(weights):
        assert sum(shares) == total


@pytest.mark.parametrize(
    ("text", "millis", "n_bytes"),
    [
        ("1", 1000, 1),
        ("1500m", 1500, 2),
        ("0.5", 500, 1),
        ("1e3", 1_000_000, 1000),
        ("64Gi", 64 * 1024**3 * 1000, 64 * 1024**3),
        ("1k", 1_000_000, 1000),
        ("100n", 1, 1),
    ],
)
def test_quantities(text: str, millis: int, n_bytes: int) -> None:
    assert quantity_millis(text) == millis
    assert quantity_bytes(text) == n_bytes


@pytest.mark.parametrize("bad", ["", "1.2.3", "5 cores", "1Qi", True, None, "9" * 80, [1]])
def test_bad_quantities(bad: object) -> None:
    with pytest.raises(QuantityError):
        quantity_bytes(bad)


def test_quantity_formatting() -> None:
    assert format_millis(16000) == "16"
    assert format_millis(1501) == "1501m"
    assert format_bytes(64 * 1024**3) == "64Gi"
    assert format_bytes(1536 * 1024**2) == "1536Mi"
    assert format_bytes(1000) == "1000"
    assert format_bytes(0) == "0"


@pytest.mark.parametrize(
    ("numa", "path"),
    [
        ("{zones: 3}", "nodePools.p.numa.zones"),
        ("{zones: 2, gpusPerZone: [1, 2]}", "nodePools.p.numa.gpusPerZone"),
        ("{zones: 2, topologyManagerPolicy: strict}", "nodePools.p.numa.topologyManagerPolicy"),
        ("{zones: 2, topologyManagerScope: node}", "nodePools.p.numa.topologyManagerScope"),
        ("{zones: 2, cpuPerZone: lots}", "nodePools.p.numa.cpuPerZone"),
        ("{zones: 2, cpuPerZone: '0'}", "nodePools.p.numa.cpuPerZone"),
        ("{zones: 2, memPerZone: -1Gi}", "nodePools.p.numa.memPerZone"),
        ("{zones: 2, distances: {self: 0}}", "nodePools.p.numa.distances.self"),
        ("{zones: 2, distances: {far: 1}}", "nodePools.p.numa.distances.far"),
        ("{zones: 2, distances: 5}", "nodePools.p.numa.distances"),
    ],
)
def test_bad_numa_names_the_field(numa: str, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_cluster_config(f"nodePools: {{p: {{gpus: [{{type: H100, count: 2}}], numa: {numa}}}}}")
    assert err.value.path == path
    assert str(err.value).startswith(path + ":")
