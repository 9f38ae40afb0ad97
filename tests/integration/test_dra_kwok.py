"""kwok-dra-plugin against the real control plane: slices, the real scheduler and claims.

The controller runs in-process with its topology namespace set to the test's namespace and a
per-test ``INSTANCE``, so it only sees this test's records and slices (other tests and other
controllers in the same cluster are left alone). Topology records are written here exactly as
the status-updater writes them (``fgo_common.topology`` YAML in ConfigMap ``topology-<node>``).
Pods are pinned to this test's nodes by a per-test label.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fgo_common import dradevices, draslices
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import (
    NODE_NAME_LABEL,
    NODE_TOPOLOGY_LABEL,
    TOPOLOGY_DATA_KEY,
    UNHEALTHY,
    NodeTopology,
)
from fgo_kwok_dra_plugin.controller import KwokSliceController
from fgo_kwok_dra_plugin.main import serve
from fgo_kwok_dra_plugin.settings import Settings
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.tcpproxy import TcpProxy, proxied_kubeconfig
from fgo_localcluster.testing import (
    KwokNodeFactory,
    eventually,
    unique_name,
    wait_service_ready,
)
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

H100 = "NVIDIA H100 80GB HBM3"
KWOK_TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}
TEST_LABEL = "fgo.test/dra-run"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a kubernetes-asyncio method and return the JSON body as a dict."""
    resp = await call(*args, _preload_content=False, **kwargs)
    try:
        return json.loads(await resp.read())
    finally:
        resp.release()


def topology_for(node: str, gpus: list[dict[str, Any]]) -> NodeTopology:
    config = parse_cluster_config({"nodePools": {"p": {"gpus": gpus}}})
    return build_node_topology(node, config.pools["p"], config, kwok=True)


async def write_topology(kube: client.ApiClient, namespace: str, topology: NodeTopology) -> None:
    """Create or replace ``topology-<node>`` the way the status-updater stores records."""
    core: Any = client.CoreV1Api(kube)
    body = {
        "metadata": {
            "name": f"topology-{topology.node_name}",
            "labels": {NODE_NAME_LABEL: topology.node_name, NODE_TOPOLOGY_LABEL: "true"},
        },
        "data": {TOPOLOGY_DATA_KEY: topology.to_yaml()},
    }
    try:
        await core.create_namespaced_config_map(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        await core.replace_namespaced_config_map(body["metadata"]["name"], namespace, body)


async def delete_topology(kube: client.ApiClient, namespace: str, node: str) -> None:
    await client.CoreV1Api(kube).delete_namespaced_config_map(f"topology-{node}", namespace)


async def node_slices(kube: client.ApiClient, node: str) -> list[dict[str, Any]]:
    resource: Any = client.ResourceV1Api(kube)
    body = await raw(resource.list_resource_slice, field_selector=f"spec.nodeName={node}")
    return sorted(body["items"], key=lambda s: s["metadata"]["name"])


async def wait_slice_devices(
    kube: client.ApiClient, node: str, count: int, *, timeout_s: float = 30
) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]] | None:
        slices = await node_slices(kube, node)
        devices = [d for s in slices for d in s["spec"]["devices"]]
        return slices if slices and len(devices) == count else None

    return await eventually(
        probe, timeout_s=timeout_s, what=f"{count} devices published for {node}"
    )


def gpu_request(
    name: str = "gpu", *, selector: str | None = None, count: int | None = None
) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": "gpu.nvidia.com"}
    if selector:
        exactly["selectors"] = [{"cel": {"expression": selector}}]
    if count:
        exactly["allocationMode"] = "ExactCount"
        exactly["count"] = count
    return {"name": name, "exactly": exactly}


def claim_template(name: str, *requests: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name},
        "spec": {"spec": {"devices": {"requests": list(requests) or [gpu_request()]}}},
    }


