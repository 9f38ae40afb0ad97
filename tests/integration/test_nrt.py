"""NodeResourceTopology objects from the status-updater, against the real control plane.

A pool with ``numa: {zones: 2}`` and 8 GPUs on KWOK nodes (32 CPUs, 128Gi): the NRT object
appears with the zones, costs and capacities; pods placed by the real scheduler take GPUs, CPUs
and memory from their zone's ``available``, deleting them gives it back; a node of a pool
without ``numa`` gets no object; deleting the node removes its object. Every write is counted.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from fgo_common.nrt import NRT_GROUP, NRT_PLURAL, NRT_VERSION
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodes import api_client
from fgo_localcluster.testing import KwokNodeFactory, eventually
from fgo_testkit.status_updater import StatusUpdaterProcess, holders_by_pod, read_record
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

CRD_FILE = (
    Path(__file__).parents[2] / "charts/fake-gpu-operator/files/noderesourcetopology-crd.yaml"
)
CRD_NAME = "noderesourcetopologies.topology.node.k8s.io"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


async def ensure_crd(api: client.ApiClient) -> None:
    """The chart's CRD, installed once per control plane (cluster-scoped, left in place)."""
    ext = client.ApiextensionsV1Api(api)
    try:
        await ext.create_custom_resource_definition(yaml.safe_load(CRD_FILE.read_text()))
    except ApiException as exc:
        if exc.status != 409:
            raise

    async def established() -> bool | None:
        crd = await ext.read_custom_resource_definition(CRD_NAME)
        conditions = crd.status.conditions or []
        return (
            True
            if any(c.type == "Established" and c.status == "True" for c in conditions)
            else None
        )

    await eventually(established, timeout_s=30, what="NRT CRD established")


def pod(name: str, node: str, gpus: int, cpu: str, memory: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [KWOK_TOLERATION],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {
                        "requests": {"cpu": cpu, "memory": memory},
                        "limits": {"nvidia.com/gpu": str(gpus)},
                    },
                }
            ],
        },
    }


def zones(nrt: dict[str, Any]) -> dict[str, dict[str, tuple[str, str, str]]]:
    return {
        z["name"]: {
            r["name"]: (str(r["capacity"]), str(r["allocatable"]), str(r["available"]))
            for r in z["resources"]
        }
        for z in nrt["zones"]
    }


