"""Both GPU paths on one KWOK node: no GPU handed out twice, none lost (issue 11).

The seed README's KWOK values run the KWOK capacity controller (``nvidia.com/gpu`` in the Node
status) and the kwok-dra-plugin (the same GPUs as DRA devices) side by side. The real scheduler
counts the extended resource against ``allocatable`` and DRA claims against the slices, blind to
the other; the arbitration in the two publishers closes that: GPUs held through DRA leave
``allocatable`` (``DRA_SHARES_GPUS``), GPUs held through the extended resource are tainted in
the slice. Here the real status-updater (subprocess), the capacity controller and the
kwok-dra-plugin (in-process) run against the real scheduler on one 2-GPU KWOK node.

Each step waits for the record (and what the publishers derive from it) to show the previous
allocation before the next pod is created: the arbitration works from the record, so two pods
created in the same instant may still race for the last GPU (docs/chart.md says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fgo_common.kube.client import api_client
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import HOLDER_DEVICE_PLUGIN, HOLDER_DRA, NodeTopology
from fgo_device_plugin.kwok import KwokCapacityController
from fgo_device_plugin.metrics import Metrics
from fgo_kwok_dra_plugin.controller import HELD_TAINT_KEY, KwokSliceController
from fgo_kwok_dra_plugin.settings import Settings as DraSettings
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    eventually,
    unique_name,
)
from fgo_testkit.status_updater import StatusUpdaterProcess, read_record
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    resp = await call(*args, _preload_content=False, **kwargs)
    try:
        body: dict[str, Any] = json.loads(await resp.read())
        return body
    finally:
        resp.release()


def pod_body(name: str, node: str, *, dra: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "registry.k8s.io/pause:3.10"}
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [KWOK_TOLERATION],
        "terminationGracePeriodSeconds": 0,
        "containers": [container],
    }
    if dra:
        container["resources"] = {"claims": [{"name": "gpu"}]}
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]
    else:
        container["resources"] = {"limits": {GPU: "1"}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def held(record: NodeTopology) -> dict[str, list[tuple[int, str]]]:
    """``{pod: [(GPU index, holder kind), ...]}`` of every holder in ``record``."""
    out: dict[str, list[tuple[int, str]]] = {}
    for gpu in record.gpus:
        for holder in gpu.status.holders:
            out.setdefault(holder.pod, []).append((gpu.index, holder.kind))
    return out


def assert_sound(record: NodeTopology, running: dict[str, str]) -> None:
    """No GPU held twice; every running pod holds exactly one GPU, through its own path."""
    for gpu in record.gpus:
        assert len(gpu.status.holders) <= 1, f"GPU {gpu.index} held twice: {gpu.status.holders}"
    holdings = held(record)
    assert set(holdings) == set(running), (holdings, running)
    for pod, kind in running.items():
        assert [k for _, k in holdings[pod]] == [kind], (pod, holdings[pod])


class World:
    def __init__(self, kube: client.ApiClient, namespace: str, node: str) -> None:
        self.kube = kube
        self.ns = namespace
        self.node = node
        self.core: Any = client.CoreV1Api(kube)
        self.resource: Any = client.ResourceV1Api(kube)

    async def create(self, name: str, *, dra: bool) -> None:
        await self.core.create_namespaced_pod(self.ns, pod_body(name, self.node, dra=dra))

    async def delete(self, name: str) -> None:
        await self.core.delete_namespaced_pod(name, self.ns, grace_period_seconds=0)

    async def pod(self, name: str) -> dict[str, Any]:
        return await raw(self.core.read_namespaced_pod, name, self.ns)

    async def wait_running(self, name: str) -> None:
        async def probe() -> bool:
            phase = (await self.pod(name)).get("status", {}).get("phase")
            return bool(phase == "Running")

        await eventually(probe, timeout_s=90, what=f"pod {name} Running")

    async def wait_unschedulable(self, name: str) -> str:
        """The scheduler's verdict (condition PodScheduled=False, reason Unschedulable)."""

        async def probe() -> tuple[str, str] | None:
            pod = await self.pod(name)
            if pod["spec"].get("nodeName"):
                return "scheduled", str(pod["spec"]["nodeName"])
            for cond in pod.get("status", {}).get("conditions") or []:
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return "unschedulable", str(cond.get("message", ""))
            return None

        verdict, detail = await eventually(probe, timeout_s=60, what=f"pod {name} Unschedulable")
        assert verdict == "unschedulable", f"{name} was scheduled on {detail}: no GPU was free"
        return detail

    async def wait_record(self, running: dict[str, str]) -> NodeTopology:
        """The record once it shows exactly the ``running`` pods as holders (then checked)."""

        async def probe() -> NodeTopology | None:
            record = await read_record(self.kube, self.ns, self.node)
            if record is None:
                return None
            holdings = held(record)
            return record if set(holdings) == set(running) else None

        record = await eventually(probe, timeout_s=60, what=f"record holders {sorted(running)}")
        assert_sound(record, running)
        return record

    async def wait_allocatable(self, count: int) -> None:
        async def probe() -> bool:
            node = await raw(self.core.read_node, self.node)
            status = node["status"]
            return bool(
                status.get("capacity", {}).get(GPU) == "2"
                and status.get("allocatable", {}).get(GPU) == str(count)
            )

        await eventually(probe, timeout_s=30, what=f"allocatable {GPU} = {count}")

    async def wait_tainted(self, indexes: set[int]) -> None:
        """The slice taints exactly the devices of GPUs ``indexes`` as held."""

        async def probe() -> bool:
            body = await raw(
                self.resource.list_resource_slice, field_selector=f"spec.nodeName={self.node}"
            )
            devices = [d for s in body["items"] for d in s["spec"]["devices"]]
            tainted = {
                int(d["name"].removeprefix("gpu-"))
                for d in devices
                if any(t["key"] == HELD_TAINT_KEY for t in d.get("taints") or [])
            }
            return len(devices) == 2 and tainted == indexes

        await eventually(probe, timeout_s=30, what=f"held taints on GPUs {sorted(indexes)}")