def gpu_pod(
    name: str, run: str, *, template: str | None = None, claim: str | None = None
) -> dict[str, Any]:
    """The seed README's KWOK pod, plus a selector for this test's nodes."""
    ref = (
        {"name": "gpu", "resourceClaimTemplateName": template}
        if template
        else {"name": "gpu", "resourceClaimName": claim}
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"type": "kwok", TEST_LABEL: run},
            "tolerations": [KWOK_TOLERATION],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "ubuntu:22.04",
                    "command": ["sleep", "infinity"],
                    "resources": {"claims": [{"name": "gpu"}]},
                }
            ],
            "resourceClaims": [ref],
        },
    }


class Cluster:
    """One test's view: API handles, its namespace, its node factory and its run label."""

    def __init__(self, kube: client.ApiClient, namespace: str, nodes: KwokNodeFactory, run: str):
        self.kube = kube
        self.namespace = namespace
        self.nodes = nodes
        self.run = run
        self.core: Any = client.CoreV1Api(kube)
        self.resource: Any = client.ResourceV1Api(kube)

    async def gpu_nodes(self, count: int, gpus: list[dict[str, Any]]) -> list[str]:
        names = await self.nodes(count, labels={TEST_LABEL: self.run})
        for name in names:
            await write_topology(self.kube, self.namespace, topology_for(name, gpus))
        return names

    async def create_template(self, name: str, *requests: dict[str, Any]) -> None:
        await self.resource.create_namespaced_resource_claim_template(
            self.namespace, claim_template(name, *requests)
        )

    async def create_pod(self, body: dict[str, Any]) -> None:
        await self.core.create_namespaced_pod(self.namespace, body)

    async def pod(self, name: str) -> dict[str, Any]:
        return await raw(self.core.read_namespaced_pod, name, self.namespace)

    async def wait_running(self, name: str, timeout_s: float = 60) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            pod = await self.pod(name)
            return pod if pod.get("status", {}).get("phase") == "Running" else None

        return await eventually(probe, timeout_s=timeout_s, what=f"pod {name} Running")

    async def pod_claim(self, pod_name: str) -> dict[str, Any]:
        """The ResourceClaim behind the pod's ``gpu`` entry (generated or named)."""
        pod = await self.pod(pod_name)
        statuses = pod.get("status", {}).get("resourceClaimStatuses") or []
        claim_name = next(
            (s.get("resourceClaimName") for s in statuses if s["name"] == "gpu"), None
        )
        if claim_name is None:
            claim_name = pod["spec"]["resourceClaims"][0].get("resourceClaimName")
        assert claim_name, f"pod {pod_name} has no claim yet"
        return await raw(self.resource.read_namespaced_resource_claim, claim_name, self.namespace)

    async def allocated_devices(self, pod_name: str) -> list[tuple[str, str]]:
        claim = await self.pod_claim(pod_name)
        results = claim["status"]["allocation"]["devices"]["results"]
        assert {r["driver"] for r in results} == {"gpu.nvidia.com"}
        return [(r["pool"], r["device"]) for r in results]


@pytest_asyncio.fixture
async def cluster(
    kube: client.ApiClient, namespace: str, kwok_nodes: KwokNodeFactory
) -> AsyncIterator[Cluster]:
    yield Cluster(kube, namespace, kwok_nodes, unique_name("run", 20))


@contextlib.asynccontextmanager
async def running_controller(
    local_cluster: LocalCluster, namespace: str, instance: str
) -> AsyncIterator[KwokSliceController]:
    settings = load_settings(
        Settings,
        {
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "INSTANCE": instance,
            "KUBECONFIG": str(local_cluster.kubeconfig),
            "RESYNC_SECONDS": "3",
        },
    )
    from fgo_common.kube.client import api_client

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
            yield controller
        finally:
            ctx.stop.set()
            async with asyncio.timeout(10):
                await task


@pytest_asyncio.fixture
async def controller(
    local_cluster: LocalCluster, cluster: Cluster
) -> AsyncIterator[KwokSliceController]:
    async with running_controller(local_cluster, cluster.namespace, cluster.run) as running:
        yield running


# --------------------------------------------------------------------------------------------
# slices
# --------------------------------------------------------------------------------------------


