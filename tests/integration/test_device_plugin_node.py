"""device-plugin in node mode against the real control plane, with kubelet-side peers.

The service runs as its console script would (``node_mode`` under the common task runner) with
its topology namespace set to the test's namespace: the record comes from a real ConfigMap
watched through the API server, the kubelet is the device plugin peer and the pod resources
peer (real wire protocol over unix sockets), and allocation reports land on a real Pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fgo_common.annotations import ALLOCATED_DEVICES
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.nodestate import read_node_state
from fgo_common.runtime.runner import ServiceContext, run_tasks
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import (
    NODE_NAME_LABEL,
    NODE_TOPOLOGY_LABEL,
    TOPOLOGY_DATA_KEY,
    UNHEALTHY,
    NodeTopology,
)
from fgo_device_plugin.main import node_mode
from fgo_device_plugin.settings import Settings
from fgo_kubelet_api import deviceplugin_v1beta1 as dp
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import eventually, unique_name
from fgo_testkit.kubelet import DevicePluginKubeletPeer
from fgo_testkit.kubelet.podresources import PodResourcesKubeletPeer
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"


def record(node: str, count: int) -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "h100", "count": count}]}}}
    )
    return build_node_topology(node, config.pools["p"], config, kwok=False)


async def write_record(core: Any, namespace: str, topology: NodeTopology) -> None:
    name = f"topology-{topology.node_name}"
    body = {
        "metadata": {
            "name": name,
            "labels": {NODE_NAME_LABEL: topology.node_name, NODE_TOPOLOGY_LABEL: "true"},
        },
        "data": {TOPOLOGY_DATA_KEY: topology.to_yaml()},
    }
    try:
        await core.replace_namespaced_config_map(name, namespace, body)
    except client.exceptions.ApiException as exc:
        if exc.status != 404:
            raise
        await core.create_namespaced_config_map(namespace, body)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fgo-dpi-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[ServiceContext]:
    ctx = ServiceContext(name="device-plugin")
    task = asyncio.create_task(run_tasks(ctx, {"node": node_mode(settings)}, health_port=None))
    try:
        yield ctx
    finally:
        ctx.stop.set()
        async with asyncio.timeout(15):
            assert await task == 0


async def test_node_mode_on_the_real_api_server(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str, sock_dir: Path
) -> None:
    core: Any = client.CoreV1Api(kube)
    node = unique_name("gpu-node", 30)
    topology = record(node, 4)
    settings = load_settings(
        Settings,
        {
            "NODE_NAME": node,
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "KUBECONFIG": str(local_cluster.kubeconfig),
            "DEVICE_PLUGIN_DIR": str(sock_dir / "dp"),
            "STATE_DIR": str(sock_dir / "state"),
            "POD_RESOURCES_SOCKET": str(sock_dir / "pr" / "kubelet.sock"),
            "POD_RESOURCES_INTERVAL_SECONDS": "1",
            "KUBELET_POLL_INTERVAL_SECONDS": "0.1",
        },
    )
    # A pod that will "get" GPUs; it never needs to run for the annotation to be written.
    await core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "trainer"},
            "spec": {
                "nodeSelector": {"fgo.test/nowhere": "true"},
                "containers": [{"name": "main", "image": "ubuntu:22.04"}],
            },
        },
    )
    async with (
        PodResourcesKubeletPeer(settings.pod_resources_socket) as podresources,
        DevicePluginKubeletPeer(settings.plugin_dir) as kubelet,
        running_service(settings) as ctx,
    ):
        # No record yet: serving nothing, not ready.
        await asyncio.sleep(1.0)
        assert not kubelet.registrations
        assert not ctx.readiness.ready

        await write_record(core, namespace, topology)
        plugin = await kubelet.wait_for_plugin(GPU, timeout_seconds=20)
        devices = await plugin.wait_for_devices()
        assert [d.ID for d in devices] == [g.id for g in topology.gpus]
        await eventually(lambda: asyncio.sleep(0, ctx.readiness.ready), timeout_s=10, what="ready")
        assert read_node_state(settings.state_dir).gpus[0].id == topology.gpus[0].id

        # Health from the record: GPU 2 goes bad.
        topology.gpus[2].health = UNHEALTHY
        await write_record(core, namespace, topology)
        await plugin.wait_for_devices(
            lambda ds: [d.health for d in ds] == ["Healthy", "Healthy", "Unhealthy", "Healthy"],
            timeout_seconds=20,
        )
        assert read_node_state(settings.state_dir).gpus[2].health == UNHEALTHY

        # The kubelet allocates two GPUs to the pod; the pod is annotated with exactly those.
        chosen = await plugin.get_preferred_allocation(plugin.healthy_ids(), 2)
        response = await plugin.allocate(chosen)
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(chosen)
        podresources.assign(namespace, "trainer", "main", GPU, chosen)

        async def annotation() -> str | None:
            resp = await core.read_namespaced_pod("trainer", namespace, _preload_content=False)
            pod = json.loads(await resp.read())
            resp.release()
            value = (pod["metadata"].get("annotations") or {}).get(ALLOCATED_DEVICES)
            return str(value) if value else None

        value = await eventually(annotation, timeout_s=20, what="allocated-devices annotation")
        assert value == f"{GPU}={','.join(chosen)}"

        # The record is deleted (node left every pool): nothing is allocatable any more.
        await core.delete_namespaced_config_map(f"topology-{node}", namespace)
        await plugin.wait_for_devices(lambda ds: not ds, timeout_seconds=20)

        # kubelet restart while running against the API server: registered again.
        await kubelet.restart()
        await kubelet.wait_for_registrations(2, timeout_seconds=10)
    # Clean stop (as on SIGTERM): our sockets are gone.
    assert not list(settings.plugin_dir.glob("fake-*.sock"))
    assert not kubelet.rejections
    assert kubelet.registrations[-1].version == dp.VERSION
