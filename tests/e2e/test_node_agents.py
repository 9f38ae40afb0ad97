"""The chart's node agents (DaemonSets) under their own ServiceAccounts, with a kubelet peer.

The DaemonSets select real GPU nodes, which the local control plane does not have, so nothing
runs them by itself. Here the test plays the kubelet of one KWOK node: it takes the DaemonSet's
pod as the chart renders it (``LocalOperator.node_workloads``: the manifest's environment,
``NODE_NAME`` of that node, a TokenRequest token of the DaemonSet's ServiceAccount), moves only
the kubelet's directories (plugin registry, plugins, CDI, device-plugins, pod-resources, node
state) into a temp dir, runs it as a local process and drives it through the real kubelet wire
protocols (``DraKubeletPeer``, ``DevicePluginKubeletPeer``, ``PodResourcesKubeletPeer``). Claims
and pods are scheduled by the real scheduler. A refused API call fails the test: the conftest
guard (apiserver counters) plus a scan of the agents' own logs.

The agents run in a second release (namespace ``fgo-e2e-agents``, own pool label key): in the
session release the kwok-dra-plugin publishes every KWOK node's slices, and a second publisher
for the same node's pool would make the scheduler refuse the pool. The second release has only
what a node agent needs (status-updater for the record, the two DaemonSets); the session release
still provides the DeviceClasses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CHART
from e2elib import (
    GPU,
    ForbiddenGuard,
    LocalTarget,
    Target,
    create_pod,
    delete_pods,
    gpu_pod,
    holders,
    pod,
    raw,
    record,
)
from fgo_common.annotations import ALLOCATED_DEVICES
from fgo_localcluster import nodes
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.operator import LocalOperator, LocalWorkload, forbidden_lines
from fgo_localcluster.testing import KwokNodeFactory, eventually, unique_name
from fgo_testkit.kubelet import DevicePluginKubeletPeer, DraKubeletPeer, claim
from fgo_testkit.kubelet.podresources import PodResourcesKubeletPeer
from kubernetes_asyncio import client

RELEASE = "fgo-e2e-agents"
NAMESPACE = "fgo-e2e-agents"
POOL_KEY = "e2e.fake-gpu-operator/agent-pool"
POOL = "agents"
GPUS = 2
SEED = 11  # not the default, so the test sees the chart's value arrive in containers
DRIVER = "gpu.nvidia.com"
DRA_PLUGIN = "fgo-dra-plugin"
DEVICE_PLUGIN = "fgo-device-plugin"
STATUS_UPDATER = "fgo-status-updater"
AGENT_VALUES: dict[str, Any] = {
    "topology": {
        "nodePoolLabelKey": POOL_KEY,
        "nodePools": {POOL: {"gpus": [{"type": "Tesla K80", "count": GPUS}]}},
    },
    "telemetrySeed": SEED,
    "devicePlugin": {"enabled": True},
    "draPlugin": {"enabled": True},
    "kwokGpuDevicePlugin": {"enabled": False},
    "kwokDraPlugin": {"enabled": False},
    "statusExporter": {"enabled": False},
    # Cluster-scoped and owned by the session release.
    "deviceClasses": {"enabled": False},
    "runtimeClass": {"enabled": False},
}


@dataclass
class Agents:
    operator: LocalOperator
    kubeconfig: Path


@pytest.fixture(scope="session")
def agents(target: Target, request: pytest.FixtureRequest) -> Iterator[Agents]:
    """The second release installed, its status-updater running (see module docstring).

    Session-scoped like the main release: its namespace is deleted after the last test, since
    a terminating namespace makes the controller-manager's kube-root-ca.crt publisher collect
    403s (creates refused in a terminating namespace), which the guard would pin on a test."""
    if not isinstance(target, LocalTarget):
        pytest.skip("on kind the DaemonSets run as pods; this plays the kubelet locally")
    cluster: LocalCluster = request.getfixturevalue("local_cluster")
    operator = LocalOperator.for_cluster(cluster, CHART, namespace=NAMESPACE, release=RELEASE)
    values = operator.dir / "agent-values.yaml"
    values.parent.mkdir(parents=True, exist_ok=True)
    values.write_text(yaml.safe_dump(AGENT_VALUES))

    async def up() -> None:
        workloads = await operator.install([values])
        assert [w.name for w in workloads] == [STATUS_UPDATER]
        await operator.start(workloads)
        await operator.wait_ready([STATUS_UPDATER], timeout_s=120)

    asyncio.run(up())
    try:
        yield Agents(operator, cluster.kubeconfig)
    finally:
        asyncio.run(operator.uninstall())
        left = target.kubectl(
            "get", "all,configmaps,serviceaccounts,roles,rolebindings,clusterroles,"
            "clusterrolebindings", "-A", "-l", f"app.kubernetes.io/instance={RELEASE}",
            "-o", "name",
        ).split()  # fmt: skip
        assert not left, f"left behind after helm uninstall: {left}"
        target.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.fixture
def kubelet_dir() -> Iterator[Path]:
    """The node's kubelet directories (short: unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fgo-e2e-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def agent_node(
    kube: client.ApiClient, extra_capacity: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """A Ready KWOK node in the agents' pool only (no label of the session release's pool,
    so the session's status-updater leaves it alone); deleted afterwards, with its slices."""
    name = unique_name("e2e-agent", 30)
    body = nodes.kwok_node(name, labels={POOL_KEY: POOL}, extra_capacity=extra_capacity)
    del body["metadata"]["labels"][nodes.POOL_LABEL]
    await nodes.create_nodes(kube, [body])
    try:
        await KwokNodeFactory(kube, name).wait_ready([name])
        yield name
    finally:
        await nodes.delete_nodes(kube, [name])

        async def no_slices() -> bool:
            resource: Any = client.ResourceV1Api(kube)
            body = await raw(resource.list_resource_slice, field_selector=f"spec.nodeName={name}")
            return not body["items"]

        await eventually(no_slices, timeout_s=60, what=f"slices of {name} garbage-collected")


