"""device-plugin in KWOK mode against the real control plane: node capacity and the scheduler.

The controller runs in-process with its topology namespace set to the test's namespace, so it
only sees this test's records. Records are written exactly as the status-updater stores them
(``fgo_common.topology`` YAML in ConfigMap ``topology-<node>``). Pods are pinned to this test's
nodes by a per-test label, and scheduled by the real kube-scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fgo_common.config import parse_cluster_config
from fgo_common.identity import mig_uuid
from fgo_common.nodebuild import build_node_topology
from fgo_common.runtime.runner import ServiceContext, run_tasks
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import (
    NODE_NAME_LABEL,
    NODE_TOPOLOGY_LABEL,
    TOPOLOGY_DATA_KEY,
    UNHEALTHY,
    MigDevice,
    NodeTopology,
    OtherDevice,
)
from fgo_device_plugin.kwok import MANAGED_RESOURCES_ANNOTATION, KwokCapacityController
from fgo_device_plugin.main import kwok_mode
from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.settings import Settings
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.tcpproxy import TcpProxy, proxied_kubeconfig
from fgo_localcluster.testing import (
    KwokNodeFactory,
    eventually,
    unique_name,
    wait_service_ready,
)
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"
TEST_LABEL = "fgo.test/dp-run"
KWOK_TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}
BASE_KEYS = {"cpu": "32", "memory": "128Gi", "pods": "110"}


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    resp = await call(*args, _preload_content=False, **kwargs)
    try:
        body: dict[str, Any] = json.loads(await resp.read())
        return body
    finally:
        resp.release()


def record(node: str, count: int, *, product: str = "h100") -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": product, "count": count}]}}}
    )
    return build_node_topology(node, config.pools["p"], config, kwok=True)


class Env:
    def __init__(self, kube: client.ApiClient, namespace: str, nodes: KwokNodeFactory) -> None:
        self.kube = kube
        self.namespace = namespace
        self.nodes = nodes
        self.run = unique_name("run", 20)
        self.core: Any = client.CoreV1Api(kube)

    async def gpu_nodes(self, count: int, gpus: int) -> list[str]:
        names = await self.nodes(count, labels={TEST_LABEL: self.run})
        for name in names:
            await self.write(record(name, gpus))
        return names

    async def write(self, topology: NodeTopology) -> None:
        body: dict[str, Any] = {
            "metadata": {
                "name": f"topology-{topology.node_name}",
                "labels": {NODE_NAME_LABEL: topology.node_name, NODE_TOPOLOGY_LABEL: "true"},
            },
            "data": {TOPOLOGY_DATA_KEY: topology.to_yaml()},
        }
        try:
            await self.core.create_namespaced_config_map(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await self.core.replace_namespaced_config_map(
                body["metadata"]["name"], self.namespace, body
            )

    async def delete_record(self, node: str) -> None:
        await self.core.delete_namespaced_config_map(f"topology-{node}", self.namespace)

    async def node(self, name: str) -> dict[str, Any]:
        return await raw(self.core.read_node, name)

    async def wait_status(
        self, name: str, want: dict[str, tuple[str, str] | None], timeout_s: float = 30
    ) -> dict[str, Any]:
        """Wait until each resource shows (capacity, allocatable), or is absent for None."""

        async def probe() -> dict[str, Any] | None:
            node = await self.node(name)
            cap = node["status"].get("capacity", {})
            alloc = node["status"].get("allocatable", {})
            for resource, values in want.items():
                got = None if resource not in cap else (cap[resource], alloc.get(resource))
                if got != values:
                    return None
            return node

        return await eventually(probe, timeout_s=timeout_s, what=f"{name} status {want}")

    def pod(self, name: str, gpus: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": {"type": "kwok", TEST_LABEL: self.run},
                "tolerations": [KWOK_TOLERATION],
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "main",
                        "image": "ubuntu:22.04",
                        "command": ["sleep", "infinity"],
                        "resources": {"limits": {GPU: str(gpus)}},
                    }
                ],
            },
        }

    async def read_pod(self, name: str) -> dict[str, Any]:
        return await raw(self.core.read_namespaced_pod, name, self.namespace)

    async def wait_bound(self, name: str, timeout_s: float = 60) -> str:
        async def probe() -> str | None:
            node_name = (await self.read_pod(name))["spec"].get("nodeName")
            return str(node_name) if node_name else None

        return await eventually(probe, timeout_s=timeout_s, what=f"pod {name} scheduled")

    async def wait_unschedulable(self, name: str, timeout_s: float = 60) -> str:
        async def probe() -> str | None:
            pod = await self.read_pod(name)
            for cond in pod.get("status", {}).get("conditions") or []:
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return str(cond.get("message", ""))
            return None

        return await eventually(probe, timeout_s=timeout_s, what=f"pod {name} Unschedulable")


@pytest_asyncio.fixture
async def env(
    kube: client.ApiClient, namespace: str, kwok_nodes: KwokNodeFactory
) -> AsyncIterator[Env]:
    yield Env(kube, namespace, kwok_nodes)


@contextlib.asynccontextmanager
async def running_controller(env: Env) -> AsyncIterator[KwokCapacityController]:
    controller = KwokCapacityController(env.kube, env.namespace, "topology", Metrics(), workers=4)
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop), name="kwok-capacity")
    try:
        await eventually(
            lambda: asyncio.sleep(0, controller.synced.is_set() or task.done()),
            timeout_s=30,
            what="kwok capacity controller synced",
        )
        if task.done():
            task.result()
        yield controller
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


@pytest_asyncio.fixture
async def controller(env: Env) -> AsyncIterator[KwokCapacityController]:
    async with running_controller(env) as running:
        yield running


async def test_capacity_equals_the_pool_and_the_scheduler_uses_it(
    env: Env, controller: KwokCapacityController
) -> None:
    nodes = await env.gpu_nodes(2, gpus=4)
    for name in nodes:
        node = await env.wait_status(name, {GPU: ("4", "4")})
        # Nothing else in the status was touched.
        for key, value in BASE_KEYS.items():
            assert node["status"]["capacity"][key] == value
            assert node["status"]["allocatable"][key] == value
        annotations = node["metadata"]["annotations"]
        assert annotations[MANAGED_RESOURCES_ANNOTATION] == GPU

    # 8 GPUs in total: four 2-GPU pods fit, the fifth stays Pending.
    for i in range(4):
        await env.core.create_namespaced_pod(env.namespace, env.pod(f"train-{i}", 2))
    placed = [await env.wait_bound(f"train-{i}") for i in range(4)]
    assert sorted(placed) == sorted(nodes * 2)
    await env.core.create_namespaced_pod(env.namespace, env.pod("one-too-many", 2))
    message = await env.wait_unschedulable("one-too-many")
    assert "Insufficient nvidia.com/gpu" in message

    # A pool change (node 1 now has 8 GPUs) updates capacity; the waiting pod gets placed.
    await env.write(record(nodes[0], 8))
    await env.wait_status(nodes[0], {GPU: ("8", "8")})
    assert await env.wait_bound("one-too-many") == nodes[0]
    assert controller.patches >= 3


async def test_health_mig_other_devices_and_removal(
    env: Env, controller: KwokCapacityController
) -> None:
    (name,) = await env.gpu_nodes(1, gpus=4)
    await env.wait_status(name, {GPU: ("4", "4")})

    topology = record(name, 4)
    topology.gpus[1].health = UNHEALTHY
    await env.write(topology)
    await env.wait_status(name, {GPU: ("4", "3")})

    # Mixed MIG: GPU 3 split into two MIG devices, plus an extra resource of the pool.
    topology = record(name, 4)
    topology.mig_strategy = "mixed"
    parent = topology.gpus[3]
    parent.mig_enabled = True
    parent.mig_devices = [
        MigDevice(mig_uuid(parent.id, gi, 0), "3g.40gb", gi, 0, 9, 2, start, 4, 40320, 60)
        for gi, start in ((1, 0), (2, 4))
    ]
    topology.other_devices = [OtherDevice("example.com/nic", 2)]
    await env.write(topology)
    node = await env.wait_status(
        name, {GPU: ("3", "3"), "nvidia.com/mig-3g.40gb": ("2", "2"), "example.com/nic": ("2", "2")}
    )
    assert set(node["metadata"]["annotations"][MANAGED_RESOURCES_ANNOTATION].split(",")) == {
        GPU,
        "nvidia.com/mig-3g.40gb",
        "example.com/nic",
    }

    # Back to no MIG and no extras: the gone resources disappear, cpu/memory/pods stay.
    await env.write(record(name, 4))
    node = await env.wait_status(
        name, {GPU: ("4", "4"), "nvidia.com/mig-3g.40gb": None, "example.com/nic": None}
    )
    assert {k: node["status"]["capacity"][k] for k in BASE_KEYS} == BASE_KEYS

    async def annotation_is(value: str) -> bool:
        node = await env.node(name)
        return bool(node["metadata"]["annotations"].get(MANAGED_RESOURCES_ANNOTATION) == value)

    await eventually(lambda: annotation_is(GPU), timeout_s=10, what="managed list shrunk")

    # The record goes away (node left the pool): so does the GPU capacity.
    await env.delete_record(name)
    await env.wait_status(name, {GPU: None})


async def test_leaves_unmanaged_and_real_nodes_alone(
    env: Env, controller: KwokCapacityController
) -> None:
    # A hand-made KWOK node advertising GPUs without any record: not ours.
    (manual,) = await env.nodes(1, extra_capacity={GPU: "2"}, labels={TEST_LABEL: env.run})
    # A real node (no KWOK annotation) with a record: its kubelet publishes capacity, not us.
    real = unique_name("real-node", 30)
    await env.core.create_node(
        {
            "metadata": {"name": real},
            "status": {"capacity": dict(BASE_KEYS), "allocatable": dict(BASE_KEYS)},
        }
    )
    try:
        real_record = record(real, 8)
        real_record.kwok = False
        await env.write(real_record)
        (tracked,) = await env.gpu_nodes(1, gpus=2)
        await env.wait_status(tracked, {GPU: ("2", "2")})
        await asyncio.sleep(1.0)
        node = await env.node(manual)
        assert node["status"]["capacity"][GPU] == "2"
        assert MANAGED_RESOURCES_ANNOTATION not in node["metadata"].get("annotations", {})
        node = await env.node(real)
        assert GPU not in node["status"].get("capacity", {})
    finally:
        await env.core.delete_node(real)


async def test_restart_converges_and_cleans_what_changed_meanwhile(env: Env) -> None:
    async with running_controller(env):
        (name,) = await env.gpu_nodes(1, gpus=2)
        topology = record(name, 2)
        topology.other_devices = [OtherDevice("example.com/nic", 1)]
        await env.write(topology)
        await env.wait_status(name, {GPU: ("2", "2"), "example.com/nic": ("1", "1")})
    # While the controller is down the pool drops the extra resource and grows.
    await env.write(record(name, 6))
    await asyncio.sleep(0.5)
    assert (await env.node(name))["status"]["capacity"]["example.com/nic"] == "1"
    async with running_controller(env):
        await env.wait_status(name, {GPU: ("6", "6"), "example.com/nic": None})


async def test_kwok_mode_entry_point(local_cluster: LocalCluster, env: Env) -> None:
    """The console script's kwok mode: settings -> runner -> ready, capacity published."""
    settings = load_settings(
        Settings,
        {
            "DEVICE_PLUGIN_MODE": "kwok",
            "TOPOLOGY_CM_NAMESPACE": env.namespace,
            "KUBECONFIG": str(local_cluster.kubeconfig),
        },
    )
    (name,) = await env.gpu_nodes(1, gpus=3)
    ctx = ServiceContext(name="device-plugin")
    task = asyncio.create_task(run_tasks(ctx, {"kwok": kwok_mode(settings)}, health_port=None))
    try:
        await env.wait_status(name, {GPU: ("3", "3")})
        await eventually(lambda: asyncio.sleep(0, ctx.readiness.ready), timeout_s=10, what="ready")
    finally:
        ctx.stop.set()
        async with asyncio.timeout(15):
            assert await task == 0


