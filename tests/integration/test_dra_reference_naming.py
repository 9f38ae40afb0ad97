"""The KWOK DRA path in the reference's device naming (``draPlugin.deviceNaming: reference``).

The real status-updater (subprocess) builds the node's record from a legacy pool
(``gpuProduct: Tesla-K80``, the reference chart's default); the kwok-dra-plugin (in-process,
``DEVICE_NAMING=reference``) publishes its GPUs as ``gpu-<lower-case uuid>`` with the
reference's ``model`` attribute; the real scheduler allocates a claim that selects on ``model``;
the status-updater records the claim's pod as the holder of exactly that GPU. So the names
agree across both publishers' builder, the scheduler's allocation and the status-updater's
reading of claims, and the product stays as written (``Tesla-K80``) end to end.
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
from fgo_common import dradevices
from fgo_common.kube.client import api_client
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import HOLDER_DRA, NodeTopology
from fgo_kwok_dra_plugin.controller import KwokSliceController
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

PRODUCT = "Tesla-K80"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    resp = await call(*args, _preload_content=False, **kwargs)
    try:
        body: dict[str, Any] = json.loads(await resp.read())
        return body
    finally:
        resp.release()


@contextlib.asynccontextmanager
async def slice_controller(local_cluster: LocalCluster, namespace: str) -> AsyncIterator[None]:
    settings = load_settings(
        DraSettings,
        {
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "INSTANCE": unique_name("refname", 30),
            "KUBECONFIG": str(local_cluster.kubeconfig),
            "DEVICE_NAMING": "reference",
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


def model_claim_template(name: str) -> dict[str, Any]:
    """One GPU chosen by the reference's attribute, as a claim written for it would."""
    selector = f"device.attributes['gpu.nvidia.com'].model == '{PRODUCT}'"
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "gpu",
                            "exactly": {
                                "deviceClassName": "gpu.nvidia.com",
                                "selectors": [{"cel": {"expression": selector}}],
                            },
                        }
                    ]
                }
            }
        },
    }


def dra_pod(name: str, node: str, template: str) -> dict[str, Any]:
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
                    "resources": {"claims": [{"name": "gpu"}]},
                }
            ],
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": template}],
        },
    }


async def test_reference_naming_on_the_kwok_dra_path(
    local_cluster: LocalCluster,
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> None:
    pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
    config = {
        "nodePoolLabelKey": pool_key,
        "nodePools": {"legacy": {"gpuProduct": PRODUCT, "gpuCount": 2, "gpuMemory": 11441}},
    }
    core: Any = client.CoreV1Api(kube)
    resource: Any = client.ResourceV1Api(kube)
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
    )
    await resource.create_namespaced_resource_claim_template(
        namespace, model_claim_template("by-model")
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
        async with slice_controller(local_cluster, namespace):
            (node,) = await kwok_nodes(1, labels={pool_key: "legacy"})

            async def first_record() -> NodeTopology | None:
                record = await read_record(kube, namespace, node)
                return record if record is not None and len(record.gpus) == 2 else None

            record = await eventually(first_record, timeout_s=60, what="record of the node")
            # gpuProduct as written, in the record...
            assert record.gpu_product == PRODUCT
            assert {g.product for g in record.gpus} == {PRODUCT}
            expected_names = {dradevices.reference_device_name(g.id): g for g in record.gpus}

            async def published() -> list[dict[str, Any]] | None:
                body = await raw(
                    resource.list_resource_slice, field_selector=f"spec.nodeName={node}"
                )
                devices = [d for s in body["items"] for d in s["spec"]["devices"]]
                return devices if len(devices) == 2 else None

            devices = await eventually(published, timeout_s=30, what="2 devices published")
            # ... and in the slice, under the reference's names, with its `model` attribute.
            assert {d["name"] for d in devices} == set(expected_names)
            for device in devices:
                gpu = expected_names[device["name"]]
                attrs = device["attributes"]
                assert attrs["uuid"] == {"string": gpu.id}
                assert attrs["model"] == attrs["productName"] == {"string": PRODUCT}
                assert device["name"] == "gpu-" + gpu.id.lower().removeprefix("gpu-")

            await core.create_namespaced_pod(namespace, dra_pod("ref-pod", node, "by-model"))

            async def running() -> dict[str, Any] | None:
                pod = await raw(core.read_namespaced_pod, "ref-pod", namespace)
                return pod if pod.get("status", {}).get("phase") == "Running" else None

            pod = await eventually(running, timeout_s=90, what="ref-pod Running")
            (status,) = pod["status"]["resourceClaimStatuses"]
            claim = await raw(
                resource.read_namespaced_resource_claim, status["resourceClaimName"], namespace
            )
            (result,) = claim["status"]["allocation"]["devices"]["results"]
            assert result["driver"] == "gpu.nvidia.com" and result["pool"] == node
            held_gpu = expected_names[result["device"]]

            # The status-updater reads the reference-named device as that very GPU.
            async def holder_recorded() -> NodeTopology | None:
                record = await read_record(kube, namespace, node)
                if record is None:
                    return None
                held = [(g.id, h.pod, h.kind) for g in record.gpus for h in g.status.holders]
                return record if held else None

            record = await eventually(holder_recorded, timeout_s=60, what="DRA holder recorded")
            held = [(g.id, h.pod, h.kind) for g in record.gpus for h in g.status.holders]
            assert held == [(held_gpu.id, "ref-pod", HOLDER_DRA)]
            events = await core.list_namespaced_event(
                namespace, field_selector="reason=UnknownDraDevice"
            )
            assert not events.items, [e.message for e in events.items]
    finally:
        code = await proc.stop()
        await delete_namespace(kube, reservations)
    assert code in (0, None), proc.log_tail()