async def start_agent(
    agents: Agents, node_name: str, daemonset: str, kubelet_env: dict[str, str]
) -> LocalWorkload:
    (workload,) = [
        w
        for w in await agents.operator.node_workloads(node_name)
        if w.name == f"{daemonset}-{node_name}"
    ]
    assert workload.service_account == daemonset
    assert workload.env["NODE_NAME"] == node_name
    await agents.operator.start([workload], extra_env={workload.name: kubelet_env})
    return workload


def no_refusals(agents: Agents, *names: str) -> None:
    for name in names:
        lines = forbidden_lines(agents.operator.log(name))
        assert not lines, f"{name} was refused API calls:\n" + "\n".join(lines[:10])


async def node_record_gpus(kube: client.ApiClient, node_name: str) -> list[str]:
    async def probe() -> list[str] | None:
        topology = await record(kube, NAMESPACE, node_name)
        return [g.id for g in topology.gpus] if topology else None

    return await eventually(probe, timeout_s=60, what=f"record of {node_name} in {NAMESPACE}")


async def allocated_claim(
    kube: client.ApiClient, namespace: str, name: str, node_name: str
) -> dict[str, Any]:
    """A ResourceClaim + a pod using it on ``node_name``, once the scheduler allocated it."""
    resource: Any = client.ResourceV1Api(kube)
    await resource.create_namespaced_resource_claim(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}
            },
        },
    )
    await create_pod(kube, namespace, gpu_pod(name, node_name, claim=name))

    async def allocated() -> dict[str, Any] | None:
        body = await raw(resource.read_namespaced_resource_claim, name, namespace)
        return body if body.get("status", {}).get("allocation") else None

    body = await eventually(allocated, timeout_s=90, what=f"claim {namespace}/{name} allocated")
    assert (await pod(kube, namespace, name))["spec"]["nodeName"] == node_name
    return body


async def can_i(target: Target, verb: str, resource: str, service_account: str) -> bool:
    out = await asyncio.to_thread(
        target.kubectl, "auth", "can-i", verb, resource, "-A",
        f"--as=system:serviceaccount:{NAMESPACE}:{service_account}", check=False,
    )  # fmt: skip
    return bool(out.strip() == "yes")