# --------------------------------------------------------------------------------------------
# two replicas with leader election (kwok mode through the real entry point, each with its own
# client through its own TCP proxy): the standby is Ready and writes nothing; the leader cut
# off, the standby takes over and publishes a change made meanwhile; the old leader, healed,
# writes nothing more.
# --------------------------------------------------------------------------------------------

LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.3


@contextlib.asynccontextmanager
async def capacity_replica(
    local_cluster: LocalCluster, env: Env, tmp_path: Path, name: str
) -> AsyncIterator[tuple[ServiceContext, TcpProxy]]:
    proxy = TcpProxy("127.0.0.1", local_cluster.ports.apiserver)
    await proxy.start()
    kubeconfig = proxied_kubeconfig(local_cluster.kubeconfig, tmp_path / f"{name}.yaml", proxy.port)
    settings = load_settings(
        Settings,
        {
            "DEVICE_PLUGIN_MODE": "kwok",
            "TOPOLOGY_CM_NAMESPACE": env.namespace,
            "KUBECONFIG": str(kubeconfig),
            "LEADER_ELECTION": "true",
            "LEASE_NAMESPACE": env.namespace,
            "LEASE_IDENTITY": f"replica-{name}",
            "LEASE_DURATION_SECONDS": str(LEASE_S),
            "RENEW_DEADLINE_SECONDS": str(RENEW_S),
            "RETRY_PERIOD_SECONDS": str(RETRY_S),
        },
    )
    ctx = ServiceContext(name=f"device-plugin-{name}")
    task = asyncio.create_task(run_tasks(ctx, {"kwok": kwok_mode(settings)}, health_port=None))
    try:
        await wait_service_ready(
            ctx.readiness, task, condition="synced", what=f"replica {name} Ready"
        )
        yield ctx, proxy
    finally:
        ctx.stop.set()
        async with asyncio.timeout(30):
            await task
        await proxy.stop()