async def test_slice_matches_the_builder_and_is_owned_by_the_node(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "h100", "count": 8}])
    (stored,) = await wait_slice_devices(cluster.kube, node, 8)
    assert stored["metadata"]["name"] == f"kwok-{node}-gpu"
    node_obj = await raw(cluster.core.read_node, node)
    assert stored["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "name": node,
            "uid": node_obj["metadata"]["uid"],
            "controller": True,
        }
    ]
    assert stored["spec"]["pool"] == {"name": node, "generation": 1, "resourceSliceCount": 1}
    assert stored["spec"]["driver"] == "gpu.nvidia.com"
    expected = [
        d.device
        for d in dradevices.node_devices(topology_for(node, [{"type": "h100", "count": 8}]))
    ]
    assert [d["name"] for d in stored["spec"]["devices"]] == [d["name"] for d in expected]
    # The API server stores what the builder produced, attribute for attribute.
    assert stored["spec"]["devices"][0]["attributes"] == expected[0]["attributes"]
    assert stored["spec"]["devices"][0]["capacity"] == expected[0]["capacity"]


async def test_kubectl_shows_the_kwok_slice(
    local_cluster: LocalCluster, cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 2}])
    await wait_slice_devices(cluster.kube, node, 2)
    proc = await asyncio.create_subprocess_exec(
        str(local_cluster.bin_dir / "kubectl"),
        f"--kubeconfig={local_cluster.kubeconfig}",
        "get",
        "resourceslices",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = [line for line in out.decode().splitlines() if "kwok" in line and node in line]
    assert len(lines) == 1, out.decode()
    assert "gpu.nvidia.com" in lines[0]


async def test_topology_changes_update_the_slice(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 2}])
    await wait_slice_devices(cluster.kube, node, 2)

    bigger = topology_for(node, [{"type": "Tesla K80", "count": 4}])
    bigger.generation = 2
    await write_topology(cluster.kube, cluster.namespace, bigger)
    (stored,) = await wait_slice_devices(cluster.kube, node, 4)
    assert stored["spec"]["pool"]["generation"] == 2

    bigger.gpus[3].health = UNHEALTHY
    bigger.gpus[3].faults = [{"xid": 79}]
    bigger.generation = 3
    await write_topology(cluster.kube, cluster.namespace, bigger)

    async def tainted() -> dict[str, Any] | None:
        (current,) = await node_slices(cluster.kube, node)
        taints = current["spec"]["devices"][3].get("taints") or []
        return current if taints else None

    stored = await eventually(tainted, timeout_s=30, what="taint on the unhealthy GPU")
    (taint,) = stored["spec"]["devices"][3]["taints"]
    assert (taint["key"], taint["value"], taint["effect"]) == (
        "gpu.nvidia.com/xid",
        "79",
        "NoExecute",  # fallen off the bus: running workloads cannot continue (docs/faults.md)
    )
    assert stored["spec"]["pool"]["generation"] == 3
    assert stored["metadata"]["annotations"][draslices.TOPOLOGY_GENERATION_ANNOTATION] == "3"


async def test_no_writes_when_nothing_changed(
    local_cluster: LocalCluster, cluster: Cluster
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 2}])
    async with running_controller(local_cluster, cluster.namespace, cluster.run) as first:
        (stored,) = await wait_slice_devices(cluster.kube, node, 2)
        await asyncio.sleep(4)  # at least one periodic resync
        assert first.metrics.slice_writes.labels("apply")._value.get() == 1
    # A restarted controller finds its slice up to date.
    async with running_controller(local_cluster, cluster.namespace, cluster.run) as second:
        await asyncio.sleep(1)
        assert second.metrics.slice_writes.labels("apply")._value.get() == 0
    (again,) = await node_slices(cluster.kube, node)
    assert again["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


async def test_slices_go_when_the_node_leaves_its_pool_or_is_deleted(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    left, deleted = await cluster.gpu_nodes(2, [{"type": "Tesla K80", "count": 1}])
    await wait_slice_devices(cluster.kube, left, 1)
    await wait_slice_devices(cluster.kube, deleted, 1)

    await delete_topology(cluster.kube, cluster.namespace, left)
    await cluster.core.delete_node(deleted)

    for node in (left, deleted):
        await eventually(
            lambda n=node: _none_left(cluster.kube, n),
            timeout_s=30,
            what=f"slices of {node} deleted",
        )


async def _none_left(kube: client.ApiClient, node: str) -> bool:
    return not await node_slices(kube, node)


async def test_manually_deleted_slice_comes_back(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 1}])
    (stored,) = await wait_slice_devices(cluster.kube, node, 1)
    await cluster.resource.delete_resource_slice(stored["metadata"]["name"])
    await eventually(
        lambda: _recreated(cluster.kube, node, stored["metadata"]["uid"]),
        timeout_s=30,
        what="slice re-created",
    )


