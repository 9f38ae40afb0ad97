"""Device-plugin time-slicing / MPS on a KWOK node against the real scheduler (issue 25).

The real status-updater (subprocess) selects the node's NVIDIA device-plugin config by the node
label ``nvidia.com/device-plugin.config`` and records the sharing and the replica holders; the
KWOK capacity controller (in-process) advertises ``replicas x GPUs`` from the record; the real
kube-scheduler places pods against that capacity. A live label switch changes the node's config.
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
from fgo_common.topology import NodeTopology
from fgo_device_plugin.kwok import KwokCapacityController
from fgo_device_plugin.metrics import Metrics
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.smi import run_smi
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    eventually,
)
from fgo_testkit.status_updater import StatusUpdaterProcess, read_record
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"
SHARED = "nvidia.com/gpu.shared"
CONFIG_LABEL = "nvidia.com/device-plugin.config"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
CONFIGS = {
    "ts4": {
        "version": "v1",
        "sharing": {"timeSlicing": {"resources": [{"name": GPU, "replicas": 4}]}},
    },
    # As the GPU operator's ConfigMap holds them: the config as YAML text.
    "renamed": yaml.safe_dump(
        {
            "version": "v1",
            "sharing": {
                "timeSlicing": {
                    "renameByDefault": True,
                    "resources": [{"name": GPU, "replicas": 2}],
                }
            },
        }
    ),
    "mps2": {
        "version": "v1",
        "sharing": {"mps": {"resources": [{"name": GPU, "replicas": 2}]}},
    },
    "broken": {
        "version": "v1",
        "sharing": {"timeSlicing": {"resources": [{"name": GPU, "replicas": 0}]}},
    },
}


async def smi(record: NodeTopology, *args: str, tmp_path: Path) -> str:
    """nvidia-smi over the whole node, from the record's snapshot (as `fgo nvidia-smi --node`)."""
    out = tmp_path / "smi.out"
    with out.open("w") as sink:
        code = await run_smi(
            record, {"NVIDIA_VISIBLE_DEVICES": "all"}, list(args), stdout=sink.fileno()
        )
    text = out.read_text()
    assert code == 0, text
    return text


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    resp = await call(*args, _preload_content=False, **kwargs)
    try:
        body: dict[str, Any] = json.loads(await resp.read())
        return body
    finally:
        resp.release()


def pod_body(name: str, node: str, resource: str) -> dict[str, Any]:
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
                    "resources": {"limits": {resource: "1"}},
                }
            ],
        },
    }


@contextlib.asynccontextmanager
async def capacity_controller(kube: client.ApiClient, namespace: str) -> AsyncIterator[None]:
    controller = KwokCapacityController(kube, namespace, "topology", Metrics(), workers=2)
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


class World:
    def __init__(self, kube: client.ApiClient, namespace: str, node: str) -> None:
        self.kube = kube
        self.ns = namespace
        self.node = node
        self.core: Any = client.CoreV1Api(kube)

    async def create(self, name: str, resource: str = GPU) -> None:
        await self.core.create_namespaced_pod(self.ns, pod_body(name, self.node, resource))

    async def delete_all(self, names: list[str]) -> None:
        for name in names:
            await self.core.delete_namespaced_pod(name, self.ns, grace_period_seconds=0)

        async def gone() -> bool:
            pods = await raw(self.core.list_namespaced_pod, self.ns)
            return not pods["items"]

        await eventually(gone, timeout_s=60, what="pods deleted")

    async def label(self, value: str) -> None:
        await self.core.patch_node(self.node, {"metadata": {"labels": {CONFIG_LABEL: value}}})

    async def phases(self) -> dict[str, str]:
        pods = await raw(self.core.list_namespaced_pod, self.ns)
        out = {}
        for pod in pods["items"]:
            phase = pod.get("status", {}).get("phase", "")
            for cond in pod.get("status", {}).get("conditions") or []:
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    phase = "Unschedulable"
            out[pod["metadata"]["name"]] = phase
        return out

    async def wait_phases(self, running: int, unschedulable: int) -> dict[str, str]:
        async def probe() -> dict[str, str] | None:
            phases = await self.phases()
            counts = (
                sum(p == "Running" for p in phases.values()),
                sum(p == "Unschedulable" for p in phases.values()),
            )
            return phases if counts == (running, unschedulable) else None

        return await eventually(
            probe, timeout_s=90, what=f"{running} Running, {unschedulable} Unschedulable"
        )

    async def wait_status(self, want: dict[str, str | None]) -> None:
        """capacity == allocatable == want[name] for each name (None: absent)."""

        async def probe() -> bool:
            status = (await raw(self.core.read_node, self.node))["status"]
            for name, value in want.items():
                for key in ("capacity", "allocatable"):
                    if status.get(key, {}).get(name) != value:
                        return False
            return True

        await eventually(probe, timeout_s=30, what=f"node status {want}")

    async def wait_record(self, sharers: list[int], strategy: str | None) -> NodeTopology:
        async def probe() -> NodeTopology | None:
            record = await read_record(self.kube, self.ns, self.node)
            if record is None:
                return None
            got_strategy = record.sharing.strategy if record.sharing else None
            counts = [len(g.status.holders) for g in record.gpus]
            return record if counts == sharers and got_strategy == strategy else None

        return await eventually(
            probe, timeout_s=60, what=f"record with holders {sharers}, sharing {strategy}"
        )


