"""A Knative scrape target for tests: ``revision_app_request_count`` of some pods, each counter
growing at its own rate, for a real Prometheus to scrape and the status-updater to query."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from fgo_localcluster.layout import fresh_port


@dataclass
class _Series:
    banked: float
    since: float
    rate: float

    def value(self, now: float) -> float:
        return self.banked + self.rate * (now - self.since)


class KnativeRequestCounters:
    """Serves ``/metrics`` on a free loopback port; :meth:`set_rate` keeps a counter
    continuous (what it counted so far is kept), as a real counter would be."""

    def __init__(self, namespace: str, rates: dict[str, float]) -> None:
        self.namespace = namespace
        now = time.monotonic()
        self._series = {pod: _Series(0.0, now, rate) for pod, rate in rates.items()}
        self.port = fresh_port()
        self._runner: web.AppRunner | None = None

    def set_rate(self, rate: float, pod: str | None = None) -> None:
        """Change one pod's rate (``pod`` may be left out when there is only one)."""
        if pod is None:
            (pod,) = self._series
        now = time.monotonic()
        series = self._series[pod]
        self._series[pod] = _Series(series.value(now), now, rate)

    @property
    def rates(self) -> dict[str, float]:
        return {pod: series.rate for pod, series in self._series.items()}

    def value(self, pod: str) -> float:
        return self._series[pod].value(time.monotonic())

    async def _metrics(self, _: web.Request) -> web.Response:
        now = time.monotonic()
        lines = ["# TYPE revision_app_request_count counter"]
        for pod, series in self._series.items():
            lines.append(
                f'revision_app_request_count{{namespace="{self.namespace}",pod="{pod}"}} '
                f"{series.value(now):.3f}"
            )
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get("/metrics", self._metrics)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