def available(nrt: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """zone -> (gpu, cpu, memory) available."""
    return {
        name: (res["nvidia.com/gpu"][2], res["cpu"][2], res["memory"][2])
        for name, res in zones(nrt).items()
    }


class World:
    def __init__(self, api: client.ApiClient, cluster: LocalCluster, ns: str, tmp: Path) -> None:
        self.api = api
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.cluster = cluster
        self.ns = ns
        self.tmp = tmp
        self.pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
        self.proc: StatusUpdaterProcess | None = None

    async def nrt(self, node: str) -> dict[str, Any] | None:
        try:
            return dict(
                await self.custom.get_cluster_custom_object(
                    NRT_GROUP, NRT_VERSION, NRT_PLURAL, node
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def wait_nrt(self, node: str, check: Any, what: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            obj = await self.nrt(node)
            return obj if obj is not None and check(obj) else None

        try:
            return await eventually(probe, timeout_s=30, interval_s=0.05, what=what)
        except AssertionError:
            last = await self.nrt(node)
            tail = self.proc.log_tail() if self.proc else ""
            raise AssertionError(f"{what}: last {last}\nlog:\n{tail}") from None

    async def nrt_writes(self) -> dict[str, float]:
        assert self.proc is not None
        text = await self.proc.metrics()
        out: dict[str, float] = {}
        for m in re.finditer(
            r'_api_writes_total\{kind="NodeResourceTopology",verb="(\w+)"\} ([0-9.e+]+)', text
        ):
            out[m.group(1)] = float(m.group(2))
        return out


@pytest_asyncio.fixture
async def world(
    kube: client.ApiClient, local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> AsyncIterator[World]:
    await ensure_crd(kube)
    w = World(kube, local_cluster, namespace, tmp_path)
    yield w
    if w.proc is not None:
        code = await w.proc.stop()
        assert code in (0, -signal.SIGKILL, None), w.proc.log_tail()


async def test_nrt_follows_pods_and_goes_with_the_node(
    world: World, kwok_nodes: KwokNodeFactory
) -> None:
    pools = {
        "numa": {"gpus": [{"type": "H100", "count": 8}], "numa": {"zones": 2}},
        "plain": {"gpus": [{"type": "H100", "count": 2}]},
    }
    await world.core.create_namespaced_config_map(
        world.ns,
        {
            "metadata": {"name": "topology"},
            "data": {
                "topology.yml": yaml.safe_dump(
                    {"nodePoolLabelKey": world.pool_key, "nodePools": pools}
                )
            },
        },
    )
    world.proc = StatusUpdaterProcess(
        world.cluster.kubeconfig,
        world.tmp / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=world.ns,
        RESOURCE_RESERVATION_NAMESPACE=f"{world.ns[:50]}-res",
        PROMETHEUS_URL="",
        DEBOUNCE_SECONDS="0.1",
        NODE_RESOURCE_TOPOLOGY_ENABLED="true",
    )
    await world.proc.start()
    (node,) = await kwok_nodes(
        1, labels={world.pool_key: "numa"}, extra_capacity={"nvidia.com/gpu": "8"}
    )
    (plain,) = await kwok_nodes(
        1, labels={world.pool_key: "plain"}, extra_capacity={"nvidia.com/gpu": "2"}
    )

    nrt = await world.wait_nrt(node, lambda o: len(o.get("zones", [])) == 2, "NRT with 2 zones")
    node_obj = await world.core.read_node(node)
    assert nrt["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_obj.metadata.uid}
    ]
    assert nrt["topologyPolicies"] == ["SingleNUMANodeContainerLevel"]
    assert {a["name"]: a["value"] for a in nrt["attributes"]} == {
        "topologyManagerPolicy": "single-numa-node",
        "topologyManagerScope": "container",
    }
    assert [(z["name"], z["type"]) for z in nrt["zones"]] == [
        ("node-0", "Node"),
        ("node-1", "Node"),
    ]
    assert nrt["zones"][0]["costs"] == [
        {"name": "node-0", "value": 10},
        {"name": "node-1", "value": 21},
    ]
    full = {"nvidia.com/gpu": ("4", "4", "4"), "cpu": ("16", "16", "16"), "memory": ("64Gi",) * 3}
    assert zones(nrt) == {"node-0": full, "node-1": full}
    # The record's NUMA ids are the zones.
    record = await read_record(world.api, world.ns, node)
    assert record is not None
    assert [g.numa_node for g in record.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert await world.nrt(plain) is None  # no numa block: no object
    writes_before = await world.nrt_writes()

    # Two GPUs, 2 CPUs, 4Gi: all on the lowest zone with room (zone 0).
    started = time.monotonic()
    ns = world.ns
    await world.core.create_namespaced_pod(ns, pod("a", node, 2, "2", "4Gi"))
    nrt = await world.wait_nrt(
        node, lambda o: available(o)["node-0"][0] == "2", "zone 0 down to 2 GPUs"
    )
    first_update_s = time.monotonic() - started
    assert available(nrt) == {"node-0": ("2", "14", "60Gi"), "node-1": ("4", "16", "64Gi")}

    # Three GPUs do not fit in zone 0 any more: zone 1.
    await world.core.create_namespaced_pod(ns, pod("b", node, 3, "1500m", "1Gi"))
    nrt = await world.wait_nrt(
        node, lambda o: available(o)["node-1"][0] == "1", "zone 1 down to 1 GPU"
    )
    assert available(nrt) == {"node-0": ("2", "14", "60Gi"), "node-1": ("1", "14500m", "63Gi")}
    record = await read_record(world.api, world.ns, node)
    assert record is not None
    assert holders_by_pod(record) == {f"{ns}/a": [0, 1], f"{ns}/b": [4, 5, 6]}

    # Deleted: zone 0 gets everything back.
    started = time.monotonic()
    await world.core.delete_namespaced_pod("a", ns, grace_period_seconds=0)
    nrt = await world.wait_nrt(node, lambda o: available(o)["node-0"][0] == "4", "zone 0 restored")
    restore_s = time.monotonic() - started
    assert available(nrt)["node-0"] == ("4", "16", "64Gi")
    await asyncio.sleep(1.0)  # let any late write show in the count
    writes = await world.nrt_writes()
    # Three pod events (2 creations, 1 deletion) on the node, each through binding, Running and
    # so on: at most one NRT write per event.
    applies = writes.get("apply", 0) - writes_before.get("apply", 0)
    assert 1 <= applies <= 3, (writes_before, writes)
    print(f"nrt first update {first_update_s:.2f}s, restore {restore_s:.2f}s, applies {applies}")
    assert first_update_s < 5 and restore_s < 5

    # single-numa-node (the pool's default policy) on a KWOK node: 5 GPUs are free (4 + 1) but no
    # zone has 5, so the status-updater, standing in for the kubelet, refuses the pod with an
    # Event, as a real kubelet's Topology Manager would; the zones stay as they are.
    await world.core.create_namespaced_pod(ns, pod("c", node, 5, "1", "1Gi"))

    async def refused() -> list[Any] | None:
        found = await world.core.list_namespaced_event(
            ns, field_selector="involvedObject.name=c,reason=TopologyAffinityError"
        )
        return list(found.items) or None

    (event,) = await eventually(refused, timeout_s=30, what="TopologyAffinityError Event on c")
    assert "free per zone: node-0: 4, node-1: 1" in event.message, event.message
    nrt = await world.nrt(node)
    assert nrt is not None
    assert available(nrt) == {"node-0": ("4", "16", "64Gi"), "node-1": ("1", "14500m", "63Gi")}

    # The node goes: so does its object.
    await world.core.delete_node(node)
    await eventually(
        lambda: _gone(world, node), timeout_s=30, what=f"NRT of deleted node {node} gone"
    )


async def _gone(world: World, node: str) -> bool | None:
    return True if await world.nrt(node) is None else None


async def test_chart_rbac_suffices_for_server_side_apply(
    world: World, kube: client.ApiClient
) -> None:
    """The chart's rule for the status-updater on NRTs (list, watch, create, patch, delete)
    lets it create, change and delete them by server-side apply; proven as that identity (an
    apply that creates needs create as well as patch: without it, 403)."""
    rbac: Any = client.RbacAuthorizationV1Api(kube)
    sa = "nrt-writer"
    name = f"fgo-test-{world.ns}"[:60]
    await world.core.create_namespaced_service_account(world.ns, {"metadata": {"name": sa}})
    rendered_rule = {
        "apiGroups": ["topology.node.k8s.io"],
        "resources": ["noderesourcetopologies"],
        "verbs": ["list", "watch", "create", "patch", "delete"],
    }
    await rbac.create_cluster_role({"metadata": {"name": name}, "rules": [rendered_rule]})
    await rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": world.ns}],
        }
    )
    obj_name = f"no-such-node-{secrets.token_hex(3)}"
    body = {
        "apiVersion": f"{NRT_GROUP}/{NRT_VERSION}",
        "kind": "NodeResourceTopology",
        "metadata": {"name": obj_name},
        "zones": [{"name": "node-0", "type": "Node"}],
    }
    try:
        async with api_client(world.cluster.kubeconfig) as api:
            api.set_default_header("Impersonate-User", f"system:serviceaccount:{world.ns}:{sa}")
            custom: Any = client.CustomObjectsApi(api)

            async def apply() -> bool | None:
                try:
                    await custom.patch_cluster_custom_object(
                        NRT_GROUP, NRT_VERSION, NRT_PLURAL, obj_name, body,
                        field_manager="fgo-test", force=True,
                        _content_type="application/apply-patch+yaml",
                    )  # fmt: skip
                except ApiException as exc:
                    if exc.status == 403:
                        denied.append(str(exc.body))
                        return None  # the binding is not in the authorizer's cache yet
                    raise
                return True

            denied: list[str] = []
            try:
                await eventually(apply, timeout_s=20, what="apply as the status-updater's identity")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last 403: {denied[-1:]}") from None
            assert await world.nrt(obj_name) is not None
            await custom.delete_cluster_custom_object(NRT_GROUP, NRT_VERSION, NRT_PLURAL, obj_name)
    finally:
        await rbac.delete_cluster_role_binding(name)
        await rbac.delete_cluster_role(name)