async def test_time_slicing_replicas_rename_and_live_switch(
    local_cluster: LocalCluster,
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> None:
    pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
    config = {
        "nodePoolLabelKey": pool_key,
        "nodePools": {"shared": {"gpus": [{"type": "Tesla K80", "count": 2}]}},
        "devicePluginConfig": {"configs": CONFIGS},
    }
    core: Any = client.CoreV1Api(kube)
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
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
        async with capacity_controller(kube, namespace):
            (node,) = await kwok_nodes(1, labels={pool_key: "shared", CONFIG_LABEL: "ts4"})
            world = World(kube, namespace, node)
            await world.wait_status({GPU: "8", SHARED: None})

            # replicas 4 x 2 GPUs: 8 one-GPU pods run, the 9th pends.
            names = [f"ts-{i}" for i in range(9)]
            for name in names:
                await world.create(name)
            await world.wait_phases(running=8, unschedulable=1)
            record = await world.wait_record([4, 4], "time-slicing")
            assert record.sharing is not None and record.sharing.config == "ts4"
            holders = [h for g in record.gpus for h in g.status.holders]
            assert {h.sharing for h in holders} == {"TimeSlicing"}
            assert len({h.pod for h in holders}) == 8
            # nvidia-smi (the snapshot the device plugin mounts) shows 4 processes per GPU.
            apps = await smi(
                record, "--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader",
                tmp_path=tmp_path,
            )  # fmt: skip
            per_gpu = [line.split(",")[0].strip() for line in apps.splitlines() if line.strip()]
            assert sorted(per_gpu.count(g.id) for g in record.gpus) == [4, 4], apps
            modes = await smi(
                record, "--query-gpu=compute_mode", "--format=csv,noheader", tmp_path=tmp_path
            )
            assert modes.split() == ["Default", "Default"]

            # Live switch to the renamed config: nvidia.com/gpu goes, .shared comes; the pods
            # holding replicas keep them (the record does not drop running pods).
            await world.label("renamed")
            await world.wait_status({GPU: None, SHARED: "4"})
            record = await world.wait_record([4, 4], "time-slicing")
            assert record.sharing is not None and record.sharing.config == "renamed"
            await world.delete_all(names)
            await world.wait_record([0, 0], "time-slicing")

            shared = [f"sh-{i}" for i in range(5)]
            for name in shared:
                await world.create(name, SHARED)
            await world.wait_phases(running=4, unschedulable=1)
            record = await world.wait_record([2, 2], "time-slicing")
            assert {h.resource for g in record.gpus for h in g.status.holders} == {SHARED}
            await world.delete_all(shared)

            # MPS: the GPU is Exclusive_Process with an MPS server and M+C clients.
            await world.label("mps2")
            await world.wait_status({GPU: "4", SHARED: None})
            mps = ["mps-0", "mps-1"]
            for name in mps:
                await world.create(name)
            await world.wait_phases(running=2, unschedulable=0)
            record = await world.wait_record([1, 1], "mps")
            assert {h.sharing for g in record.gpus for h in g.status.holders} == {"MPS"}
            modes = await smi(
                record, "--query-gpu=compute_mode", "--format=csv,noheader", tmp_path=tmp_path
            )
            assert modes.split() == ["Exclusive_Process", "Exclusive_Process"]
            table = await smi(record, tmp_path=tmp_path)
            assert table.count("M+C") == 2 and table.count("nvidia-cuda-mps-server") == 2, table
            await world.delete_all(mps)

            # A bad config: the node falls back to unshared, and an Event names the field.
            await world.label("broken")
            await world.wait_status({GPU: "2", SHARED: None})
            await world.wait_record([0, 0], None)

            async def event() -> str | None:
                events = await raw(
                    core.list_namespaced_event,
                    "default",
                    field_selector=f"reason=InvalidDevicePluginConfig,involvedObject.name={node}",
                )
                return events["items"][0]["message"] if events["items"] else None

            message = await eventually(event, timeout_s=30, what="InvalidDevicePluginConfig")
            assert "sharing.timeSlicing.resources[0].replicas" in message
            assert "number of replicas must be >= 2" in message
    finally:
        code = await proc.stop()
        await delete_namespace(kube, reservations)
    assert code in (0, None), proc.log_tail()