async def test_dra_plugin_prepares_a_scheduled_claim_under_its_service_account(
    kube: client.ApiClient,
    target: Target,
    agents: Agents,
    workload_namespace: str,
    kubelet_dir: Path,
    forbidden_guard: ForbiddenGuard,
) -> None:
    root = kubelet_dir
    async with agent_node(kube) as node_name:
        gpu_ids = await node_record_gpus(kube, node_name)
        registry = root / "registry"
        async with DraKubeletPeer(registry, retry_interval_seconds=0.2) as kubelet:
            workload = await start_agent(
                agents,
                node_name,
                DRA_PLUGIN,
                {
                    "KUBELET_REGISTRAR_DIRECTORY_PATH": str(registry),
                    "KUBELET_PLUGINS_DIRECTORY_PATH": str(root / "plugins"),
                    "CDI_ROOT": str(root / "cdi"),
                    "STATE_DIR": str(root / "state"),
                },
            )
            try:
                await kubelet.wait_for_plugin(DRIVER, timeout_seconds=60)
                await agents.operator.wait_ready([workload.name], timeout_s=60)

                # Its own slices, published with its token (create/patch resourceslices).
                async def published() -> list[dict[str, Any]] | None:
                    resource: Any = client.ResourceV1Api(kube)
                    body = await raw(
                        resource.list_resource_slice, field_selector=f"spec.nodeName={node_name}"
                    )
                    devices = [d for s in body["items"] for d in s["spec"].get("devices", [])]
                    return body["items"] if len(devices) == GPUS else None

                slices = await eventually(published, timeout_s=60, what="the node's slices")
                assert {s["spec"]["driver"] for s in slices} == {DRIVER}

                # The real scheduler allocates a claim of a pod on that node; the kubelet
                # prepares it (the plugin reads the claim: resourceclaims get).
                name = unique_name("agent-claim", 30)
                body = await allocated_claim(kube, workload_namespace, name, node_name)
                ref = claim(body["metadata"]["uid"], name, workload_namespace)
                result = (await kubelet.prepare([ref], DRIVER)).claims[ref.uid]
                assert result.error == ""
                (device,) = result.devices
                assert device.pool_name == node_name
                (cdi_id,) = device.cdi_device_ids
                (spec_file,) = (root / "cdi").glob(f"*{ref.uid}*.json")
                spec = json.loads(spec_file.read_text())
                assert cdi_id.endswith("=" + spec["devices"][0]["name"])
                # What the chart configures reaches the container (seed, nvidia-smi bundle).
                common = spec["containerEdits"]
                assert f"FGO_SEED={SEED}" in common["env"]
                mounts = {m["containerPath"]: m["hostPath"] for m in common["mounts"]}
                assert workload.env["NVIDIA_SMI_BUNDLE_HOST_DIR"] in mounts.values()
                assert workload.env["NVIDIA_SMI_HOST_PATH"] in mounts.values()
                device_env = dict(
                    e.split("=", 1) for e in spec["devices"][0]["containerEdits"]["env"]
                )
                uuid = device_env.pop("NVIDIA_VISIBLE_DEVICES")
                assert uuid in gpu_ids
                # The reference's variable for the same device, nothing else (issue 18).
                dra_name = device.device_name
                assert device_env == {f"GPU_DEVICE_{dra_name.replace('-', '_')}": dra_name}

                # The status-updater of the agents' release records the claim as the holder.
                async def held() -> dict[str, list[str]] | None:
                    topology = await record(kube, NAMESPACE, node_name)
                    h = holders(topology) if topology else {}
                    return h if h.get(uuid) == [f"{workload_namespace}/{name}"] else None

                await eventually(held, timeout_s=60, what=f"record: {name} holds {uuid}")

                await delete_pods(kube, workload_namespace, [name])
                unprepared = (await kubelet.unprepare([ref], DRIVER)).claims[ref.uid]
                assert unprepared.error == ""
                assert not list((root / "cdi").glob(f"*{ref.uid}*.json"))
                no_refusals(agents, workload.name, STATUS_UPDATER)

                await _guard_catches_a_missing_rule(
                    kube, target, agents, workload, kubelet, workload_namespace, forbidden_guard
                )
            finally:
                await agents.operator.stop_one(workload.name)


