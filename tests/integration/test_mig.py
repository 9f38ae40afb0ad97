"""MIG end to end on the real control plane, KWOK nodes and the real services as processes.

Per test: a topology config in the test's namespace (with a per-test pool label key, so other
tests' services leave our nodes alone), then the status-updater (the only writer of records),
the device-plugin in KWOK mode (capacity), the status-exporter in KWOK mode (GFD labels and
metrics) and, where DRA is tested, the kwok-dra-plugin (ResourceSlices), all scoped to that
namespace. The real kube-scheduler places the pods.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from fgo_common.nodestate import write_node_state
from fgo_common.topology import TOPOLOGY_DATA_KEY, NodeTopology
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import KwokNodeFactory, eventually
from fgo_nvidia_smi.main import run as nvidia_smi
from fgo_testkit.status_updater import StatusUpdaterProcess, free_port
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
MIG_STATE_LABEL = "nvidia.com/mig.config.state"
RECONFIGURE_SECONDS = 3.0


class Service:
    """``python -m <module>`` with ``env``; ready when ``/readyz`` on HEALTH_PORT answers 200."""

    def __init__(self, module: str, env: dict[str, str], workdir: Path) -> None:
        self.module = module
        self.health_port = free_port()
        self.env = {**os.environ, "HEALTH_PORT": str(self.health_port), **env}
        self.log_path = workdir / f"{module}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, env=self.env, stdout=log, stderr=log
            )

        async def ready() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log_tail()
            with contextlib.suppress(aiohttp.ClientError):
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{self.health_port}/readyz") as r,
                ):
                    return r.status == 200
            return False

        await eventually(ready, timeout_s=60, what=f"{self.module} ready")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            async with asyncio.timeout(15):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Stack:
    """One test's config, services and helpers."""

    def __init__(
        self, kube: client.ApiClient, namespace: str, nodes: KwokNodeFactory, workdir: Path
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.nodes = nodes
        self.workdir = workdir
        self.pool_key = f"fgo.test/mig-pool-{secrets.token_hex(3)}"
        self.core: Any = client.CoreV1Api(kube)
        self.resource: Any = client.ResourceV1Api(kube)
        self.services: list[Service | StatusUpdaterProcess] = []

    async def start(self, cluster: LocalCluster, config: dict[str, Any], *, dra: bool) -> None:
        config = {"nodePoolLabelKey": self.pool_key, **config}
        await self.core.create_namespaced_config_map(
            self.namespace,
            {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
        )
        kubeconfig = str(cluster.kubeconfig)
        common = {"KUBECONFIG": kubeconfig, "TOPOLOGY_CM_NAMESPACE": self.namespace}
        updater = StatusUpdaterProcess(
            kubeconfig,
            self.workdir / "status-updater.log",
            TOPOLOGY_CM_NAMESPACE=self.namespace,
            RESOURCE_RESERVATION_NAMESPACE=f"{self.namespace[:50]}-res",
            PROMETHEUS_URL="",
            DEBOUNCE_SECONDS="0.1",
            MIG_RECONFIGURE_SECONDS=str(RECONFIGURE_SECONDS),
        )
        self.services.append(updater)
        await updater.start()
        self.metrics_port = free_port()
        specs = [
            ("fgo_device_plugin", {"DEVICE_PLUGIN_MODE": "kwok"}),
            (
                "fgo_status_exporter",
                {
                    "EXPORTER_MODE": "kwok",
                    "METRICS_PORT": str(self.metrics_port),
                    "LABEL_RESYNC_SECONDS": "0",
                },
            ),
        ]
        if dra:
            specs.append(("fgo_kwok_dra_plugin", {"INSTANCE": f"mig-{secrets.token_hex(3)}"}))
        for module, env in specs:
            service = Service(module, {**common, **env}, self.workdir)
            self.services.append(service)
            await service.start()

    async def stop(self, failed: bool) -> None:
        for service in reversed(self.services):
            if failed and isinstance(service, Service):
                print(f"--- {service.module} log ---\n{service.log_tail()}")
            await service.stop()
        if failed:
            updater_log = self.workdir / "status-updater.log"
            if updater_log.exists():
                tail = updater_log.read_text(errors="replace").splitlines()[-40:]
                print("--- status-updater log ---\n" + "\n".join(tail))

    # --- nodes ---------------------------------------------------------------------------------
    async def node(self, pool: str, **labels: str) -> str:
        (name,) = await self.nodes(1, labels={self.pool_key: pool, **labels})
        return name

    async def read_node(self, name: str) -> Any:
        return await self.core.read_node(name)

    async def labels(self, name: str) -> dict[str, str]:
        return dict((await self.read_node(name)).metadata.labels or {})

    async def relabel(self, name: str, value: str) -> None:
        await self.core.patch_node(name, {"metadata": {"labels": {MIG_CONFIG_LABEL: value}}})

    async def record(self, name: str) -> NodeTopology:
        cm = await self.core.read_namespaced_config_map(f"topology-{name}", self.namespace)
        return NodeTopology.from_yaml(cm.data[TOPOLOGY_DATA_KEY], name)

    async def wait_capacity(self, name: str, want: dict[str, str | None], what: str) -> None:
        async def probe() -> bool:
            capacity = dict((await self.read_node(name)).status.capacity or {})
            return all(capacity.get(k) == v for k, v in want.items())

        await eventually(probe, timeout_s=60, what=f"{what}: capacity {want}")

    async def wait_labels(self, name: str, want: dict[str, str | None], what: str) -> None:
        async def probe() -> bool:
            labels = await self.labels(name)
            return all(labels.get(k) == v for k, v in want.items())

        await eventually(probe, timeout_s=60, what=f"{what}: labels {want}")

    # --- pods ----------------------------------------------------------------------------------
    def pod(self, name: str, node: str, limits: dict[str, str], **annotations: str) -> Any:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [KWOK_TOLERATION],
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.k8s.io/pause:3.10",
                        "resources": {"limits": limits},
                    }
                ],
            },
        }

    async def run_pod(self, body: dict[str, Any]) -> Any:
        await self.core.create_namespaced_pod(self.namespace, body)
        name = body["metadata"]["name"]

        async def running() -> Any:
            pod = await self.core.read_namespaced_pod(name, self.namespace)
            return pod if pod.status.phase == "Running" else None

        return await eventually(running, timeout_s=60, what=f"pod {name} Running")

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r,
        ):
            return await r.text()

    async def events(self, name: str, reason: str) -> list[Any]:
        found = await self.core.list_event_for_all_namespaces(
            field_selector=f"involvedObject.name={name},reason={reason}"
        )
        return list(found.items)


