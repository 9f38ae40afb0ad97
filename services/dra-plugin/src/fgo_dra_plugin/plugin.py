"""The DRA plugin assembled: node agent (record, snapshot, slices), driver, kubelet servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import structlog
from fgo_common.kube.errors import is_not_found, raise_for_status
from fgo_common.kube.retry import retrying
from fgo_common.kube.served import SliceApi
from fgo_common.nodestate import nvml_host_library
from fgo_common.runtime.runner import ServiceContext
from kubernetes_asyncio import client

from fgo_dra_plugin.cdi import CdiKind, CdiStore, ContainerSetup
from fgo_dra_plugin.channels import ChannelDriver, ChannelNode
from fgo_dra_plugin.driver import Driver, DriverMetrics
from fgo_dra_plugin.node import NodeAgent
from fgo_dra_plugin.server import PluginServers
from fgo_dra_plugin.settings import Settings

log = structlog.get_logger(__name__)

# How long registration waits for the node's record at start. Registering without it only
# makes new prepares fail (the kubelet retries); already-prepared claims work from the
# checkpoint, so an unreachable API server must not keep us from registering for ever.
_RECORD_WAIT_SECONDS = 10.0


def container_setup(settings: Settings) -> ContainerSetup:
    return ContainerSetup(
        node_name=settings.node_name,
        visible_devices_env=settings.visible_devices_env_name,
        nvidia_smi_host_path=settings.nvidia_smi_host_path,
        nvidia_smi_container_path=settings.nvidia_smi_container_path,
        state_host_dir=settings.effective_state_host_dir,
        state_container_dir=settings.state_container_dir,
        bundle_host_dir=settings.nvidia_smi_bundle_host_dir,
        bundle_container_dir=settings.nvidia_smi_bundle_container_dir,
        seed=settings.seed,
        nvml_host_path=nvml_host_library(settings.nvidia_smi_bundle_host_dir),
    )


class DraPlugin:
    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings,
        ctx: ServiceContext,
        slice_api: SliceApi | None = None,
    ) -> None:
        self.settings = settings
        self.ctx = ctx
        self._resource: Any = slice_api or SliceApi(api)
        # One driver per process (DRIVER_MODE): the GPU driver, or the compute-domain channel
        # driver with its device resolution, CDI edits and channel publisher plugged in.
        self.node: NodeAgent | ChannelNode
        driver_cls: type[Driver]
        if settings.compute_domain:
            self.node = ChannelNode(api, settings, ctx.registry, self._resource)
            driver_cls = ChannelDriver
        else:
            self.node = NodeAgent(api, settings, ctx.registry, self._resource)
            driver_cls = Driver
        self.driver = driver_cls(
            driver_name=settings.driver,
            node_name=settings.node_name,
            fetch_claim=self.fetch_claim,
            current_devices=self.node.current_devices,
            cdi=CdiStore(Path(settings.cdi_root), CdiKind.parse(settings.effective_cdi_kind)),
            setup=container_setup(settings),
            checkpoint_path=settings.checkpoint_path,
            metrics=DriverMetrics(ctx.registry),
            mps_root=settings.mps_root,
            feature_gates=settings.gates,
        )
        self.servers = PluginServers(
            driver=self.driver,
            driver_name=settings.driver,
            registration_socket=settings.registration_socket,
            dra_socket=settings.dra_socket,
            healthcheck_port=settings.healthcheck_port,
            check_interval_seconds=settings.socket_check_seconds,
            registry=ctx.registry,
            on_registration=self._on_registration,
        )

    def _on_registration(self, registered: bool, error: str) -> None:
        self.ctx.readiness.set("registered", registered)

    async def fetch_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        async def call() -> dict[str, Any]:
            resp = await self._resource.read_namespaced_resource_claim(
                name, namespace, _preload_content=False
            )
            await raise_for_status(resp)
            try:
                body: dict[str, Any] = json.loads(await resp.read())
            finally:
                resp.release()
            return body

        try:
            return await retrying(call, what=f"read ResourceClaim {namespace}/{name}", attempts=4)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise

    async def serve_kubelet(self, ctx: ServiceContext) -> None:
        """Eternal task: checkpoint, sockets, registration, socket watch; clean stop."""
        ctx.readiness.require("registered")
        await self.driver.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_RECORD_WAIT_SECONDS):
                await self.node.synced.wait()
        if not self.node.synced.is_set():
            log.warning("node.not_synced_yet", waited_seconds=_RECORD_WAIT_SECONDS)
        await self.servers.start()
        try:
            await self.servers.keep_alive(ctx.stop)
        finally:
            await self.servers.stop()
