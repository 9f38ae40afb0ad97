"""The seed README's scenarios, end to end: the chart installed, its services running under
their ServiceAccounts, KWOK GPU nodes, real scheduler and controllers.

Each test makes its own KWOK node(s) in pool ``default`` (the chart's default topology: 2 x
Tesla K80 per node) and pins its pods there, so tests do not see each other's GPUs. Every test
also runs under the RBAC guard of conftest.py: a refused API call of any service fails it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from e2elib import (
    GPU,
    POOL_LABEL,
    UTILIZATION,
    ForbiddenGuard,
    Target,
    create_pod,
    delete_pods,
    gpu_claim_spec,
    gpu_pod,
    holders,
    node,
    node_slices,
    pod,
    raw,
    record,
    samples,
    wait_gpu_capacity,
    wait_running,
)
from fgo_common.topology import HOLDER_DEVICE_PLUGIN, HOLDER_DRA
from fgo_localcluster.testing import KwokNodeFactory, eventually, unique_name
from kubernetes_asyncio import client

K80 = "Tesla K80"
GPU_DRIVER = "gpu.nvidia.com"


async def _gpu_node(kube: client.ApiClient, kwok_nodes: KwokNodeFactory) -> str:
    """A new KWOK node in pool default, once it has its GPUs (capacity and record)."""
    (name,) = await kwok_nodes(1)
    await wait_gpu_capacity(kube, name, 2)
    return name


async def _held(
    kube: client.ApiClient, target: Target, node_name: str, pods: list[str], gpus: int
) -> dict[str, list[str]]:
    """Wait until the node's record shows exactly ``pods`` holding ``gpus`` GPUs."""

    async def probe() -> dict[str, list[str]] | None:
        topology = await record(kube, target.namespace, node_name)
        if topology is None:
            return None
        held = {gpu: who for gpu, who in holders(topology).items() if who}
        ok = sorted({p for who in held.values() for p in who}) == sorted(pods)
        return held if ok and len(held) == gpus else None

    return await eventually(
        probe, timeout_s=60, what=f"record of {node_name}: {pods} holding {gpus} GPU(s)"
    )


async def test_gpu_pod_via_the_device_plugin_path_on_a_kwok_node(
    kube: client.ApiClient, target: Target, kwok_nodes: KwokNodeFactory, workload_namespace: str
) -> None:
    node_name = await _gpu_node(kube, kwok_nodes)
    name = unique_name("gpu-pod", 30)
    await create_pod(kube, workload_namespace, gpu_pod(name, node_name, gpus=1))
    running = await wait_running(kube, workload_namespace, name)
    assert running["spec"]["nodeName"] == node_name
    held = await _held(kube, target, node_name, [f"{workload_namespace}/{name}"], 1)
    topology = await record(kube, target.namespace, node_name)
    assert topology is not None and topology.kwok
    gpu = topology.gpu_by_id(next(iter(held)))
    assert gpu is not None and gpu.product == K80
    assert [h.kind for h in gpu.status.holders] == [HOLDER_DEVICE_PLUGIN]
    # GPU feature discovery labels, as real GPU nodes have them.
    labels = (await node(kube, node_name))["metadata"]["labels"]
    assert labels.get("nvidia.com/gpu.product") == "Tesla-K80"
    assert labels.get("nvidia.com/gpu.count") == "2"
    await delete_pods(kube, workload_namespace, [name])
    await _held(kube, target, node_name, [], 0)


