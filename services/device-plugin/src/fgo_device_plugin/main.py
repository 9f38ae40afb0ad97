"""Entry point: ``fgo-device-plugin`` in node mode (DaemonSet) or kwok mode (one Deployment)."""

from __future__ import annotations

import asyncio

import structlog
from fgo_common.kube.client import api_client
from fgo_common.kube.leader import elected_client
from fgo_common.runtime.entry import service_main
from fgo_common.runtime.logging import configure_logging
from fgo_common.runtime.runner import ServiceContext, TaskFactory, run_service

from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.settings import MODE_KWOK, Settings

COMPONENT = "device-plugin"
log = structlog.get_logger(__name__)


async def _follow_readiness(ctx: ServiceContext, name: str, event: asyncio.Event) -> None:
    """Mirror ``event`` (e.g. "registered with the kubelet") into /readyz until stopped."""
    while not ctx.stop.is_set():
        ctx.readiness.set(name, event.is_set())
        if await ctx.sleep(0.5):
            return


def node_mode(settings: Settings) -> TaskFactory:
    # Imported here: the gRPC stack (~10 MiB of RSS) is needed by the node agent only.
    from fgo_device_plugin.node import NodeAgent
    from fgo_device_plugin.reporter import pod_annotation_patcher
    from fgo_device_plugin.source import ConfigMapTopologySource

    async def run(ctx: ServiceContext) -> None:
        ctx.readiness.require("registered")
        metrics = Metrics(ctx.registry)
        async with api_client(settings.kubeconfig or None) as api:
            source = ConfigMapTopologySource(
                api, settings.effective_topology_namespace, settings.topology_name,
                settings.node_name,
            )  # fmt: skip
            agent = NodeAgent(settings, source, metrics, patch_pod=pod_annotation_patcher(api))
            async with asyncio.TaskGroup() as group:
                group.create_task(agent.follow_topology(ctx.stop), name="topology")
                group.create_task(agent.manager.run(ctx.stop), name="plugins")
                group.create_task(agent.nvml.run(ctx.stop), name="nvml-snapshot")
                if agent.reporter is not None:
                    group.create_task(agent.reporter.run(ctx.stop), name="podresources")
                group.create_task(
                    _follow_readiness(ctx, "registered", agent.manager.registered),
                    name="readiness",
                )

    return run


def kwok_mode(settings: Settings) -> TaskFactory:
    from fgo_device_plugin.kwok import KwokCapacityController

    async def run(ctx: ServiceContext) -> None:
        ctx.readiness.require("synced")
        metrics = Metrics(ctx.registry)
        lease = "fgo-kwok-gpu-capacity"
        async with elected_client(settings.kubeconfig or None, settings, lease, ctx) as (
            api,
            elector,
        ):
            controller = KwokCapacityController(
                api,
                settings.effective_topology_namespace,
                settings.topology_name,
                metrics,
                mig_strategy=settings.mig_strategy,
                workers=settings.kwok_workers,
                resync_seconds=settings.kwok_resync_seconds,
                dra_shares_gpus=settings.dra_shares_gpus,
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(controller.run(ctx.stop, elector), name="kwok-capacity")
                group.create_task(
                    _follow_readiness(ctx, "synced", controller.synced), name="readiness"
                )

    return run


def _start(settings: Settings) -> int:
    if settings.mode == MODE_KWOK:
        configure_logging(COMPONENT, settings.log_level)
    else:
        configure_logging(COMPONENT, settings.log_level, node=settings.node_name)
    log.info(
        "settings.loaded",
        mode=settings.mode,
        topology_namespace=settings.effective_topology_namespace,
        mig_strategy=settings.mig_strategy or "from record",
    )
    task = kwok_mode(settings) if settings.mode == MODE_KWOK else node_mode(settings)
    return run_service(COMPONENT, {settings.mode: task}, health_port=settings.health_port)


def main() -> int:
    return service_main(
        component=COMPONENT,
        prog="fgo-device-plugin",
        description="Kubelet device plugin for simulated NVIDIA GPUs (nvidia.com/gpu, MIG "
        "resources) on nodes with a kubelet (DEVICE_PLUGIN_MODE=node), or the GPU capacity of "
        "KWOK nodes (DEVICE_PLUGIN_MODE=kwok).",
        settings_cls=Settings,
        start=_start,
    )