@pytest_asyncio.fixture
async def stack(
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Stack]:
    s = Stack(kube, namespace, kwok_nodes, tmp_path)
    try:
        yield s
    finally:
        rep = getattr(request.node, "rep_call", None)
        await s.stop(bool(rep is not None and rep.failed))


def h100_pool(strategy: str, mig: str = "all-1g.10gb", **extra: Any) -> dict[str, Any]:
    return {
        "migStrategy": strategy,
        "nodePools": {"mig": {"gpus": [{"type": "H100", "count": 2}], "mig": {"config": mig}}},
        **extra,
    }


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------

STRATEGY_CASES: dict[str, tuple[dict[str, str | None], dict[str, str | None]]] = {
    "none": (
        {"nvidia.com/gpu": "2", "nvidia.com/mig-1g.10gb": None},
        {"nvidia.com/mig.strategy": "none", "nvidia.com/gpu.count": "2"},
    ),
    "single": (
        {"nvidia.com/gpu": "14", "nvidia.com/mig-1g.10gb": None},
        {
            "nvidia.com/mig.strategy": "single",
            "nvidia.com/gpu.count": "14",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
        },
    ),
    "mixed": (
        {"nvidia.com/mig-1g.10gb": "14"},
        {
            "nvidia.com/mig.strategy": "mixed",
            "nvidia.com/mig-1g.10gb.count": "14",
            "nvidia.com/mig-1g.10gb.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
        },
    ),
}