async def test_dra_pod_on_a_kwok_node(
    kube: client.ApiClient, target: Target, kwok_nodes: KwokNodeFactory, workload_namespace: str
) -> None:
    node_name = await _gpu_node(kube, kwok_nodes)

    async def published() -> list[dict[str, Any]] | None:
        # The node's GPU slices (with computeDomainDraPlugin on, a channel slice too).
        slices = [
            s for s in await node_slices(kube, node_name) if s["spec"]["driver"] == GPU_DRIVER
        ]
        devices = [d for s in slices for d in s["spec"].get("devices", [])]
        return slices if len(devices) == 2 else None

    slices = await eventually(published, timeout_s=60, what=f"ResourceSlice of {node_name}")
    assert {s["spec"]["driver"] for s in slices} == {"gpu.nvidia.com"}
    resource: Any = client.ResourceV1Api(kube)
    template = unique_name("gpu-claim", 30)
    await resource.create_namespaced_resource_claim_template(
        workload_namespace,
        {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
         "metadata": {"name": template}, "spec": {"spec": gpu_claim_spec()}},
    )  # fmt: skip
    name = unique_name("kwok-gpu-pod", 30)
    await create_pod(kube, workload_namespace, gpu_pod(name, node_name, claim_template=template))
    await wait_running(kube, workload_namespace, name)
    status = (await pod(kube, workload_namespace, name))["status"]
    claim_name = status["resourceClaimStatuses"][0]["resourceClaimName"]
    claim = await raw(resource.read_namespaced_resource_claim, claim_name, workload_namespace)
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert result["driver"] == "gpu.nvidia.com" and result["pool"] == node_name
    held = await _held(kube, target, node_name, [f"{workload_namespace}/{name}"], 1)
    topology = await record(kube, target.namespace, node_name)
    assert topology is not None
    gpu = topology.gpu_by_id(next(iter(held)))
    assert gpu is not None
    assert [h.kind for h in gpu.status.holders] == [HOLDER_DRA]
    assert gpu.status.holders[0].claim == f"{workload_namespace}/{claim_name}"
    await delete_pods(kube, workload_namespace, [name])


async def test_pods_until_capacity_is_exhausted(
    kube: client.ApiClient, target: Target, kwok_nodes: KwokNodeFactory, workload_namespace: str
) -> None:
    node_name = await _gpu_node(kube, kwok_nodes)
    names = [unique_name(f"fill-{i}", 30) for i in range(3)]
    for name in names[:2]:
        await create_pod(kube, workload_namespace, gpu_pod(name, node_name, gpus=1))
        await wait_running(kube, workload_namespace, name)
    held = await _held(kube, target, node_name, [f"{workload_namespace}/{n}" for n in names[:2]], 2)
    assert all(len(who) == 1 for who in held.values()), f"a GPU given twice: {held}"
    await create_pod(kube, workload_namespace, gpu_pod(names[2], node_name, gpus=1))

    async def unschedulable() -> str | None:
        body = await pod(kube, workload_namespace, names[2])
        for cond in body.get("status", {}).get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                return str(cond.get("message", ""))
        return None

    message = await eventually(unschedulable, timeout_s=60, what="third pod unschedulable")
    assert f"Insufficient {GPU}" in message, message
    assert (await pod(kube, workload_namespace, names[2]))["status"]["phase"] == "Pending"
    await delete_pods(kube, workload_namespace, names)


async def test_shared_claim(
    kube: client.ApiClient, target: Target, kwok_nodes: KwokNodeFactory, workload_namespace: str
) -> None:
    node_name = await _gpu_node(kube, kwok_nodes)
    resource: Any = client.ResourceV1Api(kube)
    claim_name = unique_name("shared-gpu", 30)
    await resource.create_namespaced_resource_claim(
        workload_namespace,
        {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
         "metadata": {"name": claim_name}, "spec": gpu_claim_spec()},
    )  # fmt: skip
    names = [unique_name(f"sharer-{i}", 30) for i in range(2)]
    for name in names:
        await create_pod(kube, workload_namespace, gpu_pod(name, node_name, claim=claim_name))
    for name in names:
        await wait_running(kube, workload_namespace, name)
    claim = await raw(resource.read_namespaced_resource_claim, claim_name, workload_namespace)
    assert sorted(r["name"] for r in claim["status"]["reservedFor"]) == sorted(names)
    held = await _held(kube, target, node_name, [f"{workload_namespace}/{n}" for n in names], 1)
    (gpu_id,) = held
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    topology = await record(kube, target.namespace, node_name)
    assert topology is not None
    gpu = topology.gpu_by_id(gpu_id)
    assert gpu is not None and {h.claim for h in gpu.status.holders} == {
        f"{workload_namespace}/{claim_name}"
    }
    assert result["pool"] == node_name
    await delete_pods(kube, workload_namespace, names)
    await resource.delete_namespaced_resource_claim(claim_name, workload_namespace)


