"""GPU fault injection end to end (docs/faults.md) on the real control plane with KWOK nodes.

Real components, each scoped to this test's namespace: the status-updater (subprocess) reads the
fault ConfigMaps and writes the records; the device plugin's KWOK capacity controller and the
kwok-dra-plugin run in-process; the status-exporter (subprocess, KWOK mode) serves metrics;
nvidia-smi renders the record the node agents would have written to the node. A third test takes
the kubelet path: the device plugin in node mode against the kubelet-side peers, and nvidia-smi
reading the node state that plugin writes. Each surface is
observed through the API (or HTTP / the tool's output) as a user would: node allocatable, the
real scheduler's decisions, ResourceSlice device taints and the taint-eviction controller,
metrics, nvidia-smi, Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from fgo_common.faults import FAULTS_DATA_KEY, FAULTS_LABEL
from fgo_common.kube.client import api_client
from fgo_common.nodestate import write_node_state
from fgo_common.runtime.runner import ServiceContext, run_tasks
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import HEALTHY, UNHEALTHY, NodeTopology
from fgo_device_plugin.kwok import KwokCapacityController
from fgo_device_plugin.main import node_mode
from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.settings import Settings as DpSettings
from fgo_kwok_dra_plugin.controller import HELD_TAINT_KEY as HELD_BY_EXTENDED_RESOURCE
from fgo_kwok_dra_plugin.controller import KwokSliceController
from fgo_kwok_dra_plugin.settings import Settings as DraSettings
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import KwokNodeFactory, eventually
from fgo_nvidia_smi.main import run as nvidia_smi
from fgo_testkit.kubelet import DevicePluginKubeletPeer
from fgo_testkit.kubelet.podresources import PodResourcesKubeletPeer
from fgo_testkit.status_updater import StatusUpdaterProcess, read_record
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
GPUS = 4
EXTRA_METRICS = (
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
    "DCGM_EXP_XID_ERRORS_COUNT",
)
# An hour, so the declarations' events stay in the window however slow the run.
XID_WINDOW_MS = 3_600_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exporter:
    """``python -m fgo_status_exporter`` in KWOK mode for the test's records."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        self.port, self.health = _free_port(), _free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "EXPORTER_MODE": "kwok",
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "METRICS_PORT": str(self.port),
            "HEALTH_PORT": str(self.health),
            "LABEL_RESYNC_SECONDS": "0",
            # ECC counters and the XID count are not in dcgm-exporter's default set.
            "EXPORTER_EXTRA_METRICS": ",".join(EXTRA_METRICS),
            "DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE": str(XID_WINDOW_MS),
        }
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fgo_status_exporter", env=self.env, stdout=out, stderr=out
            )

        async def ready() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log.read_text()
            with contextlib.suppress(aiohttp.ClientError):
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{self.health}/readyz") as r,
                ):
                    return r.status == 200
            return False

        await eventually(ready, timeout_s=60, what="status-exporter ready")

    async def scrape(self) -> str:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.port}/metrics") as r,
        ):
            return await r.text()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def xid_count(text: str, uuid: str) -> list[tuple[str, float]]:
    """(xid label value or "" without one, value) of GPU ``uuid``'s DCGM_EXP_XID_ERRORS_COUNT
    series, checking each carries the configured window."""
    out = []
    for labels, value in metric(text, "DCGM_EXP_XID_ERRORS_COUNT", uuid):
        assert f'window_size_in_ms="{XID_WINDOW_MS}"' in labels, labels
        code = re.search(r'xid="(\d+)"', labels)
        out.append((code[1] if code else "", value))
    return sorted(out)


