"""The status-updater against the real local control plane with KWOK nodes.

Each test runs its own status-updater subprocess with its own topology namespace and its own
pool label key, so tests (and other components' nodes) cannot disturb each other. Pods are
scheduled by the real scheduler (KWOK nodes advertise nvidia.com/gpu capacity) and made Running
by KWOK; DRA claims are allocated by the real scheduler from ResourceSlices the test publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from fgo_common.topology import HOLDER_DRA, NodeTopology
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.tcpproxy import TcpProxy, proxied_kubeconfig
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    eventually,
)
from fgo_testkit.status_updater import (
    StatusUpdaterProcess,
    holders_by_pod,
    read_record,
    read_record_cm,
)
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
DEPLOY_DCGM = "nvidia.com/gpu.deploy.dcgm-exporter"
DEPLOY_PLUGIN = "nvidia.com/gpu.deploy.device-plugin"


def config_text(pool_key: str, pools: dict[str, Any]) -> str:
    return yaml.safe_dump({"nodePoolLabelKey": pool_key, "nodePools": pools})


DEFAULT_POOLS = {
    "default": {"gpus": [{"type": "H100", "count": 8}]},
    "small": {"gpus": [{"type": "Tesla K80", "count": 2}]},
}


def gpu_pod(
    name: str,
    node: str,
    *,
    containers: list[tuple[str, int]] | None = None,
    init: list[tuple[str, int]] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    claims: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    def ctr(cname: str, gpus: int) -> dict[str, Any]:
        c: dict[str, Any] = {"name": cname, "image": "registry.k8s.io/pause:3.10"}
        if gpus:
            c["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
        return c

    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [KWOK_TOLERATION],
        "terminationGracePeriodSeconds": 0,
        "containers": [ctr(n, g) for n, g in (containers or [("main", 1)])],
    }
    if init:
        spec["initContainers"] = [ctr(n, g) for n, g in init]
    if claims:
        spec["resourceClaims"] = claims
        spec["containers"][0].setdefault("resources", {})["claims"] = [
            {"name": c["name"]} for c in claims
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": annotations or {},
            "labels": labels or {},
        },
        "spec": spec,
    }


class Env:
    """One test's world: namespace, pool label key, the status-updater process, helpers."""

    def __init__(
        self,
        api: client.ApiClient,
        cluster: LocalCluster,
        namespace: str,
        nodes: KwokNodeFactory,
        tmp: Path,
    ) -> None:
        self.api = api
        self.core: Any = client.CoreV1Api(api)
        self.cluster = cluster
        self.ns = namespace
        self.nodes = nodes
        self.tmp = tmp
        self.pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
        self.reservation_ns = f"{namespace[:50]}-res"
        self.proc: StatusUpdaterProcess | None = None

    async def write_config(
        self, pools: dict[str, Any] | None = None, text: str | None = None
    ) -> None:
        body = {
            "metadata": {"name": "topology", "namespace": self.ns},
            "data": {"topology.yml": text or config_text(self.pool_key, pools or DEFAULT_POOLS)},
        }
        try:
            await self.core.create_namespaced_config_map(self.ns, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await self.core.replace_namespaced_config_map("topology", self.ns, body)

    async def start(self, **env: str) -> StatusUpdaterProcess:
        if self.proc is None:
            self.proc = StatusUpdaterProcess(
                self.cluster.kubeconfig,
                self.tmp / "status-updater.log",
                TOPOLOGY_CM_NAMESPACE=self.ns,
                RESOURCE_RESERVATION_NAMESPACE=self.reservation_ns,
                PROMETHEUS_URL="",
                DEBOUNCE_SECONDS="0.1",
                DEFAULT_GPU_UTILIZATION="50-90",
                **env,
            )
        await self.proc.start()
        return self.proc

    async def add_nodes(self, count: int = 1, pool: str = "default", gpus: int = 8) -> list[str]:
        return await self.nodes(
            count,
            labels={self.pool_key: pool},
            extra_capacity={"nvidia.com/gpu": str(gpus), "example.com/fpga": "4"},
        )

    async def record(self, node: str) -> NodeTopology | None:
        return await read_record(self.api, self.ns, node)

    async def wait_record(
        self,
        node: str,
        check: Callable[[NodeTopology], bool],
        what: str,
        timeout_s: float = 60,
    ) -> NodeTopology:
        async def probe() -> NodeTopology | None:
            rec = await self.record(node)
            return rec if rec is not None and check(rec) else None

        try:
            return await eventually(probe, timeout_s=timeout_s, what=what)
        except AssertionError:
            rec = await self.record(node)
            log = self.proc.log_tail() if self.proc else ""
            raise AssertionError(
                f"{what}: last record {rec.to_yaml() if rec else None}\nlog:\n{log}"
            ) from None

    async def create_pod(self, body: dict[str, Any], namespace: str | None = None) -> str:
        await self.core.create_namespaced_pod(namespace or self.ns, body)
        return str(body["metadata"]["name"])

    async def wait_running(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or self.ns

        async def running() -> dict[str, Any] | None:
            pod = await self.core.read_namespaced_pod(name, ns)
            return pod.to_dict() if pod.status.phase == "Running" else None

        return await eventually(running, timeout_s=60, what=f"pod {ns}/{name} Running")

    async def events(self, namespace: str, name: str, reason: str) -> list[Any]:
        out = await self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},reason={reason}"
        )
        return list(out.items)

    async def wait_event(self, namespace: str, name: str, reason: str) -> list[Any]:
        async def probe() -> list[Any] | None:
            found = await self.events(namespace, name, reason)
            return found or None

        return await eventually(probe, timeout_s=30, what=f"Event {reason} on {name}")

    async def node_labels(self, node: str) -> dict[str, str]:
        return dict((await self.core.read_node(node)).metadata.labels or {})