async def _recreated(kube: client.ApiClient, node: str, old_uid: str) -> bool:
    slices = await node_slices(kube, node)
    return bool(slices) and slices[0]["metadata"]["uid"] != old_uid


# --------------------------------------------------------------------------------------------
# the real scheduler allocating our devices
# --------------------------------------------------------------------------------------------


async def test_seed_readme_template_and_pod_run_on_a_kwok_node(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 2}])
    await wait_slice_devices(cluster.kube, node, 2)
    await cluster.create_template("gpu-claim")  # exactly the seed's template
    await cluster.create_pod(gpu_pod("kwok-gpu-pod", cluster.run, template="gpu-claim"))
    pod = await cluster.wait_running("kwok-gpu-pod")
    assert pod["spec"]["nodeName"] == node
    assert await cluster.allocated_devices("kwok-gpu-pod") in ([(node, "gpu-0")], [(node, "gpu-1")])


async def test_cel_on_product_name_and_on_memory_capacity(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (k80_node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 2}])
    (h100_node,) = await cluster.gpu_nodes(1, [{"type": "h100", "count": 2}])
    await wait_slice_devices(cluster.kube, k80_node, 2)
    await wait_slice_devices(cluster.kube, h100_node, 2)

    by_product = f"device.attributes['gpu.nvidia.com'].productName == '{H100}'"
    by_memory = "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0"
    small = "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('16Gi')) < 0"
    by_version = (
        "device.attributes['gpu.nvidia.com'].cudaComputeCapability.isLessThan(semver('5.0.0'))"
    )
    cases = {
        "product": (by_product, h100_node),
        "memory": (by_memory, h100_node),
        "small": (small, k80_node),
        "version": (by_version, k80_node),
    }
    for name, (selector, _) in cases.items():
        await cluster.create_template(name, gpu_request(selector=selector))
        await cluster.create_pod(gpu_pod(f"pod-{name}", cluster.run, template=name))
    for name, (_, expected) in cases.items():
        pod = await cluster.wait_running(f"pod-{name}")
        assert pod["spec"]["nodeName"] == expected, name


async def test_count_two_gets_two_gpus_of_one_node(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 2}])
    await wait_slice_devices(cluster.kube, node, 2)
    await cluster.create_template("two", gpu_request(count=2))
    await cluster.create_pod(gpu_pod("two-gpus", cluster.run, template="two"))
    await cluster.wait_running("two-gpus")
    assert sorted(await cluster.allocated_devices("two-gpus")) == [(node, "gpu-0"), (node, "gpu-1")]


async def test_one_claim_shared_by_two_pods(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 2}])
    await wait_slice_devices(cluster.kube, node, 2)
    await cluster.resource.create_namespaced_resource_claim(
        cluster.namespace,
        {"metadata": {"name": "shared"}, "spec": {"devices": {"requests": [gpu_request()]}}},
    )
    for name in ("share-a", "share-b"):
        await cluster.create_pod(gpu_pod(name, cluster.run, claim="shared"))
    for name in ("share-a", "share-b"):
        await cluster.wait_running(name)
    claim = await raw(cluster.resource.read_namespaced_resource_claim, "shared", cluster.namespace)
    assert len(claim["status"]["allocation"]["devices"]["results"]) == 1
    assert sorted(r["name"] for r in claim["status"]["reservedFor"]) == ["share-a", "share-b"]


