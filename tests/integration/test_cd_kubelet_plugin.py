"""The compute-domain.nvidia.com kubelet plugin (dra-plugin with DRIVER_MODE=compute-domain)
against our kubelet peer (real wire protocol) and the real API server.

As in test_dra_plugin.py the plugin runs in-process with its kubelet directories and CDI root in
a short temp dir, the node has no kubelet (no KWOK annotation: only our plugin speaks for it)
and claims are allocated by writing ``status.allocation`` the way the scheduler writes it, with
the opaque ComputeDomainChannelConfig copied from the claim (what the compute-domain-controller's
template puts there). No topology record is written: the channel driver does not need one.
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
import pytest_asyncio
from fgo_common import computedomain as cdn
from fgo_common.kube.client import api_client
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.settings import load_settings
from fgo_dra_plugin.plugin import DraPlugin
from fgo_dra_plugin.settings import Settings
from fgo_kubelet_api import dra_v1
from fgo_kubelet_api import pluginregistration_v1 as reg
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import eventually, unique_name
from fgo_testkit.kubelet import DraKubeletPeer, claim
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

DRIVER = cdn.DRIVER
KIND = "k8s.compute-domain.nvidia.com/claim"
DOMAIN = "7c1e5a52-0000-4000-8000-0000000000cd"


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    resp = await call(*args, _preload_content=False, **kwargs)
    try:
        return json.loads(await resp.read())
    finally:
        resp.release()


class Env:
    def __init__(
        self, local_cluster: LocalCluster, kube: client.ApiClient, ns: str, root: Path, node: str
    ) -> None:
        self.local_cluster = local_cluster
        self.namespace = ns
        self.root = root
        self.node = node
        self.resource: Any = client.ResourceV1Api(kube)
        self.registrar = root / "registry"
        self.plugins = root / "plugins"
        self.cdi = root / "cdi"
        self.instance = unique_name("cd", 30)
        self.peer = DraKubeletPeer(self.registrar, retry_interval_seconds=0.2)

    def settings(self) -> Settings:
        return load_settings(
            Settings,
            {
                "DRIVER_MODE": "compute-domain",
                "NODE_NAME": self.node,
                "KUBECONFIG": str(self.local_cluster.kubeconfig),
                "KUBELET_REGISTRAR_DIRECTORY_PATH": str(self.registrar),
                "KUBELET_PLUGINS_DIRECTORY_PATH": str(self.plugins),
                "CDI_ROOT": str(self.cdi),
                "STATE_DIR": str(self.root / "state"),
                "SOCKET_CHECK_INTERVAL_SECONDS": "0.2",
                "HEALTHCHECK_PORT": "0",
                "INSTANCE": self.instance,
            },
        )

    async def channel_claim(
        self, name: str, mode: str = "Single", device: str = "channel-0"
    ) -> dra_v1.pb2.Claim:
        configs = [
            {
                "requests": ["channel"],
                "opaque": {"driver": DRIVER, "parameters": cdn.channel_config(DOMAIN, mode)},
            }
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
                                "name": "channel",
                                "exactly": {
                                    "deviceClassName": cdn.CHANNEL_DEVICE_CLASS,
                                    "count": 1,
                                    "allocationMode": "ExactCount",
                                },
                            }
                        ],
                        "config": configs,
                    }
                },
            },
        )
        allocation = {
            "devices": {
                "results": [
                    {"request": "channel", "driver": DRIVER, "pool": self.node, "device": device}
                ],
                "config": [{"source": "FromClaim", **c} for c in configs],
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

    def spec_path(self, uid: str) -> Path:
        return self.cdi / f"k8s.compute-domain.nvidia.com-claim_{uid}.json"

    async def slices(self) -> list[dict[str, Any]]:
        body = await raw(
            self.resource.list_resource_slice, field_selector=f"spec.nodeName={self.node}"
        )
        return [s for s in body["items"] if s["spec"]["driver"] == DRIVER]


@contextlib.asynccontextmanager
async def running_plugin(env: Env) -> AsyncIterator[DraPlugin]:
    settings = env.settings()
    ctx = ServiceContext(name="dra-plugin")
    async with api_client(settings.kubeconfig) as api:
        plugin = DraPlugin(api, settings, ctx)
        tasks = [
            asyncio.create_task(plugin.node.run(ctx), name="cd-node"),
            asyncio.create_task(plugin.serve_kubelet(ctx), name="cd-kubelet"),
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
            yield plugin
        finally:
            ctx.stop.set()
            async with asyncio.timeout(15):
                await asyncio.gather(*tasks)


@pytest.fixture
def short_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fgo-cd-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture
async def env(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str, short_root: Path
) -> AsyncIterator[Env]:
    node = unique_name("cd-node", 40)
    core: Any = client.CoreV1Api(kube)
    await core.create_node({"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}})
    environment = Env(local_cluster, kube, namespace, short_root, node)
    await environment.peer.start()
    try:
        yield environment
    finally:
        await environment.peer.stop()
        with contextlib.suppress(ApiException):
            await core.delete_node(node)


async def test_registers_and_publishes_the_channel_slice(env: Env) -> None:
    async with running_plugin(env):
        connection = await env.peer.wait_for_plugin(DRIVER)
        # The peer keys a socket by (inode, ctime): when it scans between the plugin's bind and
        # its chmod to 0600 it registers twice (the kubelet's fsnotify ignores a chmod). The
        # registration that counts is the last one.
        accepted = [a for a in env.peer.attempts if a.accepted]
        assert accepted
        attempt = accepted[-1]
        assert attempt.info is not None and attempt.info.type == reg.DRA_PLUGIN
        assert attempt.info.name == DRIVER
        assert list(attempt.info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
        assert attempt.info.endpoint == str(env.plugins / DRIVER / "dra.sock")
        assert attempt.socket_path == env.registrar / f"{DRIVER}-reg.sock"
        assert connection.service == dra_v1.DRA_PLUGIN_SERVICE

        async def one_slice() -> dict[str, Any] | None:
            found = await env.slices()
            return found[0] if len(found) == 1 else None

        stored = await eventually(one_slice, timeout_s=15, what="channel slice")
        assert stored is not None
        spec = stored["spec"]
        assert spec["nodeName"] == env.node and spec["pool"]["name"] == env.node
        # the device the KWOK publisher builds, attribute for attribute
        assert spec["devices"] == [cdn.channel_device(0)]
        (owner,) = stored["metadata"]["ownerReferences"]
        assert owner["kind"] == "Node" and owner["name"] == env.node


async def test_prepare_unprepare_and_checkpoint_across_restart(env: Env) -> None:
    async with running_plugin(env):
        connection = await env.peer.wait_for_plugin(DRIVER)
        single = await env.channel_claim("single")
        every = await env.channel_claim("every", mode="All")
        response = await connection.prepare([single, every])
        for ref in (single, every):
            assert response.claims[ref.uid].error == ""
            (device,) = response.claims[ref.uid].devices
            assert device.device_name == "channel-0" and device.pool_name == env.node
            assert list(device.cdi_device_ids) == [f"{KIND}={ref.uid}-channel-0"]
        spec = json.loads(env.spec_path(single.uid).read_text())
        edits = spec["devices"][0]["containerEdits"]
        assert edits["env"] == [f"COMPUTE_DOMAIN_DEVICE_channel_0_RESOURCE_CLAIM={single.uid}"]
        assert [n["path"] for n in edits["deviceNodes"]] == [
            "/dev/nvidia-caps-imex-channels/channel0"
        ]
        assert f"COMPUTE_DOMAIN_UUID={DOMAIN}" in spec["containerEdits"]["env"]
        all_spec = json.loads(env.spec_path(every.uid).read_text())
        assert len(all_spec["devices"][0]["containerEdits"]["deviceNodes"]) == 2048
        before = env.spec_path(every.uid).read_text()

    # restart: the checkpoint answers, a lost spec (tmpfs CDI root) comes back, and the claim
    # deleted from the API server meanwhile can still be unprepared
    env.spec_path(every.uid).unlink()
    await env.resource.delete_namespaced_resource_claim("every", env.namespace)
    async with running_plugin(env):
        connection = await env.peer.wait_for_plugin(DRIVER, timeout_seconds=15)
        assert env.spec_path(every.uid).read_text() == before
        again = await connection.prepare([every])
        assert again.claims[every.uid].error == ""
        assert [d.device_name for d in again.claims[every.uid].devices] == ["channel-0"]
        done = await connection.unprepare([single, every])
        assert {uid: c.error for uid, c in done.claims.items()} == {single.uid: "", every.uid: ""}
        assert not env.spec_path(single.uid).exists()
        assert not env.spec_path(every.uid).exists()
        checkpoint = json.loads((env.plugins / DRIVER / "checkpoint.json").read_text())
        assert checkpoint["claims"] == {} and checkpoint["driver"] == DRIVER


async def test_a_gpu_claim_result_is_refused(env: Env) -> None:
    """A claim allocated a device this node does not publish fails that claim only."""
    async with running_plugin(env):
        connection = await env.peer.wait_for_plugin(DRIVER)
        good = await env.channel_claim("good")
        bad = await env.channel_claim("bad", device="channel-7")
        response = await connection.prepare([good, bad])
        assert response.claims[good.uid].error == ""
        assert "channel-7" in response.claims[bad.uid].error
