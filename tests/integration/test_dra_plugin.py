"""dra-plugin against a kubelet-side peer (real wire protocol) and the real API server.

The plugin runs in-process with its kubelet directories, CDI root and state directory in a short
temp dir (unix socket paths are limited to 107 bytes). ``DraKubeletPeer`` plays the kubelet's
plugin watcher and DRA client. ResourceClaims exist in the real API server; their allocation is
written to ``status`` the way the scheduler writes it (the scheduler itself allocates claims in
test_dra_kwok.py; here the node has no kubelet to bind pods to, and the point is the node plugin).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from fgo_common import dradevices
from fgo_common.config import parse_cluster_config
from fgo_common.kube.client import api_client
from fgo_common.nodebuild import build_node_topology
from fgo_common.nodestate import read_node_state
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import (
    NODE_NAME_LABEL,
    NODE_TOPOLOGY_LABEL,
    TOPOLOGY_DATA_KEY,
    NodeTopology,
)
from fgo_dra_plugin.plugin import DraPlugin
from fgo_dra_plugin.settings import Settings
from fgo_kubelet_api import dra_v1, dra_v1beta1
from fgo_kubelet_api import pluginregistration_v1 as reg
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import eventually, unique_name
from fgo_testkit.kubelet import DraKubeletPeer, claim
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

DRIVER = "gpu.nvidia.com"


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    resp = await call(*args, _preload_content=False, **kwargs)
    try:
        return json.loads(await resp.read())
    finally:
        resp.release()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def topology_for(node: str, count: int = 2, product: str = "Tesla K80") -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": product, "count": count}]}}}
    )
    return build_node_topology(node, config.pools["p"], config, kwok=False)


class Env:
    """One test's node, namespace, directories, API handles and kubelet peer."""

    def __init__(
        self,
        local_cluster: LocalCluster,
        kube: client.ApiClient,
        namespace: str,
        root: Path,
        node: str,
    ):
        self.local_cluster = local_cluster
        self.kube = kube
        self.namespace = namespace
        self.root = root
        self.node = node
        self.core: Any = client.CoreV1Api(kube)
        self.resource: Any = client.ResourceV1Api(kube)
        self.registrar = root / "registry"
        self.plugins = root / "plugins"
        self.cdi = root / "cdi"
        self.state = root / "state"
        self.health_port = free_port()
        self.peer = DraKubeletPeer(self.registrar, retry_interval_seconds=0.2)

    def settings(self) -> Settings:
        return load_settings(
            Settings,
            {
                "NODE_NAME": self.node,
                "TOPOLOGY_CM_NAMESPACE": self.namespace,
                "KUBECONFIG": str(self.local_cluster.kubeconfig),
                "KUBELET_REGISTRAR_DIRECTORY_PATH": str(self.registrar),
                "KUBELET_PLUGINS_DIRECTORY_PATH": str(self.plugins),
                "CDI_ROOT": str(self.cdi),
                "STATE_DIR": str(self.state),
                "SOCKET_CHECK_INTERVAL_SECONDS": "0.2",
                "HEALTHCHECK_PORT": str(self.health_port),
                "INSTANCE": unique_name("dra", 30),
            },
        )

    async def write_topology(self, topology: NodeTopology) -> None:
        body = {
            "metadata": {
                "name": f"topology-{self.node}",
                "labels": {NODE_NAME_LABEL: self.node, NODE_TOPOLOGY_LABEL: "true"},
            },
            "data": {TOPOLOGY_DATA_KEY: topology.to_yaml()},
        }
        try:
            await self.core.create_namespaced_config_map(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await self.core.replace_namespaced_config_map(
                body["metadata"]["name"], self.namespace, body
            )

    async def allocated_claim(
        self,
        name: str,
        *devices: str,
        pool: str | None = None,
        configs: list[dict[str, Any]] | None = None,
    ) -> dra_v1.pb2.Claim:
        """A ResourceClaim allocated (as the scheduler would) to ``devices`` of this node;
        ``configs``: opaque parameters for our driver, in the claim's spec and copied into
        the allocation as the scheduler copies them."""
        claim_configs = [
            {"opaque": {"driver": DRIVER, "parameters": params}} for params in configs or []
        ]
        created = await raw(
            self.resource.create_namespaced_resource_claim,
            self.namespace,
            {
                "metadata": {"name": name},
                "spec": {
                    "devices": {
                        "requests": [
                            {
                                "name": "gpu",
                                "exactly": {
                                    "deviceClassName": DRIVER,
                                    "count": len(devices),
                                    "allocationMode": "ExactCount",
                                },
                            }
                        ],
                        **({"config": claim_configs} if claim_configs else {}),
                    }
                },
            },
        )
        allocation = {
            "devices": {
                "results": [
                    {"request": "gpu", "driver": DRIVER, "pool": pool or self.node, "device": d}
                    for d in devices
                ],
                **(
                    {"config": [{"source": "FromClaim", **c} for c in claim_configs]}
                    if claim_configs
                    else {}
                ),
            },
            "nodeSelector": {
                "nodeSelectorTerms": [
                    {
                        "matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": [self.node]}
                        ]
                    }
                ]
            },
        }
        await self.resource.patch_namespaced_resource_claim_status(
            name, self.namespace, {"status": {"allocation": allocation}}
        )
        return claim(created["metadata"]["uid"], name, self.namespace)

    def cdi_spec(self, uid: str) -> dict[str, Any] | None:
        path = self.cdi / f"k8s.gpu.nvidia.com-claim_{uid}.json"
        return json.loads(path.read_text()) if path.exists() else None

    async def slices(self) -> list[dict[str, Any]]:
        body = await raw(
            self.resource.list_resource_slice, field_selector=f"spec.nodeName={self.node}"
        )
        return sorted(body["items"], key=lambda s: s["metadata"]["name"])