@pytest.mark.parametrize("strategy", sorted(STRATEGY_CASES))
async def test_mig_pool_capacity_and_labels_per_strategy(
    stack: Stack, local_cluster: LocalCluster, strategy: str
) -> None:
    await stack.start(local_cluster, h100_pool(strategy), dra=False)
    node = await stack.node("mig")
    capacity, labels = STRATEGY_CASES[strategy]
    await stack.wait_capacity(node, capacity, strategy)
    await stack.wait_labels(node, {**labels, "nvidia.com/mig.capable": "true"}, strategy)
    record = await stack.record(node)
    assert all(g.mig_enabled and len(g.mig_devices) == 7 for g in record.gpus)
    if strategy == "none":
        return
    # A pod asking for the strategy's resource gets one MIG device in the record.
    resource = "nvidia.com/gpu" if strategy == "single" else "nvidia.com/mig-1g.10gb"
    await stack.run_pod(stack.pod("one", node, {resource: "1"}))

    async def held() -> list[Any] | None:
        record = await stack.record(node)
        found = [d for g in record.gpus for d in g.mig_devices if d.holders]
        return found or None

    (device,) = await eventually(held, timeout_s=30, what=f"{resource} pod on a MIG device")
    assert (device.holders[0].pod, device.holders[0].resource) == ("one", resource)


# --------------------------------------------------------------------------------------------
# a MIG pod, in the record and in the metrics
# --------------------------------------------------------------------------------------------


async def test_mig_pod_schedules_and_shows_in_metrics(
    stack: Stack, local_cluster: LocalCluster
) -> None:
    await stack.start(local_cluster, h100_pool("mixed"), dra=False)
    node = await stack.node("mig")
    await stack.wait_capacity(node, {"nvidia.com/mig-1g.10gb": "14"}, "mixed")
    body = stack.pod(
        "mig-pod",
        node,
        {"nvidia.com/mig-1g.10gb": "1"},
        **{"run.ai/simulated-gpu-utilization": "70"},
    )
    pod = await stack.run_pod(body)
    assert pod.spec.node_name == node

    async def held() -> tuple[int, Any] | None:
        record = await stack.record(node)
        found = [(g.index, d) for g in record.gpus for d in g.mig_devices if d.holders]
        return found[0] if found else None

    index, device = await eventually(held, timeout_s=30, what="MIG device holder in the record")
    assert device.profile == "1g.10gb"
    assert device.holders[0].pod == "mig-pod"

    async def series() -> list[str] | None:
        text = await stack.metrics()
        lines = [
            line
            for line in text.splitlines()
            # dcgm-exporter reports MIG instances through the profiling fields (no GPU_UTIL)
            if line.startswith("DCGM_FI_PROF_GR_ENGINE_ACTIVE{") and 'pod="mig-pod"' in line
        ]
        return lines or None

    (line,) = await eventually(series, timeout_s=30, what="the pod's MIG series")
    assert 'GPU_I_PROFILE="1g.10gb"' in line
    assert f'GPU_I_ID="{device.gi_id}"' in line
    assert f'gpu="{index}"' in line
    assert f'Hostname="{node}"' in line
    assert float(line.rsplit(" ", 1)[1]) > 0  # the pod's 70% shows on its instance


# --------------------------------------------------------------------------------------------
# the mig-manager protocol
# --------------------------------------------------------------------------------------------