async def _guard_catches_a_missing_rule(
    kube: client.ApiClient,
    target: Target,
    agents: Agents,
    workload: LocalWorkload,
    kubelet: DraKubeletPeer,
    namespace: str,
    guard: ForbiddenGuard,
) -> None:
    """The same prepare with `resourceclaims get` taken out of the plugin's ClusterRole: the
    prepare fails and both the apiserver counters and the log scan report the refusal."""
    role_name = f"{RELEASE}-fgo-{DRA_PLUGIN.removeprefix('fgo-')}"
    rbac: Any = client.RbacAuthorizationV1Api(kube)
    role = await raw(rbac.read_cluster_role, role_name)
    original = role["rules"]
    narrowed = [r for r in original if "resourceclaims" not in r.get("resources", [])]
    assert len(narrowed) == len(original) - 1
    log_offset = agents.operator.log(workload.name).stat().st_size
    await rbac.patch_cluster_role(role_name, {"rules": narrowed})
    try:

        async def denied() -> bool:
            return not await can_i(target, "get", "resourceclaims.resource.k8s.io", DRA_PLUGIN)

        await eventually(denied, timeout_s=30, what="the narrowed role in effect")
        name = unique_name("agent-denied", 30)
        body = await allocated_claim(kube, namespace, name, workload.env["NODE_NAME"])
        ref = claim(body["metadata"]["uid"], name, namespace)
        result = (await kubelet.prepare([ref], DRIVER)).claims[ref.uid]
        assert result.error, "prepare succeeded without the rule to read the claim"
        caught = guard.new_forbidden()
        assert any("apiserver:" in p for p in caught), caught
        assert forbidden_lines(agents.operator.log(workload.name), since=log_offset)
        await delete_pods(kube, namespace, [name])
    finally:
        await rbac.patch_cluster_role(role_name, {"rules": original})
        await eventually(
            lambda: can_i(target, "get", "resourceclaims.resource.k8s.io", DRA_PLUGIN),
            timeout_s=30,
            what="the role restored",
        )
        # What happened on purpose must not fail the test under the conftest guard.
        guard.reset()


async def test_device_plugin_allocates_and_annotates_under_its_service_account(
    kube: client.ApiClient,
    agents: Agents,
    workload_namespace: str,
    kubelet_dir: Path,
) -> None:
    root = kubelet_dir
    # The capacity the kubelet would report from ListAndWatch (checked against it below).
    async with agent_node(kube, extra_capacity={GPU: str(GPUS)}) as node_name:
        gpu_ids = await node_record_gpus(kube, node_name)
        socket = root / "pr" / "kubelet.sock"
        async with (
            PodResourcesKubeletPeer(socket) as podresources,
            DevicePluginKubeletPeer(root / "dp") as kubelet,
        ):
            workload = await start_agent(
                agents,
                node_name,
                DEVICE_PLUGIN,
                {
                    "DEVICE_PLUGIN_DIR": str(root / "dp"),
                    "POD_RESOURCES_SOCKET": str(socket),
                    "STATE_DIR": str(root / "state"),
                },
            )
            try:
                plugin = await kubelet.wait_for_plugin(GPU, timeout_seconds=60)
                devices = await plugin.wait_for_devices(
                    lambda ds: len(ds) == GPUS, timeout_seconds=60
                )
                assert sorted(d.ID for d in devices) == sorted(gpu_ids)
                await agents.operator.wait_ready([workload.name], timeout_s=60)

                name = unique_name("agent-gpu-pod", 30)
                await create_pod(kube, workload_namespace, gpu_pod(name, node_name, gpus=1))

                async def scheduled() -> bool:
                    body = await pod(kube, workload_namespace, name)
                    return bool(body["spec"].get("nodeName") == node_name)

                await eventually(scheduled, timeout_s=60, what=f"{name} scheduled")
                chosen = await plugin.get_preferred_allocation(plugin.healthy_ids(), 1)
                response = await plugin.allocate(chosen)
                assert response.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(chosen)
                assert response.envs["FGO_SEED"] == str(SEED)
                podresources.assign(workload_namespace, name, "gpu-container", GPU, chosen)

                # The plugin annotates the pod with its GPUs (pods patch), the status-updater
                # records it as the holder.
                async def annotated() -> str | None:
                    body = await pod(kube, workload_namespace, name)
                    value = (body["metadata"].get("annotations") or {}).get(ALLOCATED_DEVICES)
                    return str(value) if value else None

                value = await eventually(annotated, timeout_s=60, what="allocated-devices")
                assert value == f"{GPU}={','.join(chosen)}"

                async def held() -> bool:
                    topology = await record(kube, NAMESPACE, node_name)
                    h = holders(topology) if topology else {}
                    return h.get(chosen[0]) == [f"{workload_namespace}/{name}"]

                await eventually(held, timeout_s=60, what=f"record: {name} holds {chosen[0]}")
                podresources.remove_pod(workload_namespace, name)
                await delete_pods(kube, workload_namespace, [name])
                no_refusals(agents, workload.name, STATUS_UPDATER)
            finally:
                await agents.operator.stop_one(workload.name)
