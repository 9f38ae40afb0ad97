"""Task supervision for long-running services (kopf's reactor is the model).

``run_service`` starts named coroutines in one TaskGroup next to the health/metrics server.
SIGTERM/SIGINT set the stop event; every task is expected to return when it is set. A task that
ends (or raises) while the service should be running stops the whole service with exit code 1,
so Kubernetes restarts it; a hard-exit timer shorter than the pod's grace period guarantees the
process never hangs on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from fgo_common.runtime.health import Readiness, build_health_app, serve_app
from fgo_common.runtime.memory import (
    limit_malloc_arenas,
    release_freed_heap,
    trim_periodically,
    trim_when_ready,
)

if TYPE_CHECKING:
    from fgo_common.kube.leader import LeaderElector

log = structlog.get_logger(__name__)

TaskFactory = Callable[["ServiceContext"], Awaitable[None]]

TRIM_INTERVAL_SECONDS = 30.0
MALLOC_ARENAS = 2  # the event loop's thread and every other thread share the second


@dataclass
class ServiceContext:
    """What every task of a service shares."""

    name: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    readiness: Readiness = field(default_factory=Readiness)
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )
    extra_routes: list[web.RouteDef] = field(default_factory=list)

    async def until_stopped(self, work: Awaitable[object]) -> None:
        """Run ``work`` until it ends or the service stops (then cancel it); re-raise what it
        raised. Watches block on the network, so tasks wrap them in this to honour SIGTERM."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.done() and not task.cancelled():
            task.result()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; returns True if the service is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        return self.stop.is_set()


class ServiceFailed(RuntimeError):
    """An eternal task ended while the service was meant to keep running."""


async def _supervise(ctx: ServiceContext, name: str, factory: TaskFactory) -> None:
    try:
        await factory(ctx)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("task.crashed", task=name)
        ctx.stop.set()
        raise ServiceFailed(f"task {name} crashed: {exc}") from exc
    if not ctx.stop.is_set():
        log.error("task.exited", task=name)
        ctx.stop.set()
        raise ServiceFailed(f"task {name} exited while the service was running")


async def run_tasks(
    ctx: ServiceContext,
    tasks: dict[str, TaskFactory],
    *,
    health_host: str = "0.0.0.0",  # noqa: S104 - probes come from the kubelet on the pod IP
    health_port: int | None = 8080,
    shutdown_timeout_seconds: float = 20.0,
) -> int:
    """Run ``tasks`` until stopped; returns the process exit code."""
    limit_malloc_arenas(MALLOC_ARENAS)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.stop.set)

    async def hard_exit_timer() -> None:
        await ctx.stop.wait()
        await asyncio.sleep(shutdown_timeout_seconds)
        log.error("service.shutdown_timeout", seconds=shutdown_timeout_seconds)
        os._exit(1)

    all_tasks = dict(tasks)
    if health_port is not None:
        app = build_health_app(ctx.readiness, ctx.registry, extra_routes=ctx.extra_routes)

        async def health(c: ServiceContext) -> None:
            await serve_app(app, health_host, health_port, c.stop)

        all_tasks["health-server"] = health

    timer = asyncio.create_task(hard_exit_timer())
    release_freed_heap()
    trimmer = asyncio.create_task(
        trim_when_ready(lambda: ctx.readiness.ready, ctx.readiness.changed)
    )
    periodic_trimmer = asyncio.create_task(trim_periodically(TRIM_INTERVAL_SECONDS, ctx.stop))
    log.info("service.starting", tasks=sorted(all_tasks))
    code = 0
    try:
        async with asyncio.TaskGroup() as group:
            for name, factory in all_tasks.items():
                group.create_task(_supervise(ctx, name, factory), name=name)
    except* ServiceFailed as failures:
        for failure in failures.exceptions:
            log.error("service.failed", reason=str(failure))
        code = 1
    finally:
        timer.cancel()
        trimmer.cancel()
        periodic_trimmer.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("service.stopped", exit_code=code)
    return code


def split_leader_tasks(
    tasks: dict[str, TaskFactory], elector: LeaderElector | None, followers: tuple[str, ...]
) -> dict[str, TaskFactory]:
    """With an elector: the tasks whose names start with one of ``followers`` (watches that keep
    the caches warm) run always, the rest (everything that writes) only while this replica holds
    the Lease, as one task ``leader``; they are cancelled when the Lease is lost and started
    again on the next takeover, and one of them failing fails the service. Without an elector,
    ``tasks`` unchanged."""
    if elector is None:
        return tasks
    always = {n: f for n, f in tasks.items() if n.startswith(followers)}
    leading = {n: f for n, f in tasks.items() if not n.startswith(followers)}

    async def leader(ctx: ServiceContext) -> None:
        async def work(lost: asyncio.Event) -> None:
            log.info("leader.tasks_starting", tasks=sorted(leading))
            async with asyncio.TaskGroup() as group:
                for name, factory in leading.items():
                    group.create_task(_as_coroutine(factory(ctx)), name=name)
                await lost.wait()  # lead() cancels us right after: the group cancels its tasks

        await elector.lead(ctx.stop, work)

    return {**always, "leader": leader}


async def _as_coroutine(work: Awaitable[None]) -> None:
    await work


def run_service(name: str, tasks: dict[str, TaskFactory], **kwargs: object) -> int:
    """Synchronous entry point for console scripts."""
    ctx = ServiceContext(name=name)
    return asyncio.run(run_tasks(ctx, tasks, **kwargs))  # type: ignore[arg-type]
