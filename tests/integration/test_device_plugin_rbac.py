"""device-plugin runs with exactly the RBAC its README documents (and no more).

Each mode runs as a ServiceAccount bound to the verbs listed in services/device-plugin/README.md,
through a kubeconfig holding that account's token, against the real API server's RBAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fgo_common.annotations import ALLOCATED_DEVICES
from fgo_common.config import parse_cluster_config
from fgo_common.kube.client import api_client
from fgo_common.nodebuild import build_node_topology
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import NODE_NAME_LABEL, TOPOLOGY_DATA_KEY, NodeTopology
from fgo_device_plugin.kwok import MANAGED_RESOURCES_ANNOTATION, KwokCapacityController
from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.node import NodeAgent
from fgo_device_plugin.reporter import pod_annotation_patcher
from fgo_device_plugin.settings import Settings
from fgo_device_plugin.source import ConfigMapTopologySource
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import KwokNodeFactory, eventually, unique_name
from fgo_testkit.kubelet import DevicePluginKubeletPeer
from fgo_testkit.kubelet.podresources import PodResourcesKubeletPeer
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"

# What the README's RBAC section lists, per mode.
NODE_MODE_CLUSTER_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
KWOK_MODE_CLUSTER_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
]
TOPOLOGY_READER_RULES = [
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}
]


def record(node: str, count: int, *, kwok: bool) -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "h100", "count": count}]}}}
    )
    return build_node_topology(node, config.pools["p"], config, kwok=kwok)


async def write_record(core: Any, namespace: str, topology: NodeTopology) -> None:
    await core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": f"topology-{topology.node_name}",
                "labels": {NODE_NAME_LABEL: topology.node_name},
            },
            "data": {TOPOLOGY_DATA_KEY: topology.to_yaml()},
        },
    )


@contextlib.asynccontextmanager
async def identity(
    kube: client.ApiClient,
    local_cluster: LocalCluster,
    namespace: str,
    cluster_rules: list[dict[str, Any]],
) -> AsyncIterator[Path]:
    """A kubeconfig for a new ServiceAccount with ``cluster_rules`` plus topology read access."""
    core: Any = client.CoreV1Api(kube)
    rbac: Any = client.RbacAuthorizationV1Api(kube)
    name = unique_name("fgo-dp", 40)
    await core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    await rbac.create_cluster_role({"metadata": {"name": name}, "rules": cluster_rules})
    await rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": subject,
        }
    )
    await rbac.create_namespaced_role(
        namespace, {"metadata": {"name": name}, "rules": TOPOLOGY_READER_RULES}
    )
    await rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        },
    )
    token = await core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    admin = yaml.safe_load(local_cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": name, "user": {"token": token.status.token}}],
        "contexts": [
            {"name": name, "context": {"cluster": admin["clusters"][0]["name"], "user": name}}
        ],
        "current-context": name,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as handle:
        yaml.safe_dump(config, handle)
    path = Path(handle.name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        await rbac.delete_cluster_role_binding(name)
        await rbac.delete_cluster_role(name)


async def test_kwok_mode_with_documented_rbac(
    kube: client.ApiClient,
    local_cluster: LocalCluster,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
) -> None:
    core: Any = client.CoreV1Api(kube)
    (node,) = await kwok_nodes(1)
    await write_record(core, namespace, record(node, 2, kwok=True))
    async with (
        identity(kube, local_cluster, namespace, KWOK_MODE_CLUSTER_RULES) as kubeconfig,
        api_client(str(kubeconfig)) as api,
    ):
        controller = KwokCapacityController(api, namespace, "topology", Metrics(), workers=2)
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        try:

            async def published() -> bool:
                resp = await core.read_node(node, _preload_content=False)
                obj = json.loads(await resp.read())
                resp.release()
                annotations = obj["metadata"].get("annotations") or {}
                return (
                    obj["status"]["allocatable"].get(GPU) == "2"
                    and annotations.get(MANAGED_RESOURCES_ANNOTATION) == GPU
                )

            await eventually(published, timeout_s=30, what="capacity and managed annotation")
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task


async def test_node_mode_with_documented_rbac(
    kube: client.ApiClient, local_cluster: LocalCluster, namespace: str
) -> None:
    core: Any = client.CoreV1Api(kube)
    node = unique_name("gpu-node", 30)
    topology = record(node, 2, kwok=False)
    await write_record(core, namespace, topology)
    await core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "job"},
            "spec": {
                "nodeSelector": {"fgo.test/nowhere": "true"},
                "containers": [{"name": "main", "image": "ubuntu:22.04"}],
            },
        },
    )
    directory = Path(tempfile.mkdtemp(prefix="fgo-dpr-", dir="/tmp"))
    settings = load_settings(
        Settings,
        {
            "NODE_NAME": node,
            "DEVICE_PLUGIN_DIR": str(directory / "dp"),
            "STATE_DIR": str(directory / "state"),
            "POD_RESOURCES_SOCKET": str(directory / "pr" / "kubelet.sock"),
            "POD_RESOURCES_INTERVAL_SECONDS": "0.5",
            "KUBELET_POLL_INTERVAL_SECONDS": "0.1",
        },
    )
    try:
        async with (
            identity(kube, local_cluster, namespace, NODE_MODE_CLUSTER_RULES) as kubeconfig,
            api_client(str(kubeconfig)) as api,
            PodResourcesKubeletPeer(settings.pod_resources_socket) as podresources,
            DevicePluginKubeletPeer(settings.plugin_dir) as kubelet,
        ):
            source = ConfigMapTopologySource(api, namespace, "topology", node)
            agent = NodeAgent(settings, source, Metrics(), patch_pod=pod_annotation_patcher(api))
            assert agent.reporter is not None
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(agent.follow_topology(stop)),
                asyncio.create_task(agent.manager.run(stop)),
                asyncio.create_task(agent.reporter.run(stop)),
            ]
            try:
                plugin = await kubelet.wait_for_plugin(GPU, timeout_seconds=20)
                devices = [d.ID for d in await plugin.wait_for_devices()]
                assert devices == [g.id for g in topology.gpus]
                await plugin.allocate(devices[:1])
                podresources.assign(namespace, "job", "main", GPU, devices[:1])

                async def annotated() -> bool:
                    resp = await core.read_namespaced_pod("job", namespace, _preload_content=False)
                    pod = json.loads(await resp.read())
                    resp.release()
                    value = (pod["metadata"].get("annotations") or {}).get(ALLOCATED_DEVICES)
                    return bool(value == f"{GPU}={devices[0]}")

                await eventually(annotated, timeout_s=20, what="pod annotated")
            finally:
                stop.set()
                async with asyncio.timeout(10):
                    await asyncio.gather(*tasks)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
