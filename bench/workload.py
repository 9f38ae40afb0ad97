"""GPU pods of the benchmark: device-plugin (``nvidia.com/gpu: 1``), DRA (a claim from a
template of DeviceClass ``gpu.nvidia.com``) and plain (no GPU, the scheduler's baseline).

Pods target the bench pool and tolerate the KWOK taint, as the seed README's example does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fgo_localcluster import nodes

from bench.apicount import APPLY
from bench.env import DEVICE_CLASS, GPU_RESOURCE, NAMESPACE, POOL

PATHS = ("device-plugin", "dra", "plain")
CLAIM_TEMPLATE = "bench-gpu"
RUN_LABEL = "fgo-bench/run"
CREATE_CONCURRENCY = 32


def claim_template(namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": CLAIM_TEMPLATE, "namespace": namespace},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {"name": "gpu", "exactly": {"deviceClassName": DEVICE_CLASS, "count": 1}}
                    ]
                }
            }
        },
    }


def pod(name: str, path: str, run: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "nvidia/cuda:12.4.1-base-ubuntu22.04",
        "resources": {"requests": {"cpu": "10m"}},
    }
    spec: dict[str, Any] = {
        "nodeSelector": {nodes.POOL_LABEL: POOL},
        "tolerations": [
            {"key": nodes.KWOK_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
        ],
        "terminationGracePeriodSeconds": 0,
        "containers": [container],
    }
    if path == "device-plugin":
        container["resources"]["limits"] = {GPU_RESOURCE: "1"}
    elif path == "dra":
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": CLAIM_TEMPLATE}]
        container["resources"]["claims"] = [{"name": "gpu"}]
    elif path != "plain":
        raise ValueError(f"unknown path {path!r}; one of {', '.join(PATHS)}")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {RUN_LABEL: run},
            "annotations": {"run.ai/simulated-gpu-utilization": "40-60"},
        },
        "spec": spec,
    }


def pod_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(count)]


async def ensure_claim_template(api: Any, namespace: str = NAMESPACE) -> None:
    from kubernetes_asyncio import client

    await client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "resource.k8s.io",
        "v1",
        namespace,
        "resourceclaimtemplates",
        CLAIM_TEMPLATE,
        claim_template(namespace),
        **APPLY,
    )


async def create_pods(
    api: Any,
    bodies: list[dict[str, Any]],
    rate: float = 0.0,
    stamps: dict[str, float] | None = None,
) -> dict[str, float]:
    """Create the pods (all at once, or paced at ``rate`` per second); returns when each create
    request was sent, keyed by pod name. Errors other than 409 propagate."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    sent: dict[str, float] = stamps if stamps is not None else {}
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)
    t0 = time.monotonic()

    async def one(i: int, body: dict[str, Any]) -> None:
        if rate > 0:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        async with sem:
            sent[body["metadata"]["name"]] = time.monotonic()
            try:
                await core.create_namespaced_pod(body["metadata"]["namespace"], body)  # type: ignore[arg-type]
            except ApiException as exc:
                if exc.status != 409:
                    raise

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return sent


async def delete_pods(
    api: Any,
    names: list[str],
    namespace: str = NAMESPACE,
    rate: float = 0.0,
    stamps: dict[str, float] | None = None,
) -> dict[str, float]:
    """Delete the pods the way a user does (graceful delete; KWOK finishes it)."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    sent: dict[str, float] = stamps if stamps is not None else {}
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)
    t0 = time.monotonic()

    async def one(i: int, name: str) -> None:
        if rate > 0:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        async with sem:
            sent[name] = time.monotonic()
            try:
                await core.delete_namespaced_pod(name, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))
    return sent


async def force_delete_run(api: Any, run: str, namespace: str = NAMESPACE) -> None:
    """Best-effort cleanup of whatever a stopped scenario left behind."""
    from kubernetes_asyncio import client

    await client.CoreV1Api(api).delete_collection_namespaced_pod(
        namespace, label_selector=f"{RUN_LABEL}={run}", grace_period_seconds=0
    )
