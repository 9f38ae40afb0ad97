"""Entry point of the status-updater service."""

from __future__ import annotations

import asyncio

import structlog
from fgo_common.kube.leader import elected_client
from fgo_common.runtime.entry import service_main
from fgo_common.runtime.logging import configure_logging
from fgo_common.runtime.runner import ServiceContext, run_tasks, split_leader_tasks

from fgo_status_updater.controller import Controller
from fgo_status_updater.settings import Settings

COMPONENT = "status-updater"
log = structlog.get_logger(__name__)


async def serve(settings: Settings, ctx: ServiceContext | None = None) -> int:
    """Run the controller until SIGTERM/SIGINT (or ``ctx.stop``); returns the exit code."""
    ctx = ctx or ServiceContext(name=COMPONENT)
    lease = f"fgo-{COMPONENT}"
    async with elected_client(settings.kubeconfig or None, settings, lease, ctx) as (api, elector):
        controller = Controller(api, settings, ctx)
        log.info(
            "status_updater.starting",
            namespace=controller.namespace,
            config=settings.topology_cm_name,
            reservation_namespace=settings.reservation_namespace,
            prometheus=settings.prometheus_url,
            leader_election=elector is not None,
        )
        # Watches run on every replica (warm caches, Ready); workers, resync, the Knative
        # poller and the PrometheusRule controller (everything that writes) only on the leader.
        tasks = split_leader_tasks(controller.tasks(), elector, followers=("watch-",))
        return await run_tasks(ctx, tasks, health_port=settings.health_port)


def _start(settings: Settings) -> int:
    configure_logging(COMPONENT, settings.log_level)
    return asyncio.run(serve(settings))


def main() -> int:
    return service_main(
        component=COMPONENT,
        prog="fgo-status-updater",
        description="Central controller of the fake GPU operator: writes each GPU node's "
        "topology record (GPUs, health, MIG, holders, utilisation) from the topology ConfigMap, "
        "nodes, pods and ResourceClaims.",
        settings_cls=Settings,
        start=_start,
    )
