"""One small aiohttp app per service: /healthz, /readyz and /metrics (own registry)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Readiness:
    """Named readiness conditions; the service is ready when all are true."""

    def __init__(self) -> None:
        self._conditions: dict[str, bool] = {}
        self.notes: dict[str, str] = {}  # facts shown by /readyz?verbose, not conditions
        self.changed = asyncio.Event()

    def require(self, name: str) -> None:
        self._conditions.setdefault(name, False)

    def set(self, name: str, ready: bool = True) -> None:
        self._conditions[name] = ready
        self.changed.set()

    @property
    def ready(self) -> bool:
        return all(self._conditions.values())

    def describe(self) -> dict[str, bool]:
        return dict(self._conditions)


def build_health_app(
    readiness: Readiness,
    registry: CollectorRegistry,
    *,
    liveness: Callable[[], bool] = lambda: True,
    extra_routes: list[web.RouteDef] | None = None,
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return (
            web.Response(text="ok\n")
            if liveness()
            else web.Response(status=503, text="unhealthy\n")
        )

    async def readyz(request: web.Request) -> web.Response:
        status = 200 if readiness.ready else 503
        if "verbose" in request.query:
            # The kube-apiserver's /readyz?verbose layout: one [+]/[-] line per check.
            lines = [
                f"[{'+' if ok else '-'}]{name} {'ok' if ok else 'failed'}"
                for name, ok in readiness.describe().items()
            ]
            lines += [f"{key}={value}" for key, value in sorted(readiness.notes.items())]
            lines.append("readyz check passed" if status == 200 else "readyz check failed")
            return web.Response(status=status, text="\n".join(lines) + "\n")
        if readiness.ready:
            return web.Response(text="ok\n")
        pending = ", ".join(k for k, v in readiness.describe().items() if not v)
        return web.Response(status=503, text=f"waiting for: {pending}\n")

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            *(extra_routes or []),
        ]
    )
    return app


async def serve_app(app: web.Application, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve ``app`` until ``stop`` is set."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