@contextlib.asynccontextmanager
async def capacity_controller(kube: client.ApiClient, namespace: str) -> AsyncIterator[None]:
    controller = KwokCapacityController(
        kube, namespace, "topology", Metrics(), workers=2, dra_shares_gpus=True
    )
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
        yield
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


@contextlib.asynccontextmanager
async def slice_controller(local_cluster: LocalCluster, namespace: str) -> AsyncIterator[None]:
    settings = load_settings(
        DraSettings,
        {
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "INSTANCE": unique_name("dual", 30),
            "KUBECONFIG": str(local_cluster.kubeconfig),
        },
    )
    ctx = ServiceContext(name="kwok-dra-plugin")
    async with api_client(settings.kubeconfig) as api:
        controller = KwokSliceController(api, settings, ctx.registry)
        task = asyncio.create_task(controller.run(ctx), name="kwok-dra-plugin")
        try:
            await eventually(
                lambda: asyncio.sleep(0, ctx.readiness.ready or task.done()),
                timeout_s=30,
                what="kwok-dra-plugin synced",
            )
            if task.done():
                task.result()
            yield
        finally:
            ctx.stop.set()
            async with asyncio.timeout(10):
                await task


async def test_both_paths_share_a_node_without_double_booking(
    local_cluster: LocalCluster,
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> None:
    pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
    config = {
        "nodePoolLabelKey": pool_key,
        "nodePools": {"dual": {"gpus": [{"type": "Tesla K80", "count": 2}]}},
    }
    core: Any = client.CoreV1Api(kube)
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
    )
    resource: Any = client.ResourceV1Api(kube)
    await resource.create_namespaced_resource_claim_template(
        namespace,
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": "one-gpu"},
            "spec": {
                "spec": {
                    "devices": {
                        "requests": [
                            {"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}
                        ]
                    }
                }
            },
        },
    )
    reservations = f"{namespace[:50]}-res"
    await create_namespace(kube, reservations)
    proc = StatusUpdaterProcess(
        local_cluster.kubeconfig,
        tmp_path / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=namespace,
        RESOURCE_RESERVATION_NAMESPACE=reservations,
        PROMETHEUS_URL="",
        DEBOUNCE_SECONDS="0.1",
    )
    try:
        await proc.start()
        async with (
            capacity_controller(kube, namespace),
            slice_controller(local_cluster, namespace),
        ):
            (node,) = await kwok_nodes(1, labels={pool_key: "dual"})
            world = World(kube, namespace, node)
            await world.wait_allocatable(2)
            await world.wait_tainted(set())

            # One pod on each path: each gets a GPU, and each path hides it from the other.
            await world.create("plugin-a", dra=False)
            await world.wait_running("plugin-a")
            record = await world.wait_record({"plugin-a": HOLDER_DEVICE_PLUGIN})
            (gpu_a,) = [i for i, _ in held(record)["plugin-a"]]
            await world.wait_tainted({gpu_a})
            await world.create("dra-b", dra=True)
            await world.wait_running("dra-b")
            await world.wait_record({"plugin-a": HOLDER_DEVICE_PLUGIN, "dra-b": HOLDER_DRA})
            await world.wait_allocatable(1)

            # A third pod of the extended-resource path finds no GPU left ...
            await world.create("plugin-c", dra=False)
            message = await world.wait_unschedulable("plugin-c")
            assert GPU in message, message
            # ... until the DRA pod gives its GPU back.
            await world.delete("dra-b")
            await world.wait_running("plugin-c")
            record = await world.wait_record(
                {"plugin-a": HOLDER_DEVICE_PLUGIN, "plugin-c": HOLDER_DEVICE_PLUGIN}
            )
            await world.wait_allocatable(2)
            await world.wait_tainted({0, 1})

            # A DRA pod finds both GPUs taken through the extended resource ...
            await world.create("dra-d", dra=True)
            await world.wait_unschedulable("dra-d")
            # ... until one of them is released.
            await world.delete("plugin-a")
            await world.wait_running("dra-d")
            record = await world.wait_record(
                {"plugin-c": HOLDER_DEVICE_PLUGIN, "dra-d": HOLDER_DRA}
            )
            (gpu_c,) = [i for i, _ in held(record)["plugin-c"]]
            await world.wait_tainted({gpu_c})
            await world.wait_allocatable(1)

            # The status-updater never had to report a pod without its GPU.
            events = await core.list_namespaced_event(
                namespace, field_selector="reason=InsufficientGpus"
            )
            assert not events.items, [e.message for e in events.items]
    finally:
        code = await proc.stop()
        await delete_namespace(kube, reservations)
    assert code in (0, None), proc.log_tail()
