"""Entry point of the dra-plugin service (DaemonSet on nodes with a kubelet)."""

from __future__ import annotations

import asyncio

from fgo_common.dragate import DraVersionGate
from fgo_common.kube.client import api_client
from fgo_common.kube.served import SliceApi
from fgo_common.runtime.entry import service_main
from fgo_common.runtime.logging import configure_logging
from fgo_common.runtime.runner import ServiceContext, run_tasks

from fgo_dra_plugin.plugin import DraPlugin
from fgo_dra_plugin.settings import Settings

COMPONENT = "dra-plugin"


async def serve(settings: Settings) -> int:
    ctx = ServiceContext(name=COMPONENT)
    async with api_client(settings.kubeconfig or None) as api:
        slices = SliceApi(api)
        gate = DraVersionGate(api, slices, ctx)
        plugin = DraPlugin(api, settings, ctx, slices)
        code = await run_tasks(
            ctx,
            gate.wrap({"node": plugin.node.run, "kubelet": plugin.serve_kubelet}),
            health_port=settings.health_port,
        )
        return 1 if gate.not_served else code  # dra.api_not_served said why, in one line


def _start(settings: Settings) -> int:
    configure_logging(COMPONENT, settings.log_level, node=settings.node_name)
    return asyncio.run(serve(settings))


def main() -> int:
    return service_main(
        component=COMPONENT,
        prog="fgo-dra-plugin",
        description="Kubelet DRA plugin for the gpu.nvidia.com driver (or, with "
        "DRIVER_MODE=compute-domain, compute-domain.nvidia.com IMEX channels): publishes the "
        "node's ResourceSlices and prepares claimed devices as CDI devices.",
        settings_cls=Settings,
        start=_start,
    )
