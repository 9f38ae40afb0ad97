"""The reference's ComputeDomain e2e scenarios (upstream reference §6.2) against the chart
installed with computeDomainDraPlugin.enabled: the compute-domain-controller runs under its
ServiceAccount (the RBAC guard fails the test on any refused call), KWOK nodes get channel
slices, the real scheduler allocates channel claims."""

from __future__ import annotations

from typing import Any

from e2elib import create_pod, delete_pods, gpu_pod, raw, wait_running
from fgo_common import computedomain as cdn
from fgo_localcluster.testing import KwokNodeFactory, eventually, unique_name
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException


async def _create(kube: client.ApiClient, namespace: str, name: str, **channel: Any) -> None:
    body = {
        "apiVersion": cdn.API_VERSION,
        "kind": cdn.KIND,
        "metadata": {"name": name},
        "spec": {"numNodes": 1, "channel": {"resourceClaimTemplate": {"name": name}, **channel}},
    }
    custom: Any = client.CustomObjectsApi(kube)
    await custom.create_namespaced_custom_object(
        cdn.GROUP, cdn.VERSION, namespace, cdn.PLURAL, body
    )


async def _template(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    resource: Any = client.ResourceV1Api(kube)
    try:
        return await raw(resource.read_namespaced_resource_claim_template, name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def _delete_and_wait(kube: client.ApiClient, namespace: str, name: str) -> None:
    custom: Any = client.CustomObjectsApi(kube)
    await custom.delete_namespaced_custom_object(
        cdn.GROUP, cdn.VERSION, namespace, cdn.PLURAL, name
    )

    async def gone() -> bool:
        try:
            await raw(custom.get_namespaced_custom_object, cdn.GROUP, cdn.VERSION, namespace,
                      cdn.PLURAL, name)  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return await _template(kube, namespace, name) is None
            raise
        return False

    await eventually(gone, timeout_s=60, what=f"ComputeDomain {name} and its template deleted")


async def test_compute_domain_on_a_kwok_node(
    kube: client.ApiClient, kwok_nodes: KwokNodeFactory, workload_namespace: str
) -> None:
    (node_name,) = await kwok_nodes(1)
    resource: Any = client.ResourceV1Api(kube)

    # KWOK: slice kwok-<node>-compute-domain-channel, device channel-0, pool = node.
    async def channel_slice() -> dict[str, Any] | None:
        got = await raw(resource.list_resource_slice, field_selector=f"spec.nodeName={node_name}")
        found = [s for s in got["items"] if s["spec"]["driver"] == cdn.DRIVER]
        return found[0] if found else None

    item = await eventually(channel_slice, timeout_s=60, what=f"channel slice of {node_name}")
    assert item["metadata"]["name"] == f"kwok-{node_name}-compute-domain-channel"
    assert item["spec"]["pool"]["name"] == node_name
    assert [d["name"] for d in item["spec"]["devices"]] == ["channel-0"]

    # CD -> RCT with the labels and one request `channel`, ExactCount 1.
    name = unique_name("cd", 20)
    await _create(kube, workload_namespace, name)
    template = await eventually(
        lambda: _template(kube, workload_namespace, name), timeout_s=60, what="workload template"
    )
    assert template["metadata"]["labels"] == {
        "resource.nvidia.com/computeDomain": name,
        "resource.nvidia.com/computeDomainTarget": "workload",
    }
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert request["name"] == "channel"
    assert request["exactly"]["allocationMode"] == "ExactCount"
    assert request["exactly"]["count"] == 1

    # A KWOK pod with the CD's template: claim allocated, pod Running, CD Ready with the node.
    pod_name = unique_name("cd-pod", 30)
    body = gpu_pod(pod_name, node_name, claim_template=name)
    await create_pod(kube, workload_namespace, body)
    await wait_running(kube, workload_namespace, pod_name)
    custom: Any = client.CustomObjectsApi(kube)

    async def ready() -> dict[str, Any] | None:
        cd = await raw(custom.get_namespaced_custom_object, cdn.GROUP, cdn.VERSION,
                       workload_namespace, cdn.PLURAL, name)  # fmt: skip
        status = cd.get("status") or {}
        return cd if status.get("status") == "Ready" else None

    cd = await eventually(ready, timeout_s=60, what=f"ComputeDomain {name} Ready")
    assert [n["name"] for n in cd["status"]["nodes"]] == [node_name]
    await delete_pods(kube, workload_namespace, [pod_name])

    # CD deletion removes the RCT.
    await _delete_and_wait(kube, workload_namespace, name)


async def test_allocation_mode_all_reaches_the_template(
    kube: client.ApiClient, workload_namespace: str
) -> None:
    name = unique_name("cd-all", 20)
    await _create(kube, workload_namespace, name, allocationMode="All")
    template = await eventually(
        lambda: _template(kube, workload_namespace, name), timeout_s=60, what="workload template"
    )
    (config,) = template["spec"]["spec"]["devices"]["config"]
    assert config["opaque"]["driver"] == cdn.DRIVER
    assert config["opaque"]["parameters"]["kind"] == "ComputeDomainChannelConfig"
    assert config["opaque"]["parameters"]["allocationMode"] == "All"
    await _delete_and_wait(kube, workload_namespace, name)