async def test_unsatisfiable_claim_stays_pending_with_the_schedulers_reason(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 2}])
    await wait_slice_devices(cluster.kube, node, 2)
    await cluster.create_template(
        "b200",
        gpu_request(selector="device.attributes['gpu.nvidia.com'].productName == 'NVIDIA B200'"),
    )
    await cluster.create_pod(gpu_pod("never", cluster.run, template="b200"))

    async def unschedulable() -> dict[str, Any] | None:
        pod = await cluster.pod("never")
        for condition in pod.get("status", {}).get("conditions") or []:
            if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return condition
        return None

    condition = await eventually(
        unschedulable, timeout_s=60, what="PodScheduled=False/Unschedulable"
    )
    assert condition["status"] == "False"
    assert "cannot allocate all claims" in condition["message"], condition["message"]
    await asyncio.sleep(2)
    assert (await cluster.pod("never"))["status"]["phase"] == "Pending"


async def test_deleting_the_pod_frees_the_device_for_the_next_claim(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 1}])
    await wait_slice_devices(cluster.kube, node, 1)
    await cluster.create_template("one")
    await cluster.create_pod(gpu_pod("first", cluster.run, template="one"))
    await cluster.wait_running("first")
    await cluster.create_pod(gpu_pod("second", cluster.run, template="one"))
    await asyncio.sleep(3)
    assert (await cluster.pod("second"))["status"]["phase"] == "Pending"

    await cluster.core.delete_namespaced_pod("first", cluster.namespace, grace_period_seconds=0)
    pod = await cluster.wait_running("second", timeout_s=90)
    assert pod["spec"]["nodeName"] == node
    assert await cluster.allocated_devices("second") == [(node, "gpu-0")]