def metric(text: str, name: str, uuid: str) -> list[tuple[str, float]]:
    """(label text, value) of every ``name`` series of GPU ``uuid``."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") and f'UUID="{uuid}"' in line:
            labels, _, value = line.rpartition(" ")
            out.append((labels, float(value)))
    return out


class World:
    def __init__(
        self, kube: client.ApiClient, cluster: LocalCluster, ns: str, node: str, tmp: Path
    ) -> None:
        self.kube = kube
        self.cluster = cluster
        self.ns = ns
        self.node = node
        self.tmp = tmp
        self.core: Any = client.CoreV1Api(kube)
        self.resource: Any = client.ResourceV1Api(kube)
        self.exporter: Exporter | None = None

    # --- declaring ---------------------------------------------------------------------------
    async def declare(self, name: str, faults: list[dict[str, Any]]) -> None:
        body = {
            "metadata": {"name": name, "labels": {FAULTS_LABEL: "true"}},
            "data": {FAULTS_DATA_KEY: yaml.safe_dump(faults)},
        }
        try:
            await self.core.create_namespaced_config_map(self.ns, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await self.core.replace_namespaced_config_map(name, self.ns, body)

    async def clear(self, name: str) -> None:
        await self.core.delete_namespaced_config_map(name, self.ns)

    # --- observing ---------------------------------------------------------------------------
    async def record(self) -> NodeTopology:
        found = await read_record(self.kube, self.ns, self.node)
        assert found is not None, "no record"
        return found

    async def until_record(self, check: Any, what: str, timeout_s: float = 30) -> NodeTopology:
        async def probe() -> NodeTopology | None:
            with contextlib.suppress(AssertionError, ApiException):
                rec = await self.record()
                return rec if check(rec) else None
            return None

        return await eventually(probe, timeout_s=timeout_s, what=what)

    async def allocatable(self) -> int:
        node = await self.core.read_node(self.node)
        return int((node.status.allocatable or {}).get(GPU, "0"))

    async def until_allocatable(self, count: int) -> None:
        async def probe() -> bool:
            return await self.allocatable() == count

        await eventually(probe, timeout_s=30, what=f"allocatable {GPU} == {count}")

    async def devices(self) -> dict[str, dict[str, Any]]:
        resp = await self.resource.list_resource_slice(
            field_selector=f"spec.nodeName={self.node}", _preload_content=False
        )
        import json

        body = json.loads(await resp.read())
        return {d["name"]: d for s in body["items"] for d in s["spec"].get("devices") or []}

    async def until_taints(self, device: str, taints: list[tuple[str, str, str]]) -> None:
        """The device's fault taints (the arbitration taint of a GPU held through the extended
        resource, docs/chart.md, is not about faults and is left out)."""

        async def probe() -> bool:
            got = (await self.devices()).get(device, {}).get("taints") or []
            return (
                sorted(
                    (t["key"], t.get("value", ""), t["effect"])
                    for t in got
                    if t["key"] != HELD_BY_EXTENDED_RESOURCE
                )
                == taints
            )

        await eventually(probe, timeout_s=30, what=f"{device} taints == {taints}")

    async def until_metrics(self, check: Any, what: str) -> str:
        assert self.exporter is not None

        async def probe() -> str | None:
            text = await self.exporter.scrape()  # type: ignore[union-attr]
            return text if check(text) else None

        try:
            return await eventually(probe, timeout_s=40, what=what)
        except AssertionError:
            text = await self.exporter.scrape()
            wanted = ("XID", "ECC_SBE_VOL", "GPU_TEMP")
            seen = [ln for ln in text.splitlines() if any(k in ln for k in wanted)][:12]
            raise AssertionError(f"{what}: exporter shows\n" + "\n".join(seen)) from None

    async def events(self, reason: str) -> list[str]:
        found = await self.core.list_event_for_all_namespaces(
            field_selector=f"involvedObject.name={self.node},reason={reason}"
        )
        return [e.message for e in found.items]

    async def config_events(self, name: str) -> list[str]:
        found = await self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name},reason=InvalidGpuFault"
        )
        return [e.message for e in found.items]

    def smi(self, record: NodeTopology, *args: str) -> tuple[int, str]:
        state = self.tmp / f"state-{secrets.token_hex(3)}"
        state.mkdir()
        write_node_state(state, record)
        out, err = io.StringIO(), io.StringIO()
        env = {"FGO_STATE_DIR": str(state), "NVIDIA_VISIBLE_DEVICES": "all"}
        code = nvidia_smi(list(args), out, err, env)
        return code, out.getvalue() + err.getvalue()

    def pod(self, name: str, *, gpus: int = 0, template: str = "") -> dict[str, Any]:
        ctr: dict[str, Any] = {"name": "main", "image": "registry.k8s.io/pause:3.10"}
        spec: dict[str, Any] = {
            "nodeSelector": {"kubernetes.io/hostname": self.node},
            "tolerations": [KWOK_TOLERATION],
            "terminationGracePeriodSeconds": 0,
            "containers": [ctr],
        }
        if gpus:
            ctr["resources"] = {"limits": {GPU: str(gpus)}}
        if template:
            ctr["resources"] = {"claims": [{"name": "gpu"}]}
            spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": template}]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}

    async def pod_status(self, name: str) -> dict[str, Any] | None:
        try:
            pod = await self.core.read_namespaced_pod(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {
            "node": pod.spec.node_name,
            "phase": pod.status.phase,
            "deleting": pod.metadata.deletion_timestamp is not None,
            "conditions": {c.type: c for c in pod.status.conditions or []},
        }


@contextlib.asynccontextmanager
async def kwok_dra(cluster: LocalCluster, namespace: str) -> AsyncIterator[None]:
    settings = load_settings(
        DraSettings,
        {
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "INSTANCE": f"faults-{secrets.token_hex(4)}",
            "KUBECONFIG": str(cluster.kubeconfig),
            "RESYNC_SECONDS": "3",
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


@pytest_asyncio.fixture
async def world(
    kube: client.ApiClient,
    local_cluster: LocalCluster,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> AsyncIterator[World]:
    core: Any = client.CoreV1Api(kube)
    pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
    config = {"nodePoolLabelKey": pool_key, "nodePools": {"p": {"gpus": [{"type": "H100",
              "count": GPUS}]}}}  # fmt: skip
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
    try:
        async with kwok_dra(local_cluster, namespace):
            await exporter.start()
            (node,) = await kwok_nodes(1, labels={pool_key: "p"})
            w = World(kube, local_cluster, namespace, node, tmp_path)
            w.exporter = exporter
            await w.until_record(lambda r: len(r.gpus) == GPUS, "record written")
            await w.until_allocatable(GPUS)
            yield w
    finally:
        await exporter.stop()
        stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await capacity_task
        await updater.stop()


async def test_each_kind_reaches_every_surface_and_clearing_recovers(world: World) -> None:
    w = world
    rec = await w.record()
    uuid = {g.index: g.id for g in rec.gpus}

    # A pod that needs every GPU: schedulable now, so only the fault can keep it pending later.
    await w.declare(
        "faults-a",
        [
            {"node": w.node, "gpu": 0, "kind": "xid", "code": 79},
            {"node": w.node, "gpu": 1, "kind": "xid", "code": 13},  # application XID
            {"node": w.node, "gpu": 2, "kind": "ecc", "count": 5, "doubleBit": 2},
            {"node": w.node, "gpu": 3, "kind": "thermal"},
            {"node": w.node, "gpu": 3, "kind": "bogus"},  # invalid: ignored, reported
        ],
    )
    # A second scenario object stacks on the first: neither kind makes GPU 1 Unhealthy.
    await w.declare(
        "faults-b",
        [
            {"node": w.node, "gpu": 1, "kind": "power"},
            {"node": w.node, "gpu": 1, "kind": "degraded", "count": 7},
        ],
    )

    # Record: critical XIDs Unhealthy, application XID not.
    rec = await w.until_record(
        lambda r: (
            [g.health for g in r.gpus] == [UNHEALTHY, HEALTHY, UNHEALTHY, HEALTHY]
            and all(g.faults for g in r.gpus)
        ),
        "faults in the record",
    )
    # Device plugin (KWOK): allocatable drops by the Unhealthy GPUs.
    await w.until_allocatable(2)
    # The real scheduler avoids them: 3 GPUs no longer fit.
    await w.core.create_namespaced_pod(w.ns, w.pod("needs-3", gpus=3))

    async def unschedulable() -> bool:
        status = await w.pod_status("needs-3")
        cond = (status or {}).get("conditions", {}).get("PodScheduled")
        return bool(cond and cond.status == "False" and cond.reason == "Unschedulable")

    await eventually(unschedulable, timeout_s=30, what="needs-3 Unschedulable")
    # DRA: severity decides the effect.
    await w.until_taints("gpu-0", [("gpu.nvidia.com/xid", "79", "NoExecute")])
    await w.until_taints("gpu-2", [("gpu.nvidia.com/xid", "48", "NoSchedule")])
    await w.until_taints("gpu-1", [])
    await w.until_taints("gpu-3", [])

    # Metrics: XID with err_code/err_msg, ECC counters, thermal slowdown (hot, clocks down).
    def faulted(text: str) -> bool:
        xid0 = metric(text, "DCGM_FI_DEV_XID_ERRORS", uuid[0])
        ecc = metric(text, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", uuid[2])
        replay = metric(text, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", uuid[1])
        return bool(
            xid0 and xid0[0][1] == 79 and ecc and ecc[0][1] == 5 and replay and replay[0][1] == 7
        )

    text = await w.until_metrics(faulted, "fault metrics")
    labels, _ = metric(text, "DCGM_FI_DEV_XID_ERRORS", uuid[0])[0]
    assert 'err_code="79"' in labels and "err_msg=" in labels and 'err_msg=""' not in labels
    assert metric(text, "DCGM_FI_DEV_XID_ERRORS", uuid[1])[0][1] == 13
    assert metric(text, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", uuid[2])[0][1] == 2
    assert metric(text, "DCGM_FI_DEV_XID_ERRORS", uuid[2])[0][1] == 48
    assert metric(text, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", uuid[2])[0][1] >= 1
    # XIDs counted in the window: one event per declaration, the double-bit ECC error as XID
    # 48, and a GPU without XIDs has the single 0 series without an xid label.
    assert [xid_count(text, uuid[i]) for i in range(GPUS)] == [
        [("79", 1)],
        [("13", 1)],
        [("48", 1)],
        [("", 0)],
    ]
    hot = metric(text, "DCGM_FI_DEV_GPU_TEMP", uuid[3])[0][1]
    cool = metric(text, "DCGM_FI_DEV_GPU_TEMP", uuid[1])[0][1]
    assert hot > cool

    # nvidia-smi on the same record.
    code, out = w.smi(rec, "-q", "-d", "ECC,PERFORMANCE", "-i", "2")
    assert code == 0, out
    assert re.search(r"DRAM Correctable\s+: 5\b", out), out
    assert re.search(r"DRAM Uncorrectable\s+: 2\b", out), out
    code, out = w.smi(rec, "-q", "-d", "PERFORMANCE", "-i", "3")
    assert re.search(r"HW Thermal Slowdown\s+: Active", out), out
    code, out = w.smi(rec, "-q", "-d", "PERFORMANCE", "-i", "1")
    assert re.search(r"HW Power Brake Slowdown\s+: Active", out), out
    assert not re.search(r"HW Thermal Slowdown\s+: Active", out), out

    # Events: what was injected; the invalid entry named by field on the ConfigMap.
    async def injected() -> list[str] | None:
        found = await w.events("GpuFaultInjected")
        return found if len(found) >= 4 else None

    messages = await eventually(injected, timeout_s=20, what="injected Events")
    assert any("XID 79 on GPU 0" in m for m in messages), messages
    bad = await eventually(
        lambda: w.config_events("faults-a"), timeout_s=20, what="InvalidGpuFault Event"
    )
    assert any("faults[4].kind" in m for m in bad), bad

    # Clearing: everything recovers, and the pending pod now fits.
    await w.clear("faults-a")
    await w.clear("faults-b")
    await w.until_record(
        lambda r: all(g.health == HEALTHY and not g.faults for g in r.gpus), "record recovered"
    )
    await w.until_allocatable(GPUS)
    await w.until_taints("gpu-0", [])
    await w.until_taints("gpu-2", [])

    async def scheduled() -> bool:
        status = await w.pod_status("needs-3")
        return bool(status and status["node"] == w.node)

    await eventually(scheduled, timeout_s=60, what="needs-3 scheduled after recovery")
    await w.until_metrics(
        lambda t: (
            metric(t, "DCGM_FI_DEV_XID_ERRORS", uuid[0])[0][1] == 0
            and metric(t, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", uuid[2])[0][1] == 0
            and metric(t, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", uuid[1])[0][1] == 0
            and all(xid_count(t, uuid[i]) == [("", 0)] for i in range(GPUS))
        ),
        "metrics recovered",
    )
    cleared = await eventually(
        lambda: w.events("GpuFaultCleared"), timeout_s=20, what="cleared Events"
    )
    assert cleared


async def test_lost_gpu_evicts_its_dra_pod_and_expires_on_its_own(world: World) -> None:
    w = world
    await w.resource.create_namespaced_resource_claim_template(
        w.ns,
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
    await w.core.create_namespaced_pod(w.ns, w.pod("dra-victim", template="one-gpu"))

    async def running() -> bool:
        status = await w.pod_status("dra-victim")
        return bool(status and status["phase"] == "Running")

    await eventually(running, timeout_s=60, what="DRA pod Running")
    claims = await w.resource.list_namespaced_resource_claim(w.ns)
    (claim,) = claims.items
    device = claim.status.allocation.devices.results[0].device  # "gpu-<minor>"
    index = int(device.split("-")[1])

    await w.declare(
        "lost",
        [{"node": w.node, "gpu": index, "kind": "gpuLost", "start": "3s", "duration": "25s"}],
    )
    declared = await w.core.read_namespaced_config_map("lost", w.ns)
    created = declared.metadata.creation_timestamp.timestamp()
    await w.until_taints(device, [("gpu.nvidia.com/gpu-lost", "true", "NoExecute")])
    rec = await w.until_record(lambda r: r.gpus[index].health == UNHEALTHY, "GPU lost")
    (fault,) = rec.gpus[index].faults
    assert (fault["since"] - created, fault["until"] - created) == (3, 28)  # start timer
    code, out = w.smi(rec)
    assert code == 15, out
    assert "GPU is lost" in out

    # The device-taint eviction controller (kube-controller-manager) evicts the pod.
    async def evicted() -> bool:
        status = await w.pod_status("dra-victim")
        if status is None or status["deleting"]:
            return True
        target = status["conditions"].get("DisruptionTarget")
        return bool(target and target.status == "True")

    await eventually(evicted, timeout_s=60, what="DRA pod evicted by the NoExecute taint")

    # The duration expires without anyone touching the declaration.
    await w.until_taints(device, [])
    await w.until_record(lambda r: r.gpus[index].health == HEALTHY, "lost GPU back", 45)
    assert await w.events("GpuFaultCleared")


async def test_node_path_device_plugin_reports_unhealthy_and_nvidia_smi_fails(
    kube: client.ApiClient, local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """A node with a kubelet: the device plugin (node mode, kubelet-side peers) streams the
    injected fault as Unhealthy in ListAndWatch, and the node-local state it writes for GPU pods
    makes nvidia-smi fail like the real tool on a lost GPU; clearing reverses both."""
    core: Any = client.CoreV1Api(kube)
    pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
    config = {"nodePoolLabelKey": pool_key, "nodePools": {"p": {"gpus": [{"type": "H100",
              "count": 2}]}}}  # fmt: skip
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
    )
    node = f"gpu-node-{secrets.token_hex(4)}"
    await core.create_node({"metadata": {"name": node, "labels": {pool_key: "p"}}})
    socks = Path(f"/tmp/fgo-flt-{secrets.token_hex(3)}")  # unix socket paths must stay short
    settings = load_settings(
        DpSettings,
        {
            "NODE_NAME": node,
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "KUBECONFIG": str(local_cluster.kubeconfig),
            "DEVICE_PLUGIN_DIR": str(socks / "dp"),
            "STATE_DIR": str(socks / "state"),
            "POD_RESOURCES_SOCKET": str(socks / "pr" / "kubelet.sock"),
            "POD_RESOURCES_INTERVAL_SECONDS": "1",
            "KUBELET_POLL_INTERVAL_SECONDS": "0.1",
        },
    )
    updater = StatusUpdaterProcess(
        local_cluster.kubeconfig,
        tmp_path / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=namespace,
        RESOURCE_RESERVATION_NAMESPACE=f"{namespace[:50]}-res",
        PROMETHEUS_URL="",
        DEBOUNCE_SECONDS="0.1",
    )
    ctx = ServiceContext(name="device-plugin")
    w = World(kube, local_cluster, namespace, node, tmp_path)
    try:
        await updater.start()
        async with (
            PodResourcesKubeletPeer(settings.pod_resources_socket),
            DevicePluginKubeletPeer(settings.plugin_dir) as kubelet,
        ):
            task = asyncio.create_task(
                run_tasks(ctx, {"node": node_mode(settings)}, health_port=None)
            )
            try:
                plugin = await kubelet.wait_for_plugin(GPU, timeout_seconds=30)
                await plugin.wait_for_devices(lambda ds: len(ds) == 2, timeout_seconds=30)
                env = {"FGO_STATE_DIR": settings.state_dir, "NVIDIA_VISIBLE_DEVICES": "all"}
                out = io.StringIO()
                assert nvidia_smi(["-L"], out, io.StringIO(), env) == 0, out.getvalue()

                await w.declare("lost", [{"node": node, "gpu": 1, "kind": "gpuLost"}])
                await plugin.wait_for_devices(
                    lambda ds: [d.health for d in ds] == ["Healthy", "Unhealthy"],
                    timeout_seconds=30,
                )

                async def smi_fails() -> str | None:
                    out = io.StringIO()
                    code = nvidia_smi([], out, io.StringIO(), env)
                    return out.getvalue() if code == 15 else None

                text = await eventually(smi_fails, timeout_s=20, what="nvidia-smi exit 15")
                # "GPU<bus id>" as current drivers print it (docs/faults.md).
                assert re.search(r"device handle for GPU[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:", text), text
                assert "GPU is lost" in text

                await w.clear("lost")
                await plugin.wait_for_devices(
                    lambda ds: [d.health for d in ds] == ["Healthy", "Healthy"],
                    timeout_seconds=30,
                )

                async def smi_ok() -> bool:
                    return nvidia_smi(["-L"], io.StringIO(), io.StringIO(), env) == 0

                await eventually(smi_ok, timeout_s=20, what="nvidia-smi works again")
            finally:
                ctx.stop.set()
                async with asyncio.timeout(15):
                    await task
    finally:
        await updater.stop()
        with contextlib.suppress(ApiException):
            await core.delete_node(node)
        shutil.rmtree(socks, ignore_errors=True)
