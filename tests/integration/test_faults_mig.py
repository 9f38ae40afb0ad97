"""A fault on one MIG device (docs/faults.md), end to end on the real control plane.

The same real components as test_faults.py (whose World, Exporter and kwok_dra helpers are
reused): the status-updater subprocess writes the records, the device plugin's KWOK capacity
controller sets allocatable, the kwok-dra-plugin publishes ResourceSlices, the status-exporter
subprocess serves metrics. The pool is MIG-partitioned (mixed strategy, all-1g.10gb). An XID 79
declared on one MIG device's UUID must make only that device Unhealthy: one
`nvidia.com/mig-1g.10gb` less allocatable, a NoExecute taint on that DRA device only, the
record's GPU still Healthy, and in the metrics the GPU's XID (device-wide, as DCGM reports it)
with DCGM health WARN (not FAIL) on that GPU; clearing restores everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest_asyncio
import yaml
from fgo_device_plugin.kwok import KwokCapacityController
from fgo_device_plugin.metrics import Metrics
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import KwokNodeFactory, eventually
from fgo_testkit.status_updater import StatusUpdaterProcess
from kubernetes_asyncio import client


def _shared() -> ModuleType:
    """test_faults.py's helpers (tests run with --import-mode=importlib, so test modules are
    not importable by name; load it under a private name, once)."""
    name = "_fgo_test_faults_shared"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_faults.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


shared = _shared()
World, Exporter, kwok_dra, metric = shared.World, shared.Exporter, shared.kwok_dra, shared.metric

MIG_RESOURCE = "nvidia.com/mig-1g.10gb"
GPUS = 2
PER_GPU = 7  # all-1g.10gb on an H100
HEALTH = "DCGM_EXP_GPU_HEALTH_STATUS"


async def _allocatable(w: Any, resource: str) -> int:
    node = await w.core.read_node(w.node)
    return int((node.status.allocatable or {}).get(resource, "0"))


async def _until_allocatable(w: Any, resource: str, count: int) -> None:
    async def probe() -> bool:
        return await _allocatable(w, resource) == count

    await eventually(probe, timeout_s=40, what=f"allocatable {resource} == {count}")


def _device_uuid(device: dict[str, Any]) -> str:
    attr = (device.get("attributes") or {}).get("uuid") or {}
    return str(attr.get("string", ""))


@pytest_asyncio.fixture
async def mig_world(
    kube: client.ApiClient,
    local_cluster: LocalCluster,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> AsyncIterator[Any]:
    core: Any = client.CoreV1Api(kube)
    pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
    config = {
        "nodePoolLabelKey": pool_key,
        "migStrategy": "mixed",
        "nodePools": {
            "p": {"gpus": [{"type": "H100", "count": GPUS}], "mig": {"config": "all-1g.10gb"}}
        },
    }
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
    )
    updater = StatusUpdaterProcess(
        local_cluster.kubeconfig,
        tmp_path / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=namespace,
        RESOURCE_RESERVATION_NAMESPACE=f"{namespace[:50]}-res",
        PROMETHEUS_URL="",
        DEBOUNCE_SECONDS="0.1",
    )
    await updater.start()
    capacity = KwokCapacityController(kube, namespace, "topology", Metrics(), workers=2)
    stop = asyncio.Event()
    capacity_task = asyncio.create_task(capacity.run(stop), name="kwok-capacity")
    exporter = Exporter(local_cluster.kubeconfig, namespace, tmp_path / "exporter.log")
    exporter.env["EXPORTER_EXTRA_METRICS"] += f",{HEALTH}"
    try:
        async with kwok_dra(local_cluster, namespace):
            await exporter.start()
            (node,) = await kwok_nodes(1, labels={pool_key: "p"})
            w = World(kube, local_cluster, namespace, node, tmp_path)
            w.exporter = exporter
            await w.until_record(
                lambda r: (
                    len(r.gpus) == GPUS
                    and all(g.mig_enabled and len(g.mig_devices) == PER_GPU for g in r.gpus)
                ),
                "MIG record written",
                60,
            )
            await _until_allocatable(w, MIG_RESOURCE, GPUS * PER_GPU)
            yield w
    finally:
        await exporter.stop()
        stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await capacity_task
        await updater.stop()


async def test_fault_on_a_mig_uuid_affects_only_that_mig_device(mig_world: Any) -> None:
    w = mig_world
    rec = await w.record()
    gpu = rec.gpus[0]
    target = sorted(gpu.mig_devices, key=lambda d: d.gi_id)[2]
    others = [d.uuid for g in rec.gpus for d in g.mig_devices if d.uuid != target.uuid]

    async def slice_devices() -> dict[str, dict[str, Any]] | None:
        by_uuid = {_device_uuid(d): d for d in (await w.devices()).values()}
        return by_uuid if target.uuid in by_uuid else None

    before = await eventually(slice_devices, timeout_s=40, what="MIG devices published")
    assert not (before[target.uuid].get("taints") or [])

    await w.declare("mig-fault", [{"node": w.node, "gpu": target.uuid, "kind": "xid", "code": 79}])

    # Record: that MIG device Unhealthy, its GPU and every other MIG device Healthy.
    rec = await w.until_record(
        lambda r: any(
            d.uuid == target.uuid and d.health == "Unhealthy" for d in r.gpus[0].mig_devices
        ),
        "MIG device Unhealthy",
    )
    assert all(g.health == "Healthy" for g in rec.gpus)
    assert [d.uuid for g in rec.gpus for d in g.mig_devices if d.health != "Healthy"] == [
        target.uuid
    ]

    # Device plugin (KWOK capacity): one MIG resource less.
    await _until_allocatable(w, MIG_RESOURCE, GPUS * PER_GPU - 1)

    # DRA: the taint is on that MIG device only.
    async def tainted() -> dict[str, dict[str, Any]] | None:
        found = await slice_devices()
        return found if found and found[target.uuid].get("taints") else None

    devices = await eventually(tainted, timeout_s=40, what="MIG device tainted")
    taints = [(t["key"], t.get("value"), t["effect"]) for t in devices[target.uuid]["taints"]]
    assert taints == [("gpu.nvidia.com/xid", "79", "NoExecute")]
    assert [u for u in others if u in devices and devices[u].get("taints")] == []

    # Metrics: XID is a GPU-level DCGM field, so every instance of GPU 0 shows it and GPU 1 none;
    # DCGM health warns on the GPU (PCIE) without failing it, as the GPU stays Healthy.
    def shows(text: str) -> bool:
        xid0 = metric(text, "DCGM_FI_DEV_XID_ERRORS", gpu.id)
        return len(xid0) == PER_GPU and all(v == 79 for _, v in xid0)

    text = await w.until_metrics(shows, "XID 79 on GPU 0's instances")
    target_xid = [lbl for lbl, _ in metric(text, "DCGM_FI_DEV_XID_ERRORS", gpu.id)
                  if f'GPU_I_ID="{target.gi_id}"' in lbl]  # fmt: skip
    assert len(target_xid) == 1 and 'err_code="79"' in target_xid[0]
    assert all(v == 0 for _, v in metric(text, "DCGM_FI_DEV_XID_ERRORS", rec.gpus[1].id))
    health = {re.search(r'health_watch="(\w+)"', lbl)[1]: v  # type: ignore[index]
              for lbl, v in metric(text, HEALTH, gpu.id)}  # fmt: skip
    assert health["PCIE"] == 10 and max(health.values()) == 10
    assert all(v == 0 for _, v in metric(text, HEALTH, rec.gpus[1].id))

    # Clearing restores every surface.
    await w.clear("mig-fault")
    await w.until_record(
        lambda r: all(d.health == "Healthy" for g in r.gpus for d in g.mig_devices),
        "MIG device Healthy again",
    )
    await _until_allocatable(w, MIG_RESOURCE, GPUS * PER_GPU)

    async def untainted() -> bool:
        found = await slice_devices()
        return bool(found and not found[target.uuid].get("taints"))

    await eventually(untainted, timeout_s=40, what="MIG device taint removed")
    await w.until_metrics(
        lambda t: (
            all(v == 0 for _, v in metric(t, "DCGM_FI_DEV_XID_ERRORS", gpu.id))
            and all(v == 0 for _, v in metric(t, HEALTH, gpu.id))
        ),
        "metrics recovered",
    )
