"""Acceptance of the local control plane: real apiserver, scheduler, controller-manager, KWOK.

Each test pins its pods to its own KWOK nodes (by hostname) so tests cannot disturb each other.
API objects are plain dicts, so the API classes are typed ``Any`` (the generated stubs only
accept model objects).
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import KwokNodeFactory, eventually, pod_phase, unique_name
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

KWOK_TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}


def pod_manifest(
    name: str,
    node: str,
    *,
    limits: dict[str, str] | None = None,
    claims: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "registry.k8s.io/pause:3.10"}
    if limits:
        container["resources"] = {"limits": limits}
    if claims:
        container.setdefault("resources", {})["claims"] = [{"name": c["name"]} for c in claims]
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [KWOK_TOLERATION],
        "containers": [container],
        "terminationGracePeriodSeconds": 0,
    }
    if claims:
        spec["resourceClaims"] = claims
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


async def wait_running(core: Any, namespace: str, name: str) -> Any:
    async def running() -> Any:
        pod = await core.read_namespaced_pod(name, namespace)
        return pod if pod_phase(pod) == "Running" else None

    return await eventually(running, timeout_s=60, what=f"pod {namespace}/{name} Running")


async def scheduling_failures(core: Any, namespace: str, pod: str) -> list[str]:
    events = await core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={pod},reason=FailedScheduling"
    )
    return [e.message or "" for e in events.items]


async def test_kwok_node_becomes_ready_and_keeps_its_capacity(
    kube: client.ApiClient, kwok_nodes: KwokNodeFactory
) -> None:
    core: Any = client.CoreV1Api(kube)
    (name,) = await kwok_nodes(1, wait_ready=False, cpu="16", memory="64Gi")

    async def ready() -> Any:
        node = await core.read_node(name)
        conditions = {c.type: c.status for c in node.status.conditions or []}
        return node if conditions.get("Ready") == "True" else None

    node = await eventually(ready, timeout_s=60, what=f"node {name} Ready")
    assert node.status.capacity == {"cpu": "16", "memory": "64Gi", "pods": "110"}
    assert node.status.allocatable == node.status.capacity
    assert node.metadata.labels["run.ai/simulated-gpu-node-pool"] == "default"
    # Liveness via a node Lease, renewed by KWOK like a kubelet would.
    lease = await eventually(
        lambda: client.CoordinationV1Api(kube).read_namespaced_lease(name, "kube-node-lease"),
        timeout_s=30,
        what=f"lease of {name}",
    )
    assert lease.spec.holder_identity
    # The node-lifecycle controller lifts the not-ready taint once the node is Ready.
    await kwok_nodes.wait_ready([name])


async def test_pod_is_bound_by_the_scheduler_and_reported_running(
    kube: client.ApiClient, namespace: str, kwok_nodes: KwokNodeFactory
) -> None:
    core: Any = client.CoreV1Api(kube)
    (node,) = await kwok_nodes(1)
    await core.create_namespaced_pod(namespace, pod_manifest("plain", node))

    pod = await wait_running(core, namespace, "plain")
    assert pod.spec.node_name == node
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["PodScheduled"] == "True"
    assert conditions["Ready"] == "True"
    assert pod.status.container_statuses[0].state.running is not None
    events = await core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=plain,reason=Scheduled"
    )
    assert any(node in (e.message or "") for e in events.items), (
        "no Scheduled event from the scheduler"
    )

    # No kubelet confirms termination: KWOK's pod-delete stage removes the pod for good.
    await core.delete_namespaced_pod("plain", namespace)

    async def gone() -> bool:
        try:
            await core.read_namespaced_pod("plain", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    await eventually(gone, timeout_s=60, what="deleted pod to disappear")


async def test_patched_gpu_capacity_is_honoured_by_the_scheduler(
    kube: client.ApiClient, namespace: str, kwok_nodes: KwokNodeFactory
) -> None:
    core: Any = client.CoreV1Api(kube)
    (node,) = await kwok_nodes(1)
    # What the device plugin (via the kubelet) or our KWOK path publishes for a 2-GPU node.
    await core.patch_node_status(
        node,
        {"status": {"capacity": {"nvidia.com/gpu": "2"}, "allocatable": {"nvidia.com/gpu": "2"}}},
    )

    await core.create_namespaced_pod(
        namespace, pod_manifest("fits", node, limits={"nvidia.com/gpu": "2"})
    )
    await core.create_namespaced_pod(
        namespace, pod_manifest("too-big", node, limits={"nvidia.com/gpu": "3"})
    )

    fits = await wait_running(core, namespace, "fits")
    assert fits.spec.node_name == node

    messages = await eventually(
        lambda: scheduling_failures(core, namespace, "too-big"),
        timeout_s=60,
        what="FailedScheduling event for too-big",
    )
    assert any("Insufficient nvidia.com/gpu" in m for m in messages), messages
    too_big = await core.read_namespaced_pod("too-big", namespace)
    assert pod_phase(too_big) == "Pending"
    assert too_big.spec.node_name is None


async def _delete_quietly(coro: Any) -> None:
    try:
        await coro
    except ApiException as exc:
        if exc.status != 404:
            raise


async def test_claim_from_template_is_allocated_by_the_scheduler(
    kube: client.ApiClient, namespace: str, kwok_nodes: KwokNodeFactory
) -> None:
    core: Any = client.CoreV1Api(kube)
    resource: Any = client.ResourceV1Api(kube)
    (node,) = await kwok_nodes(1)
    # A driver and class of our own, so no other slice in the cluster can satisfy the claim.
    driver = f"{unique_name('drv', 20)}.fgo.test"
    device_class = f"{unique_name('class', 20)}.fgo.test"
    slice_name = unique_name(f"{node}-slice")
    await resource.create_device_class(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": device_class},
            "spec": {"selectors": [{"cel": {"expression": f"device.driver == '{driver}'"}}]},
        }
    )
    try:
        await resource.create_resource_slice(
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": {"name": slice_name},
                "spec": {
                    "driver": driver,
                    "nodeName": node,
                    "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                    "devices": [
                        {
                            "name": "gpu-0",
                            "attributes": {"model": {"string": "fake"}},
                            "capacity": {"memory": {"value": "80Gi"}},
                        },
                        {
                            "name": "gpu-1",
                            "attributes": {"model": {"string": "fake"}},
                            "capacity": {"memory": {"value": "80Gi"}},
                        },
                    ],
                },
            }
        )
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
                                {"name": "gpu", "exactly": {"deviceClassName": device_class}}
                            ]
                        }
                    }
                },
            },
        )
        await core.create_namespaced_pod(
            namespace,
            pod_manifest(
                "dra", node, claims=[{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]
            ),
        )

        pod = await wait_running(core, namespace, "dra")
        assert pod.spec.node_name == node
        # The resourceclaim controller generated the claim and recorded its name on the pod.
        (claim_status,) = pod.status.resource_claim_statuses
        claim = await resource.read_namespaced_resource_claim(
            claim_status.resource_claim_name, namespace
        )
        assert claim.metadata.owner_references[0].name == "dra"
        (result,) = claim.status.allocation.devices.results
        assert (result.driver, result.pool) == (driver, node)
        assert result.device in {"gpu-0", "gpu-1"}
        assert [r.name for r in claim.status.reserved_for] == ["dra"]
    finally:
        await _delete_quietly(resource.delete_resource_slice(slice_name))
        await _delete_quietly(resource.delete_device_class(device_class))


async def test_nvidia_device_classes_select_nvidia_shaped_devices(
    kube: client.ApiClient, namespace: str, kwok_nodes: KwokNodeFactory
) -> None:
    core: Any = client.CoreV1Api(kube)
    resource: Any = client.ResourceV1Api(kube)
    await core.read_namespace("gpu-operator")
    gpu_class = await resource.read_device_class("gpu.nvidia.com")
    # Kept by the apiserver only with DRAExtendedResource on.
    assert gpu_class.spec.extended_resource_name == "nvidia.com/gpu"
    (node,) = await kwok_nodes(1)
    slice_name = unique_name(f"{node}-gpu.nvidia.com")
    await resource.create_resource_slice(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": slice_name},
            "spec": {
                "driver": "gpu.nvidia.com",
                "nodeName": node,
                "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                "devices": [
                    {"name": "gpu-0", "attributes": {"type": {"string": "gpu"}}},
                    {"name": "gpu-1-mig-1g10gb-19-0", "attributes": {"type": {"string": "mig"}}},
                ],
            },
        }
    )
    try:
        for claim, device_class in (("full", "gpu.nvidia.com"), ("slice", "mig.nvidia.com")):
            await resource.create_namespaced_resource_claim(
                namespace,
                {
                    "apiVersion": "resource.k8s.io/v1",
                    "kind": "ResourceClaim",
                    "metadata": {"name": claim},
                    "spec": {
                        "devices": {
                            "requests": [
                                {"name": "dev", "exactly": {"deviceClassName": device_class}}
                            ]
                        }
                    },
                },
            )
        await core.create_namespaced_pod(
            namespace,
            pod_manifest(
                "both",
                node,
                claims=[
                    {"name": "full", "resourceClaimName": "full"},
                    {"name": "slice", "resourceClaimName": "slice"},
                ],
            ),
        )
        await wait_running(core, namespace, "both")
        allocated = {}
        for claim in ("full", "slice"):
            obj = await resource.read_namespaced_resource_claim(claim, namespace)
            allocated[claim] = obj.status.allocation.devices.results[0].device
        assert allocated == {"full": "gpu-0", "slice": "gpu-1-mig-1g10gb-19-0"}
    finally:
        await _delete_quietly(resource.delete_resource_slice(slice_name))


async def test_killed_scheduler_can_be_restarted(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str, kwok_nodes: KwokNodeFactory
) -> None:
    core: Any = client.CoreV1Api(kube)
    (node,) = await kwok_nodes(1)
    old_pid = local_cluster.pid("kube-scheduler")
    assert local_cluster.kill_component("kube-scheduler", signal.SIGKILL)
    await eventually(lambda: _not_running(local_cluster), timeout_s=10, what="scheduler to die")
    await core.create_namespaced_pod(namespace, pod_manifest("waits", node))
    pod = await core.read_namespaced_pod("waits", namespace)
    assert pod.spec.node_name is None

    await local_cluster.restart_component("kube-scheduler")
    assert local_cluster.pid("kube-scheduler") not in (None, old_pid)
    pod = await wait_running(core, namespace, "waits")
    assert pod.spec.node_name == node


async def _not_running(cluster: LocalCluster) -> bool:
    return not cluster.is_running("kube-scheduler")