async def test_plain_nvidia_gpu_limit_is_served_from_our_slices(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    """DeviceClass gpu.nvidia.com maps the extended resource nvidia.com/gpu (DRAExtendedResource):
    a pod written for the device plugin lands on a node that only has DRA devices."""
    (node,) = await cluster.gpu_nodes(1, [{"type": "Tesla K80", "count": 2}])
    await wait_slice_devices(cluster.kube, node, 2)
    body = gpu_pod("extended", cluster.run, template="unused")
    del body["spec"]["resourceClaims"]
    body["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    await cluster.create_pod(body)
    pod = await cluster.wait_running("extended")
    assert pod["spec"]["nodeName"] == node
    (status,) = pod["status"]["extendedResourceClaimStatus"]["requestMappings"]
    assert status["resourceName"] == "nvidia.com/gpu"
    claim_name = pod["status"]["extendedResourceClaimStatus"]["resourceClaimName"]
    claim = await raw(
        cluster.resource.read_namespaced_resource_claim, claim_name, cluster.namespace
    )
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (result["driver"], result["pool"]) == ("gpu.nvidia.com", node)


async def test_a_pool_larger_than_one_slice_is_split_and_fully_usable(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    # 20 H100s in MIG mode with seven 1g.10gb each: 140 devices, more than one slice may hold.
    (node,) = await cluster.nodes(1, labels={TEST_LABEL: cluster.run})
    topology = with_mig(
        topology_for(node, [{"type": "h100", "count": 20}]), [("1g.10gb", i) for i in range(7)]
    )
    await write_topology(cluster.kube, cluster.namespace, topology)
    slices = await wait_slice_devices(cluster.kube, node, 140)
    assert [len(s["spec"]["devices"]) for s in slices] == [128, 12]
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {2}
    # A device that only the second slice carries is allocatable: the pool is complete.
    last = slices[1]["spec"]["devices"][-1]
    uuid = last["attributes"]["uuid"]["string"]
    await cluster.create_template(
        "last",
        {
            "name": "gpu",
            "exactly": {
                "deviceClassName": "mig.nvidia.com",
                "selectors": [
                    {"cel": {"expression": f"device.attributes['gpu.nvidia.com'].uuid == '{uuid}'"}}
                ],
            },
        },
    )
    await cluster.create_pod(gpu_pod("last-mig", cluster.run, template="last"))
    await cluster.wait_running("last-mig")
    assert await cluster.allocated_devices("last-mig") == [(node, last["name"])]


def with_mig(topology: NodeTopology, layout: list[tuple[str, int]]) -> NodeTopology:
    """Every GPU of ``topology`` in MIG mode with ``layout`` ((profile, placement start), ...)."""
    from fgo_common.identity import mig_uuid
    from fgo_common.profiles import BUILTIN_CATALOG
    from fgo_common.topology import MigDevice

    for gpu in topology.gpus:
        gpu.mig_enabled = True
        for gi, (profile, start) in enumerate(layout, start=1):
            table = BUILTIN_CATALOG.get(gpu.profile).mig_profile(profile)
            gpu.mig_devices.append(
                MigDevice(
                    uuid=mig_uuid(gpu.id, gi, 0),
                    profile=profile,
                    gi_id=gi,
                    ci_id=0,
                    gi_profile_id=table.gi_profile_id,
                    ci_profile_id=table.ci_profile_id,
                    placement_start=start,
                    placement_size=table.memory_slices,
                    memory_mib=table.memory_mib,
                    sm_count=table.sm_count,
                )
            )
    return topology


async def test_mig_devices_are_allocated_through_the_mig_device_class(
    cluster: Cluster, controller: KwokSliceController
) -> None:
    (node,) = await cluster.nodes(1, labels={TEST_LABEL: cluster.run})
    topology = with_mig(
        topology_for(node, [{"type": "h100", "count": 1}]), [("3g.40gb", 0), ("3g.40gb", 4)]
    )
    await write_topology(cluster.kube, cluster.namespace, topology)
    slices = await wait_slice_devices(cluster.kube, node, 2)
    assert [d["name"] for d in slices[0]["spec"]["devices"]] == [
        "gpu-0-mig-3g40gb-9-0",
        "gpu-0-mig-3g40gb-9-4",
    ]
    mig_request = {
        "name": "gpu",
        "exactly": {
            "deviceClassName": "mig.nvidia.com",
            "selectors": [
                {"cel": {"expression": "device.attributes['gpu.nvidia.com'].profile == '3g.40gb'"}}
            ],
        },
    }
    await cluster.create_template("mig", mig_request)
    for name in ("mig-a", "mig-b"):
        await cluster.create_pod(gpu_pod(name, cluster.run, template="mig"))
    devices = set()
    for name in ("mig-a", "mig-b"):
        await cluster.wait_running(name)
        devices.update(await cluster.allocated_devices(name))
    assert devices == {(node, "gpu-0-mig-3g40gb-9-0"), (node, "gpu-0-mig-3g40gb-9-4")}
    # The full-GPU class does not see a GPU in MIG mode.
    await cluster.create_template("full")
    await cluster.create_pod(gpu_pod("full-gpu", cluster.run, template="full"))
    await asyncio.sleep(3)
    assert (await cluster.pod("full-gpu"))["status"]["phase"] == "Pending"


# --------------------------------------------------------------------------------------------
# two replicas, leader election: each replica is the real service (``serve``) with its own
# client through its own TCP proxy. The standby follows the watches (Ready, caches warm) and
# writes nothing; when the leader is cut off the standby takes the Lease and publishes what
# changed meanwhile; the old leader, reconnected, stays a standby and writes nothing more.
# --------------------------------------------------------------------------------------------

LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.3
LEASE = "fgo-kwok-dra-plugin"


@dataclass
class Replica:
    name: str
    proxy: TcpProxy
    ctx: ServiceContext
    task: asyncio.Task[int]

    def sample(self, metric: str, **labels: str) -> float:
        return self.ctx.registry.get_sample_value(metric, labels) or 0.0

    @property
    def leading(self) -> bool:
        return self.sample("fgo_leader", lease=LEASE) == 1.0

    @property
    def writes(self) -> float:
        return sum(
            self.sample("fgo_kwok_dra_slice_writes_total", operation=op)
            for op in ("apply", "delete")
        )


@contextlib.asynccontextmanager
async def replica(
    local_cluster: LocalCluster, tmp_path: Path, namespace: str, run: str, name: str
) -> AsyncIterator[Replica]:
    proxy = TcpProxy("127.0.0.1", local_cluster.ports.apiserver)
    await proxy.start()
    kubeconfig = proxied_kubeconfig(local_cluster.kubeconfig, tmp_path / f"{name}.yaml", proxy.port)
    settings = load_settings(
        Settings,
        {
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "INSTANCE": run,
            "KUBECONFIG": str(kubeconfig),
            "HEALTH_PORT": "0",
            "LEADER_ELECTION": "true",
            "LEASE_NAMESPACE": namespace,
            "LEASE_IDENTITY": f"replica-{name}",
            "LEASE_DURATION_SECONDS": str(LEASE_S),
            "RENEW_DEADLINE_SECONDS": str(RENEW_S),
            "RETRY_PERIOD_SECONDS": str(RETRY_S),
        },
    )
    ctx = ServiceContext(name=f"kwok-dra-plugin-{name}")
    task = asyncio.create_task(serve(settings, ctx), name=name)
    try:
        await wait_service_ready(
            ctx.readiness, task, condition="synced", what=f"replica {name} Ready"
        )
        yield Replica(name, proxy, ctx, task)
    finally:
        ctx.stop.set()
        async with asyncio.timeout(30):
            await task
        await proxy.stop()


async def _has_devices(kube: client.ApiClient, node: str, count: int) -> bool:
    return sum(len(s["spec"]["devices"]) for s in await node_slices(kube, node)) == count


async def test_standby_takes_over_from_a_partitioned_leader_which_then_writes_nothing(
    local_cluster: LocalCluster,
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> None:
    run = unique_name("ha", 20)
    nodes = await kwok_nodes(2)
    for node in nodes:
        await write_topology(kube, namespace, topology_for(node, [{"type": "h100", "count": 2}]))

    async with replica(local_cluster, tmp_path, namespace, run, "a") as a:
        for node in nodes:
            await eventually(
                lambda n=node: _has_devices(kube, n, 2), timeout_s=30, what=f"slices of {node}"
            )
        assert a.leading
        async with replica(local_cluster, tmp_path, namespace, run, "b") as b:
            # Ready and warm, but a standby: it publishes nothing.
            assert not b.leading
            assert b.ctx.readiness.ready
            await asyncio.sleep(3 * RETRY_S)
            assert b.writes == 0

            cut = time.monotonic()
            writes_at_cut = a.writes
            a.proxy.partition(LEASE_S * 3)
            await write_topology(
                kube, namespace, topology_for(nodes[0], [{"type": "h100", "count": 3}])
            )
            await eventually(
                lambda: _has_devices(kube, nodes[0], 3),
                timeout_s=LEASE_S + 20,
                what="the new leader publishes the change made during the partition",
            )
            print(f"takeover + publish after the partition: {time.monotonic() - cut:.2f} s")
            assert b.leading
            assert b.writes >= 1

            # The partition heals; the old leader reads the Lease again and stays a standby.
            await eventually(
                lambda: asyncio.sleep(0, a.proxy.refused > 0 and not a.leading),
                timeout_s=RENEW_S + 5,
                what="the old leader stepping down",
            )
            a.proxy.heal()
            await write_topology(
                kube, namespace, topology_for(nodes[1], [{"type": "h100", "count": 1}])
            )
            await eventually(
                lambda: _has_devices(kube, nodes[1], 1),
                timeout_s=20,
                what="the new leader publishes a change made after the heal",
            )
            await asyncio.sleep(LEASE_S)
            assert not a.leading
            assert a.writes == writes_at_cut, "the old leader wrote after it was cut off"
            assert a.ctx.readiness.ready  # a standby stays Ready
