"""Start-up of a DRA publisher: which resource.k8s.io version to write, found without blocking
the health server.

The served version is known only once the apiserver answers API discovery. Asking before the
service's tasks start would keep its health port closed for as long as the apiserver is away
(liveness probes fail, the kubelet restarts it: a crash loop while the API is down). So the
tasks start at once behind this gate: /healthz answers, /readyz says ``waiting for:
dra-api-version`` until discovery answers, transient errors are retried with back-off for as
long as it takes, and where no written version is served the service stops with exit code 1
after one error line (``dra.api_not_served``).
"""

from __future__ import annotations

import asyncio

import structlog
from kubernetes_asyncio import client

from fgo_common.kube.errors import describe_error, is_auth_failure, is_transient
from fgo_common.kube.retry import Backoff
from fgo_common.kube.served import DRA_GROUP, SliceApi, dra_version_of
from fgo_common.runtime.runner import ServiceContext, TaskFactory

log = structlog.get_logger(__name__)

READINESS = "dra-api-version"


class DraVersionGate:
    """Holds a DRA publisher's tasks until :class:`SliceApi` knows the version to write."""

    def __init__(self, api: client.ApiClient, slices: SliceApi, ctx: ServiceContext) -> None:
        self._api = api
        self._slices = slices
        self._lock = asyncio.Lock()
        self._decided = False
        self.not_served = False
        ctx.readiness.require(READINESS)

    def wrap(self, tasks: dict[str, TaskFactory]) -> dict[str, TaskFactory]:
        return {name: self._gated(factory) for name, factory in tasks.items()}

    def _gated(self, factory: TaskFactory) -> TaskFactory:
        async def run(ctx: ServiceContext) -> None:
            if await self._open(ctx):
                await factory(ctx)

        return run

    async def _open(self, ctx: ServiceContext) -> bool:
        async with self._lock:
            if not self._decided:
                version = await self._discover(ctx)
                if ctx.stop.is_set():
                    return False
                self._decided = True
                if version is None:
                    self.not_served = True
                    ctx.stop.set()  # serve() turns this into exit code 1
                else:
                    self._slices.use(version)
                    ctx.readiness.set(READINESS)
        return not self.not_served and not ctx.stop.is_set()

    async def _discover(self, ctx: ServiceContext) -> str | None:
        backoff = Backoff(initial_seconds=0.5, max_seconds=15.0)
        attempt = 0
        while True:
            try:
                return await dra_version_of(self._api)
            except Exception as exc:
                if not (is_transient(exc) or is_auth_failure(exc)):
                    raise
                delay = backoff.delay(attempt)
                attempt += 1
                # The first failures are expected at start-up (the apiserver restarting);
                # say so once at info, then at warning only every tenth try.
                level = log.info if attempt == 1 else log.warning
                if attempt == 1 or attempt % 10 == 0:
                    level(
                        "dra.discovery_retry",
                        group=DRA_GROUP,
                        attempt=attempt,
                        delay=round(delay, 2),
                        error=describe_error(exc, 200),
                    )
                if await ctx.sleep(delay):
                    return None