async def test_utilization_annotation_is_visible_in_metrics(
    kube: client.ApiClient, target: Target, kwok_nodes: KwokNodeFactory, workload_namespace: str
) -> None:
    node_name = await _gpu_node(kube, kwok_nodes)
    name = unique_name("busy-pod", 30)
    body = gpu_pod(name, node_name, gpus=1, annotations={UTILIZATION: "70-80"})
    await create_pod(kube, workload_namespace, body)
    await wait_running(kube, workload_namespace, name)

    async def series() -> list[Any] | None:
        util = [
            s
            for s in samples(await target.kwok_metrics(), "DCGM_FI_DEV_GPU_UTIL")
            if s.labels.get("Hostname") == node_name
        ]
        busy = [s for s in util if s.labels.get("pod") == name]
        return util if len(util) == 2 and busy else None

    util = await eventually(series, timeout_s=60, what=f"utilisation series of {node_name}")
    busy = [s for s in util if s.labels.get("pod") == name]
    idle = [s for s in util if s.labels.get("pod") != name]
    assert len(busy) == 1 and 70 <= busy[0].value <= 80, busy
    assert busy[0].labels["namespace"] == workload_namespace
    assert len(idle) == 1 and idle[0].value == 0 and not idle[0].labels.get("pod"), idle
    # The series carries the GPU's UUID, the one the record gives the pod.
    topology = await record(kube, target.namespace, node_name)
    assert topology is not None
    assert holders(topology)[busy[0].labels["UUID"]] == [f"{workload_namespace}/{name}"]
    await delete_pods(kube, workload_namespace, [name])


async def test_node_leaving_its_pool_is_cleaned_up(
    kube: client.ApiClient, target: Target, kwok_nodes: KwokNodeFactory
) -> None:
    node_name = await _gpu_node(kube, kwok_nodes)

    async def everything_there() -> bool:
        labels = (await node(kube, node_name))["metadata"]["labels"]
        metrics = await target.kwok_metrics()
        return (
            await record(kube, target.namespace, node_name) is not None
            and labels.get("nvidia.com/gpu.product") == "Tesla-K80"
            and bool(await node_slices(kube, node_name))
            and any(
                s.labels.get("Hostname") == node_name
                for s in samples(metrics, "DCGM_FI_DEV_GPU_UTIL")
            )
        )

    await eventually(everything_there, timeout_s=60, what=f"{node_name} fully a GPU node")
    core: Any = client.CoreV1Api(kube)
    await core.patch_node(
        node_name,
        {"metadata": {"labels": {POOL_LABEL: None}}},
        _content_type="application/merge-patch+json",
    )

    async def leftovers() -> list[str]:
        left = []
        body = await node(kube, node_name)
        labels = body["metadata"]["labels"]
        left += [k for k in labels if k.startswith("nvidia.com/")]
        for field in ("capacity", "allocatable"):
            if body["status"].get(field, {}).get(GPU, "0") != "0":
                left.append(f"status.{field}[{GPU}]={body['status'][field][GPU]}")
        if await record(kube, target.namespace, node_name) is not None:
            left.append(f"ConfigMap topology-{node_name}")
        left += [
            f"ResourceSlice {s['metadata']['name']}" for s in await node_slices(kube, node_name)
        ]
        metrics = await target.kwok_metrics()
        if any(
            s.labels.get("Hostname") == node_name for s in samples(metrics, "DCGM_FI_DEV_GPU_UTIL")
        ):
            left.append("DCGM series")
        return left

    async def clean() -> bool:
        return not await leftovers()

    try:
        await eventually(clean, timeout_s=60, what=f"{node_name} cleaned up")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still there: {await leftovers()}") from None


async def test_the_rbac_guard_catches_a_forbidden_call(
    target: Target, forbidden_guard: ForbiddenGuard, tmp_path: Path
) -> None:
    """The guard that runs around every test can fail: a call the chart does not grant (the
    exporter deleting a node), made with the exporter's ServiceAccount token, is caught."""
    forbidden_guard.reset()
    token = target.kubectl(
        "create", "token", "fgo-status-exporter", "-n", target.namespace, "--duration=600s"
    ).strip()
    admin = yaml.safe_load(target.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    kubeconfig = tmp_path / "exporter.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "exporter", "user": {"token": token}}],
                "contexts": [
                    {"name": "e", "context": {"cluster": cluster["name"], "user": "exporter"}}
                ],
                "current-context": "e",
            }
        )
    )
    out = target.kubectl(
        "--kubeconfig",
        str(kubeconfig),
        "delete",
        "node",
        "no-such-node",
        "--wait=false",
        check=False,
    )
    problems = forbidden_guard.new_forbidden()
    assert any("denied by the authorization filter" in p for p in problems), (out, problems)
    forbidden_guard.reset()  # expected: do not fail this test for it
