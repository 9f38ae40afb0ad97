"""Entry point of the compute-domain-controller: the watches run on every replica (a takeover
starts from warm caches), the workers that write only on the leader."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from fgo_common.kube.leader import elected_client
from fgo_common.kube.served import SliceApi, dra_version_of
from fgo_common.kube.watch import Reflector, WatchEvent
from fgo_common.runtime.entry import service_main
from fgo_common.runtime.logging import configure_logging
from fgo_common.runtime.runner import ServiceContext, run_tasks
from kubernetes_asyncio import client

from fgo_compute_domain_controller.apicalls import DomainApi
from fgo_compute_domain_controller.controller import ComputeDomainController, node_view, wait_until
from fgo_compute_domain_controller.kwokchannels import KwokChannelPublisher
from fgo_compute_domain_controller.settings import Settings

COMPONENT = "compute-domain-controller"
log = structlog.get_logger(__name__)


class Service:
    """The controller, the KWOK channel publisher (if on) and the watches they share."""

    def __init__(
        self, api: client.ApiClient, settings: Settings, ctx: ServiceContext, dra_version: str
    ) -> None:
        self.settings = settings
        self.nodes = Reflector(client.CoreV1Api(api).list_node, name="nodes", transform=node_view)
        self.domains = ComputeDomainController(
            api, ctx.registry, self.nodes, DomainApi(api, dra_version)
        )
        self.channels = (
            KwokChannelPublisher(
                SliceApi(api, dra_version), self.nodes, ctx.registry, settings.instance
            )
            if settings.kwok_channels
            else None
        )

    def _pumps(self) -> list[tuple[Reflector, Callable[[WatchEvent], None]]]:
        def on_node(event: WatchEvent) -> None:
            self.domains.on_node(event)
            if self.channels is not None:
                self.channels.on_node(event)

        pumps: list[tuple[Reflector, Callable[[WatchEvent], None]]] = [
            (self.nodes, on_node),
            (self.domains.domains, self.domains.on_domain),
            (self.domains.templates, self.domains.on_template),
            (self.domains.claims, self.domains.on_claim),
        ]
        if self.channels is not None:
            pumps.append((self.channels.slices, self.channels.on_slice))
        return pumps

    async def run(self, ctx: ServiceContext, elector: Any) -> None:
        ctx.readiness.require("synced")
        stop = ctx.stop
        async with asyncio.TaskGroup() as group:
            pumps = self._pumps()
            tasks = [group.create_task(_pump(r, h, stop)) for r, h in pumps]
            if await wait_until(stop, *(r.synced.wait() for r, _ in pumps)):
                if elector is None:
                    await self._write(ctx, stop)
                else:
                    ctx.readiness.set("synced")
                    log.info("controller.standby_synced", domains=len(self.domains.domain_keys()))
                    await elector.lead(stop, lambda lost: self._write(ctx, lost))
            for task in tasks:
                task.cancel()

    async def _write(self, ctx: ServiceContext, stop: asyncio.Event) -> None:
        """Reconcile everything, then follow changes until ``stop`` (stopping, or the Lease
        lost)."""
        queues = [self.domains.queue] + ([self.channels.queue] if self.channels else [])
        for key in self.domains.domain_keys():
            self.domains.queue.add(key)
        if self.channels is not None:
            for node in self.channels.node_keys():
                self.channels.queue.add(node)
        async with asyncio.TaskGroup() as group:
            workers = [
                group.create_task(self.domains.worker()) for _ in range(self.settings.workers)
            ]
            if self.channels is not None:
                workers += [
                    group.create_task(self.channels.worker()) for _ in range(self.settings.workers)
                ]
            if await wait_until(stop, *(q.wait_idle() for q in queues)):
                ctx.readiness.set("synced")
                log.info(
                    "controller.synced",
                    domains=len(self.domains.domain_keys()),
                    kwok_channels=self.channels is not None,
                )
                workers.append(group.create_task(self._resync(ctx, stop)))
                await stop.wait()
            for task in workers:
                task.cancel()

    async def _resync(self, ctx: ServiceContext, stop: asyncio.Event) -> None:
        while not await ctx.sleep(self.settings.resync_seconds) and not stop.is_set():
            for key in self.domains.domain_keys():
                self.domains.queue.add(key)
            if self.channels is not None:
                for node in self.channels.node_keys():
                    self.channels.queue.add(node)


async def _pump(
    reflector: Reflector, handler: Callable[[WatchEvent], None], stop: asyncio.Event
) -> None:
    async for event in reflector.events(stop):
        handler(event)


async def serve(settings: Settings, ctx: ServiceContext | None = None) -> int:
    ctx = ctx or ServiceContext(name=COMPONENT)
    lease = f"fgo-{COMPONENT}"
    async with elected_client(settings.kubeconfig or None, settings, lease, ctx) as (api, elector):
        dra_version = await dra_version_of(api)
        if dra_version is None:
            return 1  # dra.api_not_served said why, in one line
        service = Service(api, settings, ctx, dra_version)

        async def controller(c: ServiceContext) -> None:
            await service.run(c, elector)

        return await run_tasks(ctx, {"controller": controller}, health_port=settings.health_port)


def _start(settings: Settings) -> int:
    configure_logging(COMPONENT, settings.log_level)
    return asyncio.run(serve(settings))


def main() -> int:
    return service_main(
        component=COMPONENT,
        prog="fgo-compute-domain-controller",
        description="ComputeDomains (resource.nvidia.com/v1beta1): workload "
        "ResourceClaimTemplates, status from the channel claims' allocations, deletion order; "
        "channel-0 ResourceSlices of driver compute-domain.nvidia.com for KWOK nodes.",
        settings_cls=Settings,
        start=_start,
    )
