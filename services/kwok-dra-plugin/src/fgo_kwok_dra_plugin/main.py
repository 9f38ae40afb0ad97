"""Entry point of the kwok-dra-plugin service."""

from __future__ import annotations

import asyncio

from fgo_common.dragate import DraVersionGate
from fgo_common.kube.leader import elected_client
from fgo_common.kube.served import SliceApi
from fgo_common.runtime.entry import service_main
from fgo_common.runtime.logging import configure_logging
from fgo_common.runtime.runner import ServiceContext, run_tasks

from fgo_kwok_dra_plugin.controller import KwokSliceController
from fgo_kwok_dra_plugin.settings import Settings

COMPONENT = "kwok-dra-plugin"


async def serve(settings: Settings, ctx: ServiceContext | None = None) -> int:
    ctx = ctx or ServiceContext(name=COMPONENT)
    lease = f"fgo-{COMPONENT}"
    async with elected_client(settings.kubeconfig or None, settings, lease, ctx) as (api, elector):
        slices = SliceApi(api)
        gate = DraVersionGate(api, slices, ctx)
        controller = KwokSliceController(api, settings, ctx.registry, slices, elector=elector)
        code = await run_tasks(
            ctx, gate.wrap({"controller": controller.run}), health_port=settings.health_port
        )
        return 1 if gate.not_served else code  # dra.api_not_served said why, in one line


def _start(settings: Settings) -> int:
    configure_logging(COMPONENT, settings.log_level)
    return asyncio.run(serve(settings))


def main() -> int:
    return service_main(
        component=COMPONENT,
        prog="fgo-kwok-dra-plugin",
        description="ResourceSlices of the gpu.nvidia.com driver for KWOK nodes (which have no "
        "kubelet to run the DRA plugin).",
        settings_cls=Settings,
        start=_start,
    )