async def test_relabel_reconfigures_and_is_refused_while_in_use(
    stack: Stack, local_cluster: LocalCluster
) -> None:
    await stack.start(local_cluster, h100_pool("mixed"), dra=False)
    node = await stack.node("mig")
    await stack.wait_capacity(node, {"nvidia.com/mig-1g.10gb": "14"}, "static layout")

    states: list[str] = []

    async def watch_state(until: str) -> None:
        async def probe() -> bool:
            state = (await stack.labels(node)).get(MIG_STATE_LABEL)
            if state and (not states or states[-1] != state):
                states.append(state)
            return state == until

        await eventually(probe, timeout_s=60, what=f"{MIG_STATE_LABEL}={until}", interval_s=0.1)

    await stack.relabel(node, "all-balanced")
    await watch_state("success")
    assert states == ["pending", "success"]
    balanced: dict[str, str | None] = {
        "nvidia.com/mig-1g.10gb": "4",
        "nvidia.com/mig-2g.20gb": "2",
        "nvidia.com/mig-3g.40gb": "2",
    }
    await stack.wait_capacity(node, balanced, "after all-balanced")
    await stack.wait_labels(
        node,
        {"nvidia.com/mig-3g.40gb.count": "2", "nvidia.com/mig-1g.10gb.count": "4"},
        "after all-balanced",
    )

    # A pod holds a MIG device: the next reconfiguration is refused.
    await stack.run_pod(stack.pod("holder", node, {"nvidia.com/mig-3g.40gb": "1"}))

    async def held() -> bool:
        record = await stack.record(node)
        return any(d.holders for g in record.gpus for d in g.mig_devices)

    await eventually(held, timeout_s=30, what="MIG device held in the record")
    states.clear()
    await stack.relabel(node, "all-1g.10gb")
    await watch_state("failed")
    # (the first read may still see the previous request's "success")
    assert states in (["pending", "failed"], ["success", "pending", "failed"])
    notes = (await stack.read_node(node)).metadata.annotations or {}
    assert "holder" in notes["fake-gpu-operator/mig.config.reason"]
    assert await stack.events(node, "MigConfigFailed")
    await asyncio.sleep(1)  # nothing else moves
    await stack.wait_capacity(node, balanced, "unchanged after the refusal")
    assert (await stack.labels(node))[MIG_STATE_LABEL] == "failed"

    # Once the pod is gone, a new request goes through.
    await stack.core.delete_namespaced_pod("holder", stack.namespace, grace_period_seconds=0)

    async def released() -> bool:
        record = await stack.record(node)
        return not any(d.holders for g in record.gpus for d in g.mig_devices)

    await eventually(released, timeout_s=60, what="MIG device released")
    await stack.relabel(node, "all-3g.40gb")
    await watch_state("success")
    await stack.wait_capacity(
        node,
        {"nvidia.com/mig-3g.40gb": "4", "nvidia.com/mig-1g.10gb": None},
        "after all-3g.40gb",
    )


# --------------------------------------------------------------------------------------------
# DRA
# --------------------------------------------------------------------------------------------


async def test_dra_claim_for_a_mig_device_is_allocated_and_recorded(
    stack: Stack, local_cluster: LocalCluster
) -> None:
    await stack.start(local_cluster, h100_pool("mixed", "all-3g.40gb"), dra=True)
    node = await stack.node("mig")

    async def slice_devices() -> list[str] | None:
        found = await stack.resource.list_resource_slice(field_selector=f"spec.nodeName={node}")
        names = [d.name for s in found.items for d in s.spec.devices or []]
        return names if len(names) == 4 else None

    names = await eventually(slice_devices, timeout_s=60, what="4 MIG devices in slices")
    assert all("-mig-3g40gb-" in n for n in names)
    await stack.resource.create_namespaced_resource_claim(
        stack.namespace,
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "one-mig"},
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "mig",
                            "exactly": {
                                "deviceClassName": "mig.nvidia.com",
                                "selectors": [
                                    {
                                        "cel": {
                                            "expression": "device.attributes['gpu.nvidia.com']"
                                            ".profile == '3g.40gb'"
                                        }
                                    }
                                ],
                            },
                        }
                    ]
                }
            },
        },
    )
    body = stack.pod("dra-mig", node, {})
    body["spec"]["resourceClaims"] = [{"name": "mig", "resourceClaimName": "one-mig"}]
    body["spec"]["containers"][0]["resources"] = {"claims": [{"name": "mig"}]}
    await stack.run_pod(body)
    claim = await stack.resource.read_namespaced_resource_claim("one-mig", stack.namespace)
    (result,) = claim.status.allocation.devices.results
    assert (result.driver, result.pool) == ("gpu.nvidia.com", node)

    async def holder() -> Any:
        record = await stack.record(node)
        for gpu in record.gpus:
            for device in gpu.mig_devices:
                if device.holders:
                    return gpu, device
        return None

    gpu, device = await eventually(holder, timeout_s=30, what="DRA holder on the MIG device")
    assert result.device == f"gpu-{gpu.minor}-mig-3g40gb-{device.gi_profile_id}-" + str(
        device.placement_start
    )
    assert device.holders[0].kind == "dra"
    assert device.holders[0].claim == f"{stack.namespace}/one-mig"
    assert not any(g.status.holders for g in (await stack.record(node)).gpus)