@pytest_asyncio.fixture
async def env(
    kube: client.ApiClient,
    local_cluster: LocalCluster,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> AsyncIterator[Env]:
    world = Env(kube, local_cluster, namespace, kwok_nodes, tmp_path)
    await create_namespace(kube, world.reservation_ns)
    yield world
    if world.proc is not None:
        code = await world.proc.stop()
        assert code in (0, -signal.SIGKILL, None), world.proc.log_tail()
    await delete_namespace(kube, world.reservation_ns)


def all_running(record: NodeTopology) -> bool:
    """Every usage entry is of a running pod (its start time recorded)."""
    return all(u.since > 0 for g in record.gpus for u in g.status.usage.values())


def usage_of(record: NodeTopology, pod_uid: str) -> list[tuple[int, int, int]]:
    return [
        (g.index, g.status.usage[pod_uid].utilization.min, g.status.usage[pod_uid].utilization.max)
        for g in record.gpus
        if pod_uid in g.status.usage
    ]


async def _until(probe: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60) -> None:
    async def wrapped() -> bool | None:
        return True if await probe() else None

    await eventually(wrapped, timeout_s=timeout_s, what=what)


# ------------------------------------------------------------------------------------------------


async def test_records_labels_and_allocation_lifecycle(env: Env) -> None:
    await env.write_config()
    await env.start()
    (node,) = await env.add_nodes(1)
    rec = await env.wait_record(node, lambda r: len(r.gpus) == 8, "record with 8 GPUs")
    assert rec.pool == "default" and rec.kwok
    assert len({g.id for g in rec.gpus}) == 8
    # The record belongs to the node (garbage-collected with it) and carries the reference's
    # labels and the copied KWOK annotation.
    cm = await read_record_cm(env.api, env.ns, node)
    assert cm is not None
    assert cm["metadata"]["labels"]["node-topology"] == "true"
    assert cm["metadata"]["labels"]["node-name"] == node
    assert cm["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert [(o["kind"], o["name"]) for o in cm["metadata"]["ownerReferences"]] == [("Node", node)]
    labels = await env.node_labels(node)
    assert labels.get(DEPLOY_DCGM) == "true"
    assert DEPLOY_PLUGIN not in labels  # no kubelet on a KWOK node

    # Init container needs 3, app container 1: the pod holds max(1, 3) = 3.
    await env.create_pod(gpu_pod("init-gpus", node, containers=[("app", 1)], init=[("warm", 3)]))
    # Two app containers: 1 + 2 = 3.
    await env.create_pod(gpu_pod("multi", node, containers=[("a", 1), ("b", 2)]))
    annotated = gpu_pod("busy", node, annotations={"run.ai/simulated-gpu-utilization": "20-30"})
    await env.create_pod(annotated)
    for name in ("init-gpus", "multi", "busy"):
        await env.wait_running(name)
    key = f"{env.ns}/"
    rec = await env.wait_record(
        node,
        lambda r: (
            all_running(r)
            and {k: len(v) for k, v in holders_by_pod(r).items()}
            == {key + "init-gpus": 3, key + "multi": 3, key + "busy": 1}
        ),
        "three pods holding 3 + 3 + 1 GPUs",
    )
    held = [i for v in holders_by_pod(rec).values() for i in v]
    assert len(held) == len(set(held)) == 7
    multi_containers = sorted(
        h.container for g in rec.gpus for h in g.status.holders if h.pod == "multi"
    )
    assert multi_containers == ["a", "b", "b"]
    busy = await env.core.read_namespaced_pod("busy", env.ns)
    assert [(lo, hi) for _, lo, hi in usage_of(rec, busy.metadata.uid)] == [(20, 30)]
    since = rec.gpus[holders_by_pod(rec)[key + "busy"][0]].status.usage[busy.metadata.uid].since
    assert since == busy.status.start_time.timestamp()

    # Completion (Succeeded) releases; deletion releases.
    await env.core.patch_namespaced_pod_status("multi", env.ns, {"status": {"phase": "Succeeded"}})
    await env.core.delete_namespaced_pod("busy", env.ns)
    rec = await env.wait_record(
        node,
        lambda r: set(holders_by_pod(r)) == {key + "init-gpus"},
        "only init-gpus still holding",
    )
    assert all(not g.status.usage for g in rec.gpus if not g.status.holders)

    # Writes stay batched: each pod event costs at most a couple of record writes.
    metrics = await env.proc.metrics()  # type: ignore[union-attr]
    writes = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('fgo_status_updater_api_writes_total{kind="ConfigMap"')
    )
    assert writes <= 2 * 8, metrics  # 1 create + <= 7 pod-driven changes in practice


async def test_bad_inputs_are_reported_not_fatal(env: Env) -> None:
    await env.write_config()
    await env.start()
    (node,) = await env.add_nodes(1)
    (unknown,) = await env.add_nodes(1, pool="no-such-pool")
    (plain,) = await env.nodes(1, extra_capacity={"nvidia.com/gpu": "8"})  # not a pool node
    await env.wait_record(node, lambda r: len(r.gpus) == 8, "record")

    bad_values = {"p-abc": "abc", "p-desc": "90-10", "p-neg": "-5", "p-big": "101"}
    for name, value in bad_values.items():
        await env.create_pod(
            gpu_pod(name, node, annotations={"run.ai/simulated-gpu-utilization": value})
        )
    await env.create_pod(gpu_pod("on-plain-node", plain))
    for name in [*bad_values, "on-plain-node"]:
        await env.wait_running(name)
    rec = await env.wait_record(
        node,
        lambda r: len(holders_by_pod(r)) == 4 and all_running(r),
        "the four badly annotated pods recorded as running",
    )
    for name, value in bad_values.items():
        events = await env.wait_event(env.ns, name, "InvalidUtilizationAnnotation")
        assert len(events) == 1 and events[0].type == "Warning"
        assert repr(value) in events[0].message
        pod = await env.core.read_namespaced_pod(name, env.ns)
        assert [(lo, hi) for _, lo, hi in usage_of(rec, pod.metadata.uid)] == [(50, 90)]

    # Unknown pool: a Warning on the node, no record. Pod on a non-GPU node: nothing at all.
    events = await env.wait_event("default", unknown, "UnknownNodePool")
    assert "no-such-pool" in events[0].message
    assert await env.record(unknown) is None
    assert await env.record(plain) is None
    assert DEPLOY_DCGM not in await env.node_labels(plain)

    # Still exactly one event per bad pod after more reconciles (a pod change forces some).
    await env.core.patch_namespaced_pod("p-abc", env.ns, {"metadata": {"labels": {"x": "y"}}})
    await asyncio.sleep(2)
    for name in bad_values:
        assert len(await env.events(env.ns, name, "InvalidUtilizationAnnotation")) == 1
    assert env.proc is not None and env.proc.proc is not None
    assert env.proc.proc.returncode is None


def _class_name(env: Env, driver: str) -> str:
    return f"su-{driver.split('.', maxsplit=1)[0]}-{env.pool_key.rsplit('-', 1)[-1]}"


async def _publish_slices(env: Env, node: str, driver: str, devices: int) -> None:
    """A ResourceSlice as a DRA driver would publish it, and a DeviceClass selecting it."""
    resource: Any = client.ResourceV1Api(env.api)
    class_name = _class_name(env, driver)
    try:
        await resource.create_device_class(
            {
                "metadata": {"name": class_name},
                "spec": {"selectors": [{"cel": {"expression": f"device.driver == '{driver}'"}}]},
            }
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    await resource.create_resource_slice(
        {
            "metadata": {"name": f"{node}-{driver.replace('.', '-')}"},
            "spec": {
                "driver": driver,
                "nodeName": node,
                "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                "devices": [{"name": f"gpu-{i}"} for i in range(devices)],
            },
        }
    )


async def _cleanup_dra(env: Env, drivers: list[str]) -> None:
    resource: Any = client.ResourceV1Api(env.api)
    for driver in drivers:
        try:
            await resource.delete_device_class(_class_name(env, driver))
        except ApiException as exc:
            if exc.status != 404:
                raise
    for node in env.nodes.created:
        for driver in drivers:
            try:
                await resource.delete_resource_slice(f"{node}-{driver.replace('.', '-')}")
            except ApiException as exc:
                if exc.status != 404:
                    raise


async def test_dra_shared_claim_and_foreign_driver(env: Env) -> None:
    await env.write_config()
    await env.start()
    (node,) = await env.add_nodes(1)
    await env.wait_record(node, lambda r: len(r.gpus) == 8, "record")
    resource: Any = client.ResourceV1Api(env.api)
    drivers = ["gpu.nvidia.com", "fpga.example.com"]
    try:
        await _publish_slices(env, node, "gpu.nvidia.com", 8)
        await _publish_slices(env, node, "fpga.example.com", 2)

        def claim(name: str, driver: str) -> dict[str, Any]:
            return {
                "metadata": {"name": name},
                "spec": {
                    "devices": {
                        "requests": [
                            {
                                "name": "dev",
                                "exactly": {"deviceClassName": _class_name(env, driver)},
                            }
                        ]
                    }
                },
            }

        await resource.create_namespaced_resource_claim(env.ns, claim("shared", drivers[0]))
        await resource.create_namespaced_resource_claim(env.ns, claim("fpga", drivers[1]))
        ref = [{"name": "gpu", "resourceClaimName": "shared"}]
        await env.create_pod(gpu_pod("dra-a", node, containers=[("main", 0)], claims=ref))
        await env.create_pod(gpu_pod("dra-b", node, containers=[("main", 0)], claims=ref))
        fpga_ref = [{"name": "f", "resourceClaimName": "fpga"}]
        await env.create_pod(gpu_pod("fpga-user", node, containers=[("main", 0)], claims=fpga_ref))
        for name in ("dra-a", "dra-b", "fpga-user"):
            await env.wait_running(name)

        def two_holders(r: NodeTopology) -> bool:
            held = [g for g in r.gpus if g.status.holders]
            return len(held) == 1 and len(held[0].status.holders) == 2

        rec = await env.wait_record(node, two_holders, "shared GPU with two DRA holders")
        (gpu,) = [g for g in rec.gpus if g.status.holders]
        assert {h.pod for h in gpu.status.holders} == {"dra-a", "dra-b"}
        assert all(h.kind == HOLDER_DRA for h in gpu.status.holders)
        assert all(h.claim == f"{env.ns}/shared" for h in gpu.status.holders)
        stored = await resource.read_namespaced_resource_claim("shared", env.ns)
        assert stored.status.allocation.devices.results[0].device == f"gpu-{gpu.minor}"
        # The FPGA claim (another driver's device named gpu-*) is not a GPU of ours.
        assert "fpga-user" not in {h.pod for g in rec.gpus for h in g.status.holders}

        # One user goes: the GPU stays held by the other (the reference freed it here).
        await env.core.delete_namespaced_pod("dra-a", env.ns)
        rec = await env.wait_record(
            node,
            lambda r: [h.pod for g in r.gpus for h in g.status.holders] == ["dra-b"],
            "GPU still held by dra-b",
        )
        assert list(rec.gpus[gpu.index].status.usage) != []
        await env.core.delete_namespaced_pod("dra-b", env.ns)
        await env.wait_record(node, lambda r: all(g.status.is_free for g in r.gpus), "GPU released")
    finally:
        for name in ("dra-a", "dra-b", "fpga-user"):
            with contextlib.suppress(ApiException):
                await env.core.delete_namespaced_pod(name, env.ns)
        await _cleanup_dra(env, drivers)


async def test_pool_relabel_live_config_and_node_removal(env: Env) -> None:
    await env.write_config()
    await env.start()
    (node,) = await env.add_nodes(1)
    await env.wait_record(node, lambda r: len(r.gpus) == 8, "8-GPU record")
    await env.create_pod(gpu_pod("keeper", node, containers=[("main", 2)]))
    await env.wait_running("keeper")
    rec = await env.wait_record(node, lambda r: len(holders_by_pod(r)) == 1, "keeper recorded")
    held = holders_by_pod(rec)[f"{env.ns}/keeper"]

    # Relabel to the 2-GPU pool: the product changes, the allocation survives.
    await env.core.patch_node(node, {"metadata": {"labels": {env.pool_key: "small"}}})
    rec = await env.wait_record(node, lambda r: r.pool == "small", "relabelled to small")
    assert rec.gpu_product == "Tesla K80" and len(rec.gpus) == 2
    assert holders_by_pod(rec)[f"{env.ns}/keeper"] == held

    # Live config edit: the pool grows to 4 GPUs.
    pools = {**DEFAULT_POOLS, "small": {"gpus": [{"type": "Tesla K80", "count": 4}]}}
    await env.write_config(pools)
    rec = await env.wait_record(node, lambda r: len(r.gpus) == 4, "pool edit applied live")
    generation = rec.generation

    # An invalid edit is rejected with an Event naming the field; the last good one stays.
    bad = config_text(env.pool_key, {"small": {"gpus": [{"type": "Tesla K80", "count": 0}]}})
    await env.write_config(text=bad)
    events = await env.wait_event(env.ns, "topology", "InvalidTopologyConfig")
    assert "nodePools.small.gpus[0].count" in events[0].message
    (second,) = await env.add_nodes(1, pool="small")
    rec2 = await env.wait_record(second, lambda r: len(r.gpus) == 4, "new node, last good config")
    assert rec2.pool == "small"
    assert (await env.record(node)).generation == generation  # type: ignore[union-attr]

    # Shrink below what is held: kept until released, reported on the node.
    pools = {**DEFAULT_POOLS, "small": {"gpus": [{"type": "Tesla K80", "count": 1}]}}
    await env.write_config(pools)
    assert held == [0, 1]
    rec = await env.wait_record(
        node, lambda r: [g.healthy for g in r.gpus] == [True, False], "retiring GPU 1 kept"
    )
    assert holders_by_pod(rec)[f"{env.ns}/keeper"] == held
    await env.wait_event("default", node, "PoolShrinkBelowAllocation")
    await env.core.delete_namespaced_pod("keeper", env.ns)
    await env.wait_record(node, lambda r: len(r.gpus) == 1, "shrunk after release")

    # Label removal: record gone, deploy labels removed.
    await env.core.patch_node(node, {"metadata": {"labels": {env.pool_key: None}}})

    async def unlabelled() -> bool:
        return await env.record(node) is None and DEPLOY_DCGM not in await env.node_labels(node)

    await _until(unlabelled, "record and deploy labels removed")
    # Node deletion: record gone.
    await env.core.delete_node(second)
    await _until(lambda: _is_none(env.record(second)), "record of deleted node removed")


async def _is_none(aw: Awaitable[Any]) -> bool:
    return (await aw) is None


async def test_fractional_pods_share_the_reserved_gpu(env: Env) -> None:
    await env.write_config()
    await env.start()
    (node,) = await env.add_nodes(1)
    await env.wait_record(node, lambda r: len(r.gpus) == 8, "record")
    group = {"runai-gpu-group": "grp-1"}
    await env.create_pod(
        gpu_pod("runai-reservation-gpu-x", node, labels=group), namespace=env.reservation_ns
    )
    for name, fraction in (("frac-a", "0.5"), ("frac-b", "0.25")):
        body = gpu_pod(name, node, containers=[("main", 0)], labels=group)
        body["metadata"]["annotations"] = {"gpu-fraction": fraction}
        await env.create_pod(body)

    async def annotated() -> str | None:
        pod = await env.core.read_namespaced_pod("runai-reservation-gpu-x", env.reservation_ns)
        return (pod.metadata.annotations or {}).get("run.ai/reserve_for_gpu_index")

    uuid = await eventually(annotated, timeout_s=60, what="reservation pod annotated")
    rec = await env.wait_record(
        node,
        lambda r: any(len(g.status.usage) == 2 for g in r.gpus),
        "two fractional pods on the reserved GPU",
    )
    (gpu,) = [g for g in rec.gpus if g.status.holders]
    assert gpu.id == uuid
    assert [h.kind for h in gpu.status.holders] == ["reservation"]
    assert sorted(u.fb_used_mib for u in gpu.status.usage.values()) == [
        gpu.memory_mib // 4,
        gpu.memory_mib // 2,
    ]


async def test_restart_mid_burst_converges_to_the_same_state(env: Env) -> None:
    await env.write_config()
    proc = await env.start()
    nodes = await env.add_nodes(4)
    for node in nodes:
        await env.wait_record(node, lambda r: len(r.gpus) == 8, "record")
    # First wave, recorded before the crash.
    # Per node: wave 1 asks 2 or 4 GPUs, wave 2 another 4 (8 GPUs each).
    wave1 = [(f"w1-{i}", nodes[i % 4], 1 + i % 2) for i in range(8)]
    for name, node, gpus in wave1:
        await env.create_pod(
            gpu_pod(
                name,
                node,
                containers=[("main", gpus)],
                annotations={"run.ai/simulated-gpu-utilization": f"{i_of(name)}"},
            )
        )
    for name, _, _ in wave1:
        await env.wait_running(name)
    for node in nodes:
        expected = {f"{env.ns}/{n}" for n, nd, _ in wave1 if nd == node}
        await env.wait_record(node, lambda r, e=expected: set(holders_by_pod(r)) == e, "wave 1")
    before = {node: holders_by_pod(await env.record(node)) for node in nodes}  # type: ignore[arg-type]

    # Second wave in a burst, with a SIGKILL in the middle of it.
    wave2 = [(f"w2-{i}", nodes[i % 4], 1 + (i // 4) % 2) for i in range(12)]
    creations = [
        env.create_pod(
            gpu_pod(
                n,
                nd,
                containers=[("main", g)],
                annotations={"run.ai/simulated-gpu-utilization": f"{i_of(n)}-{i_of(n) + 5}"},
            )
        )
        for n, nd, g in wave2
    ]
    await asyncio.gather(*creations[:6])
    await asyncio.sleep(0.3)
    proc.kill(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL
    await env.core.delete_namespaced_pod("w1-0", env.ns)  # a release while it is down
    await asyncio.gather(*creations[6:])
    await env.start()

    wanted = {n: g for n, _, g in wave1[1:] + wave2}
    for name in wanted:
        await env.wait_running(name)
    for node in nodes:
        expected = {f"{env.ns}/{n}": g for n, nd, g in wave1[1:] + wave2 if nd == node}
        rec = await env.wait_record(
            node,
            lambda r, e=expected: (
                all_running(r) and {k: len(v) for k, v in holders_by_pod(r).items()} == e
            ),
            f"every pod on {node} holds exactly what it requests",
        )
        held = [i for v in holders_by_pod(rec).values() for i in v]
        assert len(held) == len(set(held)), "a GPU is held twice"
        # Assignments recorded before the crash are untouched.
        for pod, gpus in before[node].items():
            if pod != f"{env.ns}/w1-0":
                assert holders_by_pod(rec)[pod] == gpus
        # Usage: ranges from the annotations, since = the pod's start time.
        for gpu in rec.gpus:
            for holder in gpu.status.holders:
                usage = gpu.status.usage[holder.pod_uid]
                pod = await env.core.read_namespaced_pod(holder.pod, env.ns)
                low = i_of(holder.pod)
                high = low if holder.pod.startswith("w1-") else low + 5
                assert (usage.utilization.min, usage.utilization.max) == (low, high)
                assert usage.since == pod.status.start_time.timestamp()

    # A never-restarted controller would now hold the same records: a further clean restart
    # finds nothing to change (no record is rewritten).
    versions = {
        n: (await read_record_cm(env.api, env.ns, n))["metadata"]["resourceVersion"]  # type: ignore[index]
        for n in nodes
    }
    await proc.stop()
    await env.start()
    await asyncio.sleep(3)
    for node in nodes:
        cm = await read_record_cm(env.api, env.ns, node)
        assert cm is not None and cm["metadata"]["resourceVersion"] == versions[node]


def i_of(pod_name: str) -> int:
    """A per-pod utilisation derived from its name (w1-3 -> 13, w2-4 -> 24)."""
    wave, _, index = pod_name.partition("-")
    return int(wave[1]) * 10 + int(index)


PODGROUP_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podgroups.scheduling.run.ai"},
    "spec": {
        "group": "scheduling.run.ai",
        "scope": "Namespaced",
        "names": {"plural": "podgroups", "singular": "podgroup", "kind": "PodGroup"},
        "versions": [
            {
                "name": "v2alpha2",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


async def test_workload_class_from_podgroups_appearing_later(env: Env) -> None:
    """Without the PodGroup CRD the controller runs (default utilisation); once the CRD and a
    PodGroup appear, the pod's utilisation follows its priority class, live."""
    ext: Any = client.ApiextensionsV1Api(env.api)
    custom: Any = client.CustomObjectsApi(env.api)
    try:
        await ext.delete_custom_resource_definition(PODGROUP_CRD["metadata"]["name"])
    except ApiException as exc:
        if exc.status != 404:
            raise
    await env.write_config()
    await env.start(OPTIONAL_API_RETRY_SECONDS="1")
    (node,) = await env.add_nodes(1)
    await env.create_pod(gpu_pod("grouped", node, annotations={"pod-group-name": "pg-1"}))
    pod = (await env.wait_running("grouped"))["metadata"]
    await env.wait_record(
        node,
        lambda r: [(lo, hi) for _, lo, hi in usage_of(r, pod["uid"])] == [(50, 90)],
        "no PodGroup API: the default utilisation",
    )
    try:
        await ext.create_custom_resource_definition(PODGROUP_CRD)

        async def crd_served() -> bool:
            try:
                await custom.list_namespaced_custom_object(
                    "scheduling.run.ai", "v2alpha2", env.ns, "podgroups"
                )
            except ApiException:
                return False
            return True

        await _until(crd_served, "PodGroup CRD served")
        group = {
            "apiVersion": "scheduling.run.ai/v2alpha2",
            "kind": "PodGroup",
            "metadata": {"name": "pg-1"},
            "spec": {"priorityClassName": "train"},
        }
        await custom.create_namespaced_custom_object(
            "scheduling.run.ai", "v2alpha2", env.ns, "podgroups", group
        )
        await env.wait_record(
            node,
            lambda r: [(lo, hi) for _, lo, hi in usage_of(r, pod["uid"])] == [(80, 100)],
            "train workload at 80-100",
        )
        await custom.patch_namespaced_custom_object(
            "scheduling.run.ai",
            "v2alpha2",
            env.ns,
            "podgroups",
            "pg-1",
            {"spec": {"priorityClassName": "build"}},
            _content_type="application/merge-patch+json",
        )
        await env.wait_record(
            node,
            lambda r: [(lo, hi) for _, lo, hi in usage_of(r, pod["uid"])] == [(0, 0)],
            "build workload at 0",
        )
    finally:
        await ext.delete_custom_resource_definition(PODGROUP_CRD["metadata"]["name"])
    # Issue 19: absent, then present, each said once at info level; never a warning (the
    # Reflector used to retry the 404 in place with a `watch.retry` warning every 15-30 s).
    assert env.proc is not None
    lines = env.proc.log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    said = [
        e["event"]
        for e in entries
        if e.get("watch") == "podgroups" and e["event"].startswith("watch.")
    ]
    assert said[:2] == ["watch.api_absent", "watch.api_present"], said
    loud = [e for e in entries if e.get("level") in ("warning", "error")]
    assert not loud, loud


# ------------------------------------------------------------------------------------------------
# two replicas with leader election: each a real process reaching the apiserver through its own
# TCP proxy. The standby writes nothing; kill -9 of the leader -> the standby takes over and
# records the pods created meanwhile; a partitioned leader is replaced and, healed, writes
# nothing; no pod's GPUs change across either failover.
# ------------------------------------------------------------------------------------------------

HA_LEASE_S, HA_RENEW_S, HA_RETRY_S = 3.0, 2.0, 0.3


def _sample_sum(text: str, metric: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((metric + "{", metric + " "))
    )


async def _writes(proc: StatusUpdaterProcess) -> float:
    return _sample_sum(await proc.metrics(), "fgo_status_updater_api_writes_total")


async def _leads(proc: StatusUpdaterProcess) -> bool:
    return _sample_sum(await proc.metrics(), "fgo_leader") == 1.0


async def test_two_replicas_fail_over_without_moving_a_gpu(env: Env) -> None:
    await env.write_config()
    (node,) = await env.add_nodes(1)
    proxies: dict[str, TcpProxy] = {}
    procs: dict[str, StatusUpdaterProcess] = {}
    for name in ("a", "b"):
        proxy = TcpProxy("127.0.0.1", env.cluster.ports.apiserver)
        await proxy.start()
        proxies[name] = proxy
        procs[name] = StatusUpdaterProcess(
            proxied_kubeconfig(env.cluster.kubeconfig, env.tmp / f"{name}.yaml", proxy.port),
            env.tmp / f"status-updater-{name}.log",
            TOPOLOGY_CM_NAMESPACE=env.ns,
            RESOURCE_RESERVATION_NAMESPACE=env.reservation_ns,
            PROMETHEUS_URL="",
            DEBOUNCE_SECONDS="0.1",
            LEADER_ELECTION="true",
            LEASE_NAMESPACE=env.ns,
            LEASE_IDENTITY=f"replica-{name}",
            LEASE_DURATION_SECONDS=str(HA_LEASE_S),
            RENEW_DEADLINE_SECONDS=str(HA_RENEW_S),
            RETRY_PERIOD_SECONDS=str(HA_RETRY_S),
        )
    a, b = procs["a"], procs["b"]
    try:
        await a.start()
        await env.wait_record(node, lambda r: len(r.gpus) == 8, "record from the leader")
        await b.start()  # Ready as a standby
        assert await _leads(a) and not await _leads(b)

        async def recorded(*pods: str) -> dict[str, list[int]]:
            def check(r: NodeTopology) -> bool:
                return all(f"{env.ns}/{p}" in holders_by_pod(r) for p in pods)

            return holders_by_pod(await env.wait_record(node, check, f"{pods} recorded"))

        await env.create_pod(gpu_pod("first", node, containers=[("main", 2)]))
        before = await recorded("first")
        await asyncio.sleep(3 * HA_RETRY_S)
        assert await _writes(b) == 0, "the standby wrote"

        # kill -9 of the leader: the standby takes over once the Lease has expired.
        killed = time.monotonic()
        a.kill()
        await a.wait()
        await env.create_pod(gpu_pod("second", node))
        after_kill = await recorded("first", "second")
        print(
            f"status-updater: kill -9 -> pod recorded by the new leader {time.monotonic() - killed:.2f} s"
        )
        assert await _leads(b)
        key = f"{env.ns}/first"
        assert after_kill[key] == before[key], "the failover moved a pod's GPUs"

        # The old leader comes back as a standby; then the new leader is cut off.
        await a.start()
        assert not await _leads(a)
        b_writes = await _writes(b)
        cut = time.monotonic()
        proxies["b"].partition(HA_LEASE_S * 4)
        await env.create_pod(gpu_pod("third", node))
        after_cut = await recorded("first", "second", "third")
        print(
            f"status-updater: partition -> pod recorded by the new leader {time.monotonic() - cut:.2f} s"
        )
        assert await _leads(a)
        assert not await _leads(b)
        proxies["b"].heal()
        await env.create_pod(gpu_pod("fourth", node))
        final = await recorded("first", "second", "third", "fourth")
        await asyncio.sleep(HA_LEASE_S)
        assert await _writes(b) == b_writes, "the partitioned leader wrote after the cut"
        assert not await _leads(b)
        for pod in ("first", "second"):
            assert (
                final[f"{env.ns}/{pod}"]
                == after_cut[f"{env.ns}/{pod}"]
                == after_kill[f"{env.ns}/{pod}"]
            )
    finally:
        for proc in procs.values():
            await proc.stop()
        for proxy in proxies.values():
            await proxy.stop()