class RunningPlugin:
    def __init__(self, plugin: DraPlugin, ctx: ServiceContext, tasks: list[asyncio.Task[None]]):
        self.plugin = plugin
        self.ctx = ctx
        self.tasks = tasks


@contextlib.asynccontextmanager
async def running_plugin(env: Env) -> AsyncIterator[RunningPlugin]:
    settings = env.settings()
    ctx = ServiceContext(name="dra-plugin")
    async with api_client(settings.kubeconfig) as api:
        plugin = DraPlugin(api, settings, ctx)
        tasks = [
            asyncio.create_task(plugin.node.run(ctx), name="dra-node"),
            asyncio.create_task(plugin.serve_kubelet(ctx), name="dra-kubelet"),
        ]
        try:
            await eventually(
                lambda: asyncio.sleep(
                    0, settings.registration_socket.exists() or any(t.done() for t in tasks)
                ),
                timeout_s=30,
                what="registration socket",
            )
            for task in tasks:
                if task.done():
                    task.result()
            yield RunningPlugin(plugin, ctx, tasks)
        finally:
            ctx.stop.set()
            async with asyncio.timeout(15):
                await asyncio.gather(*tasks)


@pytest.fixture
def short_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fgo-dra-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture
async def env(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str, short_root: Path
) -> AsyncIterator[Env]:
    node = unique_name("dra-node", 40)
    core: Any = client.CoreV1Api(kube)
    # A node "with a kubelet": no KWOK annotation, so only our node plugin speaks for it.
    await core.create_node({"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}})
    environment = Env(local_cluster, kube, namespace, short_root, node)
    await environment.write_topology(topology_for(node))
    await environment.peer.start()
    try:
        yield environment
    finally:
        await environment.peer.stop()
        with contextlib.suppress(ApiException):
            await core.delete_node(node)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------


async def test_registration_offers_v1_and_v1beta1(env: Env) -> None:
    async with running_plugin(env) as running:
        connection = await env.peer.wait_for_plugin(DRIVER)
        # The peer keys a socket by (inode, ctime): when it scans between the plugin's bind and
        # its chmod to 0600 it registers twice (the kubelet's fsnotify ignores a chmod). The
        # registration that counts is the last one.
        accepted = [a for a in env.peer.attempts if a.accepted]
        assert accepted
        attempt = accepted[-1]
        assert attempt.info is not None
        assert attempt.info.type == reg.DRA_PLUGIN
        assert attempt.info.name == DRIVER
        assert list(attempt.info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
        assert attempt.info.endpoint == str(env.plugins / DRIVER / "dra.sock")
        assert attempt.socket_path == env.registrar / "gpu.nvidia.com-reg.sock"
        assert connection.service == dra_v1.DRA_PLUGIN_SERVICE
        await eventually(
            lambda: asyncio.sleep(0, running.ctx.readiness.describe().get("registered")),
            timeout_s=5,
            what="readiness after NotifyRegistrationStatus",
        )


async def test_an_older_kubelet_gets_v1beta1(env: Env) -> None:
    old_kubelet = DraKubeletPeer(env.registrar, kubelet_services=(dra_v1beta1.DRA_PLUGIN_SERVICE,))
    await env.peer.stop()
    async with old_kubelet, running_plugin(env):
        connection = await old_kubelet.wait_for_plugin(DRIVER)
        assert connection.service == dra_v1beta1.DRA_PLUGIN_SERVICE
        ref = await env.allocated_claim("old", "gpu-0")
        response = await old_kubelet.prepare([ref])
        assert response.claims[ref.uid].error == ""
        assert [d.device_name for d in response.claims[ref.uid].devices] == ["gpu-0"]


async def test_reregisters_after_kubelet_restart_and_wiped_registry(env: Env) -> None:
    async with running_plugin(env):
        await env.peer.wait_for_plugin(DRIVER)
        await env.peer.restart()  # kubelet restart: sockets stay, registration is redone
        await env.peer.wait_for_plugin(DRIVER)
        shutil.rmtree(env.registrar)  # kubelet restart that wiped its registry directory
        await env.peer.wait_for_no_plugin(DRIVER)
        connection = await env.peer.wait_for_plugin(DRIVER, timeout_seconds=10)
        ref = await env.allocated_claim("after-wipe", "gpu-1")
        assert (await connection.prepare([ref])).claims[ref.uid].error == ""
        assert sum(a.accepted for a in env.peer.attempts) >= 2


async def test_grpc_health_serves_liveness(env: Env) -> None:
    async with (
        running_plugin(env),
        grpc.aio.insecure_channel(f"127.0.0.1:{env.health_port}") as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "liveness"):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_sockets_are_removed_on_stop(env: Env) -> None:
    async with running_plugin(env) as running:
        await env.peer.wait_for_plugin(DRIVER)
        settings = running.plugin.settings
    assert not settings.registration_socket.exists()
    assert not settings.dra_socket.exists()
    await env.peer.wait_for_no_plugin(DRIVER)


# --------------------------------------------------------------------------------------------
# prepare / unprepare
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", [dra_v1.DRA_PLUGIN_SERVICE, dra_v1beta1.DRA_PLUGIN_SERVICE])
async def test_prepare_and_unprepare(env: Env, service: str) -> None:
    topology = topology_for(env.node)
    async with running_plugin(env):
        connection = await env.peer.wait_for_plugin(DRIVER)
        ref = await env.allocated_claim("two", "gpu-0", "gpu-1")
        response = await connection.prepare([ref], service=service)
        result = response.claims[ref.uid]
        assert result.error == ""
        assert [
            (list(d.request_names), d.pool_name, d.device_name, list(d.cdi_device_ids))
            for d in result.devices
        ] == [
            (["gpu"], env.node, "gpu-0", [f"k8s.gpu.nvidia.com/claim={ref.uid}-gpu-0"]),
            (["gpu"], env.node, "gpu-1", [f"k8s.gpu.nvidia.com/claim={ref.uid}-gpu-1"]),
        ]
        spec = env.cdi_spec(ref.uid)
        assert spec is not None
        uuids = ",".join(g.id for g in topology.gpus)
        # The claim's UUIDs, plus the reference's GPU_DEVICE_<name>=<name> per device.
        assert [d["containerEdits"]["env"] for d in spec["devices"]] == [
            [f"NVIDIA_VISIBLE_DEVICES={uuids}", "GPU_DEVICE_gpu_0=gpu-0"],
            [f"NVIDIA_VISIBLE_DEVICES={uuids}", "GPU_DEVICE_gpu_1=gpu-1"],
        ]
        assert f"NODE_NAME={env.node}" in spec["containerEdits"]["env"]
        # nvidia-smi: the launcher at the path users call, the bundle it execs, the node state.
        assert {m["containerPath"] for m in spec["containerEdits"]["mounts"]} == {
            "/usr/bin/nvidia-smi",
            "/bin/nvidia-smi",
            "/usr/local/fake-gpu",
            "/run/fake-gpu-operator",
        }

        unprepared = await connection.unprepare([ref], service=service)
        assert unprepared.claims[ref.uid].error == ""
        assert env.cdi_spec(ref.uid) is None


async def test_repeated_prepare_is_idempotent(env: Env) -> None:
    async with running_plugin(env) as running:
        connection = await env.peer.wait_for_plugin(DRIVER)
        ref = await env.allocated_claim("again", "gpu-1")
        first = await connection.prepare([ref])
        # The claim is gone from the API now; a repeated prepare must not need it.
        await env.resource.delete_namespaced_resource_claim("again", env.namespace)
        second = await connection.prepare([ref])
        assert second == first
        calls = running.plugin.driver.metrics.calls
        assert calls.labels("prepare", "ok")._value.get() == 1
        assert calls.labels("prepare", "cached")._value.get() == 1


async def test_unknown_device_is_a_per_claim_error(env: Env) -> None:
    async with running_plugin(env):
        connection = await env.peer.wait_for_plugin(DRIVER)
        good = await env.allocated_claim("good", "gpu-0")
        unknown = await env.allocated_claim("unknown", "gpu-7")
        foreign = await env.allocated_claim("foreign", "gpu-0", pool="some-other-node")
        response = await connection.prepare([good, unknown, foreign])
        assert response.claims[good.uid].error == ""
        assert "gpu-7" in response.claims[unknown.uid].error
        assert "not a device of node" in response.claims[unknown.uid].error
        assert "some-other-node" in response.claims[foreign.uid].error
        assert not response.claims[unknown.uid].devices
        assert env.cdi_spec(unknown.uid) is None


async def test_prepare_of_a_claim_that_does_not_exist_or_was_recreated(env: Env) -> None:
    async with running_plugin(env):
        connection = await env.peer.wait_for_plugin(DRIVER)
        ghost = claim("00000000-0000-0000-0000-000000000000", "ghost", env.namespace)
        real = await env.allocated_claim("real", "gpu-0")
        stale = claim("11111111-1111-1111-1111-111111111111", "real", env.namespace)
        response = await connection.prepare([ghost, stale, real])
        assert "not found" in response.claims[ghost.uid].error
        assert "has UID" in response.claims[stale.uid].error
        assert response.claims[real.uid].error == ""


async def test_plugin_restart_keeps_prepared_claims(env: Env) -> None:
    async with running_plugin(env):
        connection = await env.peer.wait_for_plugin(DRIVER)
        ref = await env.allocated_claim("kept", "gpu-1")
        before = await connection.prepare([ref])
    await env.peer.wait_for_no_plugin(DRIVER)
    checkpoint = json.loads((env.plugins / DRIVER / "checkpoint.json").read_text())
    assert ref.uid in checkpoint["claims"]
    assert env.cdi_spec(ref.uid) is not None

    async with running_plugin(env) as running:
        connection = await env.peer.wait_for_plugin(DRIVER)
        assert await connection.prepare([ref]) == before
        assert running.plugin.driver.metrics.calls.labels("prepare", "cached")._value.get() == 1
        assert (await connection.unprepare([ref])).claims[ref.uid].error == ""
        assert env.cdi_spec(ref.uid) is None
    checkpoint = json.loads((env.plugins / DRIVER / "checkpoint.json").read_text())
    assert checkpoint["claims"] == {}


async def test_sharing_configs_through_the_api_server(env: Env) -> None:
    """NVIDIA's GpuConfig (TimeSlicing, MPS) and the reference's example GpuConfig, as the API
    server stores them in a claim's allocation, reach the CDI spec; an invalid interval fails
    just that claim with the driver's message."""
    nvidia = {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig"}
    example = {"apiVersion": "gpu.resource.example.com/v1alpha1", "kind": "GpuConfig"}
    async with running_plugin(env):
        connection = await env.peer.wait_for_plugin(DRIVER)
        ts = await env.allocated_claim(
            "ts", "gpu-0",
            configs=[{**nvidia, "sharing": {"strategy": "TimeSlicing",
                                            "timeSlicingConfig": {"interval": "Long"}}}],
        )  # fmt: skip
        mps = await env.allocated_claim(
            "mps", "gpu-1",
            configs=[{**nvidia, "sharing": {"strategy": "MPS",
                                            "mpsConfig": {"defaultActiveThreadPercentage": 50}}}],
        )  # fmt: skip
        ref_sp = await env.allocated_claim(
            "ref-sp", "gpu-0",
            configs=[{**example, "sharing": {"strategy": "SpacePartitioning",
                                             "spacePartitioningConfig": {"partitionCount": 10}}}],
        )  # fmt: skip
        bad = await env.allocated_claim(
            "bad", "gpu-1",
            configs=[{**nvidia, "sharing": {"strategy": "TimeSlicing",
                                            "timeSlicingConfig": {"interval": "Sometimes"}}}],
        )  # fmt: skip
        response = await connection.prepare([ts, mps, ref_sp, bad])
        errors = {uid: c.error for uid, c in response.claims.items()}
        assert errors[bad.uid] == (
            "prepare devices failed: error validating GPU config: "
            "unknown time-slice interval: Sometimes"
        )
        assert not response.claims[bad.uid].devices
        assert env.cdi_spec(bad.uid) is None
        assert {errors[c.uid] for c in (ts, mps, ref_sp)} == {""}

        def device_edits(uid: str) -> dict[str, Any]:
            spec = env.cdi_spec(uid)
            assert spec is not None
            (device,) = spec["devices"]
            return dict(device["containerEdits"])

        # NVIDIA's time-slicing changes the GPU's scheduling, not the container.
        assert len(device_edits(ts.uid)["env"]) == 2
        edits = device_edits(mps.uid)
        assert "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps" in edits["env"]
        pipe = next(m for m in edits["mounts"] if m["containerPath"] == "/tmp/nvidia-mps")
        assert Path(pipe["hostPath"]).is_dir()
        assert Path(pipe["hostPath"]).parent.parent == env.plugins / DRIVER / "mps"
        assert device_edits(ref_sp.uid)["env"][1:] == [
            "GPU_DEVICE_gpu_0=gpu-0",
            "GPU_DEVICE_gpu_0_SHARING_STRATEGY=SpacePartitioning",
            "GPU_DEVICE_gpu_0_PARTITION_COUNT=10",
        ]
        checkpoint = json.loads((env.plugins / DRIVER / "checkpoint.json").read_text())
        (ts_device,) = checkpoint["claims"][ts.uid]["devices"]
        assert ts_device["sharing"] == {"strategy": "TimeSlicing", "interval": "Long"}

        assert (await connection.unprepare([mps])).claims[mps.uid].error == ""
        assert not Path(pipe["hostPath"]).exists()


# --------------------------------------------------------------------------------------------
# what the plugin publishes about its node
# --------------------------------------------------------------------------------------------


async def test_publishes_the_nodes_slices_and_snapshot_and_follows_the_record(env: Env) -> None:
    async with running_plugin(env):

        async def published(count: int) -> list[dict[str, Any]] | None:
            slices = await env.slices()
            return slices if slices and len(slices[0]["spec"]["devices"]) == count else None

        (stored,) = await eventually(lambda: published(2), timeout_s=30, what="node's slice")
        assert stored["metadata"]["name"] == f"{env.node}-gpu.nvidia.com"
        assert stored["spec"]["pool"]["name"] == env.node
        node = await raw(env.core.read_node, env.node)
        assert stored["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
        expected = [d.device for d in dradevices.node_devices(topology_for(env.node))]
        assert [d["attributes"] for d in stored["spec"]["devices"]] == [
            d["attributes"] for d in expected
        ]
        assert read_node_state(env.state).gpus[0].id == topology_for(env.node).gpus[0].id

        bigger = topology_for(env.node, count=4)
        bigger.generation = 2
        await env.write_topology(bigger)
        (stored,) = await eventually(lambda: published(4), timeout_s=30, what="slice with 4 GPUs")
        assert stored["spec"]["pool"]["generation"] == 2
        await eventually(
            lambda: asyncio.sleep(0, len(read_node_state(env.state).gpus) == 4),
            timeout_s=10,
            what="snapshot with 4 GPUs",
        )

        # Prepare validates against the new record right away.
        connection = await env.peer.wait_for_plugin(DRIVER)
        ref = await env.allocated_claim("new-gpu", "gpu-3")
        assert (await connection.prepare([ref])).claims[ref.uid].error == ""