# --------------------------------------------------------------------------------------------
# dynamic MIG (partitionable devices through shared counters)
# --------------------------------------------------------------------------------------------


def _claim(name: str, device_class: str, profile: str | None = None) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": device_class}
    if profile is not None:
        exactly["selectors"] = [
            {"cel": {"expression": f"device.attributes['gpu.nvidia.com'].profile == '{profile}'"}}
        ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}},
    }


def _claim_pod(stack: Stack, name: str, node: str, claim: str) -> dict[str, Any]:
    body = stack.pod(name, node, {})
    body["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimName": claim}]
    body["spec"]["containers"][0]["resources"] = {"claims": [{"name": "gpu"}]}
    return dict(body)


async def test_dynamic_mig_claims_partition_one_h100_through_shared_counters(
    stack: Stack, local_cluster: LocalCluster, tmp_path: Path
) -> None:
    """One H100 in a ``mig: {dynamic: true}`` pool: the real scheduler gives a 3g.40gb and two
    1g.10gb claims non-overlapping placements, keeps a full-GPU claim and an overlapping 4g.40gb
    claim pending while they exist, the record (and so metrics and nvidia-smi) shows the
    instances, and once they are gone the full GPU is allocated."""
    config = {
        "migStrategy": "mixed",
        "nodePools": {"dyn": {"gpus": [{"type": "H100", "count": 1}], "mig": {"dynamic": True}}},
    }
    await stack.start(local_cluster, config, dra=True)
    node = await stack.node("dyn")

    async def published() -> dict[str, Any] | None:
        found = await stack.resource.list_resource_slice(field_selector=f"spec.nodeName={node}")
        devices = {d.name: d for s in found.items for d in s.spec.devices or []}
        sets = [c.name for s in found.items for c in s.spec.shared_counters or []]
        return devices if len(devices) == 26 and sets == ["gpu-0-counter-set"] else None

    devices = await eventually(published, timeout_s=60, what="26 devices and a counter set")
    assert "gpu-0" in devices and "gpu-0-mig-3g40gb-9-4" in devices

    claims = {"mig-3g": "3g.40gb", "mig-1g-a": "1g.10gb", "mig-1g-b": "1g.10gb"}
    for claim, profile in claims.items():
        await stack.resource.create_namespaced_resource_claim(
            stack.namespace, _claim(claim, "mig.nvidia.com", profile)
        )
        await stack.run_pod(_claim_pod(stack, f"pod-{claim}", node, claim))
    allocated: dict[str, str] = {}
    for claim in claims:
        read = await stack.resource.read_namespaced_resource_claim(claim, stack.namespace)
        (result,) = read.status.allocation.devices.results
        assert (result.driver, result.pool) == ("gpu.nvidia.com", node)
        allocated[claim] = result.device
    assert allocated["mig-3g"].startswith("gpu-0-mig-3g40gb-9-")
    slices: list[int] = []
    for name in allocated.values():
        capacity = devices[name].capacity
        slices += [
            int(k.removeprefix("memorySlice")) for k in capacity if k.startswith("memorySlice")
        ]
    assert len(slices) == len(set(slices)) == 6  # 4 + 1 + 1 memory slices, none shared

    # A full GPU and an overlapping 4g.40gb (its only placement is 0:4, which the 3g.40gb or
    # the two 1g.10gb occupy) cannot be had while the three exist.
    blocked: tuple[tuple[str, str, str | None], ...] = (
        ("full-gpu", "gpu.nvidia.com", None),
        ("mig-4g", "mig.nvidia.com", "4g.40gb"),
    )
    for name, device_class, wanted in blocked:
        await stack.resource.create_namespaced_resource_claim(
            stack.namespace, _claim(name, device_class, wanted)
        )
        await stack.core.create_namespaced_pod(
            stack.namespace, _claim_pod(stack, f"pod-{name}", node, name)
        )

    async def unschedulable(pod_name: str) -> bool:
        pod = await stack.core.read_namespaced_pod(pod_name, stack.namespace)
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in pod.status.conditions or []
        )

    for name, _, _ in blocked:
        await eventually(
            functools.partial(unschedulable, f"pod-{name}"),
            timeout_s=60,
            what=f"{name} unschedulable",
        )
        read = await stack.resource.read_namespaced_resource_claim(name, stack.namespace)
        assert read.status is None or read.status.allocation is None

    async def instances() -> Any:
        record = await stack.record(node)
        gpu = record.gpus[0]
        held = [d for d in gpu.mig_devices if d.holders]
        return (record, gpu) if gpu.mig_enabled and len(held) == 3 else None

    record, gpu = await eventually(instances, timeout_s=30, what="3 MIG instances in the record")
    by_name = {
        f"gpu-0-mig-{d.profile.replace('.', '')}-{d.gi_profile_id}-{d.placement_start}": d
        for d in gpu.mig_devices
    }
    assert set(by_name) == set(allocated.values())
    for claim, name in allocated.items():
        device = by_name[name]
        assert device.uuid == devices[name].attributes["uuid"].string
        assert [(h.pod, h.kind) for h in device.holders] == [(f"pod-{claim}", "dra")]
    assert not gpu.status.holders

    # The exporter and nvidia-smi read the record: each shows the instances.
    async def mig_series() -> list[str] | None:
        lines = [
            line
            for line in (await stack.metrics()).splitlines()
            if line.startswith("DCGM_FI_DEV_FB_USED{") and 'GPU_I_PROFILE="3g.40gb"' in line
        ]
        return lines or None

    await eventually(mig_series, timeout_s=30, what="a 3g.40gb series in the exporter")
    state = tmp_path / "smi-state"
    state.mkdir()
    write_node_state(state, record)
    out = io.StringIO()
    env = {"FGO_STATE_DIR": str(state), "NVIDIA_VISIBLE_DEVICES": "all"}
    assert nvidia_smi(["-L"], out, io.StringIO(), env) == 0
    listing = out.getvalue()
    for device in gpu.mig_devices:
        assert f"MIG {device.profile}" in listing and device.uuid in listing

    # Once they are gone, the instances disappear and the full GPU is allocated.
    for claim in (*claims, "mig-4g"):
        await stack.core.delete_namespaced_pod(f"pod-{claim}", stack.namespace)
        await stack.resource.delete_namespaced_resource_claim(claim, stack.namespace)

    async def full_gpu_running() -> Any:
        pod = await stack.core.read_namespaced_pod("pod-full-gpu", stack.namespace)
        return pod if pod.status.phase == "Running" else None

    await eventually(full_gpu_running, timeout_s=60, what="full-GPU pod Running")
    read = await stack.resource.read_namespaced_resource_claim("full-gpu", stack.namespace)
    (result,) = read.status.allocation.devices.results
    assert result.device == "gpu-0"

    async def whole_gpu_held() -> Any:
        g = (await stack.record(node)).gpus[0]
        return (
            g
            if not g.mig_enabled and [h.pod for h in g.status.holders] == ["pod-full-gpu"]
            else None
        )

    final = await eventually(whole_gpu_held, timeout_s=30, what="full GPU held, MIG off")
    assert not final.mig_devices