def _leading(ctx: ServiceContext) -> bool:
    return ctx.registry.get_sample_value("fgo_leader", {"lease": "fgo-kwok-gpu-capacity"}) == 1.0


def _patches(ctx: ServiceContext) -> float:
    return ctx.registry.get_sample_value("fgo_kwok_patches_total", {"outcome": "ok"}) or 0.0


async def test_two_replicas_one_writer_and_a_fenced_failover(
    local_cluster: LocalCluster, env: Env, tmp_path: Path
) -> None:
    first, second = await env.gpu_nodes(2, gpus=2)
    async with capacity_replica(local_cluster, env, tmp_path, "a") as (a, a_proxy):
        await env.wait_status(first, {GPU: ("2", "2")})
        assert _leading(a)
        async with capacity_replica(local_cluster, env, tmp_path, "b") as (b, _):
            await asyncio.sleep(3 * RETRY_S)
            assert not _leading(b)
            assert _patches(b) == 0
            a_patches = _patches(a)

            cut = time.monotonic()
            a_proxy.partition(LEASE_S * 3)
            await env.write(record(first, 3))
            await env.wait_status(first, {GPU: ("3", "3")}, timeout_s=LEASE_S + 20)
            print(f"kwok capacity: takeover + patch {time.monotonic() - cut:.2f} s after the cut")
            assert _leading(b)
            await eventually(
                lambda: asyncio.sleep(0, not _leading(a)),
                timeout_s=RENEW_S + 5,
                what="a steps down",
            )
            a_proxy.heal()
            await env.write(record(second, 1))
            await env.wait_status(second, {GPU: ("1", "1")})
            await asyncio.sleep(LEASE_S)
            assert not _leading(a)
            assert _patches(a) == a_patches, "the old leader patched a node after it was cut off"
            assert a.readiness.ready