# --------------------------------------------------------------------------------------------
# the reference's Run:ai handshake: run.ai/mig.config in, run.ai/mig-mapping out
# --------------------------------------------------------------------------------------------

RUNAI_MIG_CONFIG = "run.ai/mig.config"
RUNAI_MIG_MAPPING = "run.ai/mig-mapping"
MIG_REASON = "fake-gpu-operator/mig.config.reason"
# The reference's format (its mig-faker's input): a mig-parted document whose one config is
# `selected`, GPU indexes as strings, instances as {name, position, size}.
RUNAI_REQUEST = """\
version: v1
mig-configs:
  selected:
    - devices: ["0"]
      mig-enabled: true
      mig-devices:
        - {name: 3g.40gb, position: 0, size: 4}
        - {name: 3g.40gb, position: 4, size: 4}
    - devices: ["1"]
      mig-enabled: true
      mig-devices:
        - {name: 2g.20gb, position: 2, size: 2}
        - {name: 1g.10gb, position: 6, size: 1}
"""
RUNAI_LAYOUT = [[("3g.40gb", 0), ("3g.40gb", 4)], [("2g.20gb", 2), ("1g.10gb", 6)]]


async def test_runai_mig_config_annotation_handshake(
    stack: Stack, local_cluster: LocalCluster
) -> None:
    """The reference's mig-faker protocol, answered by the status-updater for real: the
    annotation's layout lands in the record (and so in capacity, GFD labels and ResourceSlices),
    ``run.ai/mig-mapping`` names the instances; a malformed value fails with an Event and keeps
    the layout; removing the annotation gives the node its pool's layout back."""
    await stack.start(local_cluster, h100_pool("mixed"), dra=True)
    node = await stack.node("mig")
    await stack.wait_capacity(node, {"nvidia.com/mig-1g.10gb": "14"}, "pool layout")

    async def annotate(value: str | None) -> None:
        await stack.core.patch_node(node, {"metadata": {"annotations": {RUNAI_MIG_CONFIG: value}}})

    async def notes() -> dict[str, str]:
        return dict((await stack.read_node(node)).metadata.annotations or {})

    states: list[str] = []

    async def state_is(want: str) -> bool:
        state = (await stack.labels(node)).get(MIG_STATE_LABEL)
        if state and (not states or states[-1] != state):
            states.append(state)
        return state == want

    def by_placement(gpu: Any) -> list[Any]:
        return sorted(gpu.mig_devices, key=lambda d: d.placement_start)

    def layout(record: NodeTopology) -> list[list[tuple[str, int]]]:
        return [[(d.profile, d.placement_start) for d in by_placement(g)] for g in record.gpus]

    # --- the request is applied ---------------------------------------------------------------
    await annotate(RUNAI_REQUEST)
    await eventually(
        functools.partial(state_is, "success"), timeout_s=60, what="state success", interval_s=0.1
    )
    assert states == ["pending", "success"]
    record = await stack.record(node)
    assert layout(record) == RUNAI_LAYOUT
    assert all(g.mig_enabled for g in record.gpus)
    assert record.mig_config is not None
    assert record.mig_config.applied.startswith(f"{RUNAI_MIG_CONFIG}@")

    # The answer, in the reference's format: base64 JSON {"<gpu index>": [{position,
    # device_uuid, gpu_instance_id}]}, naming the instances the record holds.
    raw_mapping = (await notes())[RUNAI_MIG_MAPPING]  # same merge patch as the state label
    mapping = json.loads(base64.b64decode(raw_mapping, validate=True))
    assert mapping == {
        str(g.index): [
            {"position": d.placement_start, "device_uuid": d.uuid, "gpu_instance_id": d.gi_id}
            for d in by_placement(g)
        ]
        for g in record.gpus
    }
    uuids = [e["device_uuid"] for entries in mapping.values() for e in entries]
    assert len(set(uuids)) == 4 and all(u.startswith("MIG-") for u in uuids)

    new_capacity: dict[str, str | None] = {
        "nvidia.com/mig-3g.40gb": "2",
        "nvidia.com/mig-2g.20gb": "1",
        "nvidia.com/mig-1g.10gb": "1",
    }
    await stack.wait_capacity(node, new_capacity, "after run.ai/mig.config")
    await stack.wait_labels(
        node,
        {
            "nvidia.com/mig.strategy": "mixed",
            "nvidia.com/mig-3g.40gb.count": "2",
            "nvidia.com/mig-2g.20gb.count": "1",
            "nvidia.com/mig-1g.10gb.count": "1",
            "nvidia.com/mig-3g.40gb.product": "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb",
        },
        "after run.ai/mig.config",
    )
    wanted_devices = {
        f"gpu-{g.minor}-mig-{d.profile.replace('.', '')}-{d.gi_profile_id}-{d.placement_start}"
        for g in record.gpus
        for d in g.mig_devices
    }

    async def sliced() -> bool:
        found = await stack.resource.list_resource_slice(field_selector=f"spec.nodeName={node}")
        return {d.name for s in found.items for d in s.spec.devices or []} == wanted_devices

    await eventually(sliced, timeout_s=60, what=f"ResourceSlices with {sorted(wanted_devices)}")

    # --- a malformed value: a Warning Event, the last good layout stays ----------------------
    await annotate(RUNAI_REQUEST.replace("position: 4,", "position: x,"))

    async def failed_event() -> Any:
        if not await state_is("failed"):
            return None
        found = [
            e
            for e in await stack.events(node, "MigConfigFailed")
            if e.type == "Warning" and f"{RUNAI_MIG_CONFIG}@" in (e.message or "")
        ]
        return found or None

    await eventually(failed_event, timeout_s=60, what="MigConfigFailed Warning Event")
    after = await stack.record(node)
    assert layout(after) == RUNAI_LAYOUT
    assert [d.uuid for g in after.gpus for d in by_placement(g)] == uuids
    assert after.mig_config is not None and after.mig_config.state == "failed"
    assert after.mig_config.applied == record.mig_config.applied
    current = await notes()
    assert current[MIG_REASON].startswith(f"{RUNAI_MIG_CONFIG}@")
    assert current[RUNAI_MIG_MAPPING] == raw_mapping  # still describes the layout in place
    capacity = dict((await stack.read_node(node)).status.capacity or {})
    assert {k: capacity.get(k) for k in new_capacity} == new_capacity

    # --- removed: back to the pool's layout (all-1g.10gb), handshake traces gone -------------
    await annotate(None)

    async def cleared() -> bool:
        labels, current = await stack.labels(node), await notes()
        return MIG_STATE_LABEL not in labels and not (
            {RUNAI_MIG_MAPPING, MIG_REASON} & set(current)
        )

    await eventually(cleared, timeout_s=60, what="state label, reason and mapping removed")
    back = await stack.record(node)
    assert back.mig_config is None
    assert layout(back) == [[("1g.10gb", p) for p in range(7)]] * 2
    await stack.wait_capacity(
        node,
        {
            "nvidia.com/mig-1g.10gb": "14",
            "nvidia.com/mig-3g.40gb": None,
            "nvidia.com/mig-2g.20gb": None,
        },
        "pool layout again",
    )
    await stack.wait_labels(
        node,
        {"nvidia.com/mig-1g.10gb.count": "14", "nvidia.com/mig-3g.40gb.count": None},
        "pool layout again",
    )
