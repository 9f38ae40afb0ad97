"""The dcgm-exporter endpoint: ``GET /metrics`` computed at request time, streamed.

Sampling and rendering run in a worker thread on a snapshot of the served records (records are
replaced, never mutated, when a ConfigMap changes), so the event loop keeps answering probes and
consuming watch events during a large scrape. The body is sent family by family, gzip-compressed
when the scraper accepts it (Prometheus does), so a 1000-node scrape never sits in memory whole.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from fgo_status_exporter.dcgm import DcgmCollector, ServedNode

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (``gzip`` or ``*`` with a non-zero q)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
        try:
            if float(q) > 0:
                return True
        except ValueError:
            continue
    return False


class ScrapeStats:
    """The exporter's own numbers about its scrapes (served on the health port's /metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "fgo_status_exporter_scrape_duration_seconds",
            "Time to compute and send one dcgm-exporter scrape.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.bytes = Counter(
            "fgo_status_exporter_scrape_bytes",
            "Uncompressed bytes of dcgm-exporter text served.",
            registry=registry,
        )


def build_metrics_app(
    collector: DcgmCollector,
    served: Callable[[], Sequence[ServedNode]],
    *,
    clock: Callable[[], float] = time.time,
    stats: ScrapeStats | None = None,
) -> web.Application:
    async def metrics(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        nodes = list(served())
        t = clock()
        entities = await asyncio.to_thread(collector.entities, nodes, t)
        chunks = collector.render(entities)
        gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        # Level 1: the text is so repetitive that it still shrinks ~8x, at a fraction of the
        # CPU of the default level (which would cost more than computing the scrape).
        packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzip else None
        headers = {"Content-Type": TEXT_FORMAT}
        if packer is not None:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        sent = 0

        def render_next() -> bytes | None:
            chunk = next(chunks, None)
            return None if chunk is None else chunk.encode()

        data = await asyncio.to_thread(render_next)
        while data is not None:
            sent += len(data)
            if packer is not None:
                # Compress this family while the next one renders: zlib releases the GIL, so on
                # two cores the compression is nearly free in wall time.
                data_next, piece = await asyncio.gather(
                    asyncio.to_thread(render_next), asyncio.to_thread(packer.compress, data)
                )
            else:
                piece, data_next = data, None
            if piece:
                await response.write(piece)
            data = data_next if packer is not None else await asyncio.to_thread(render_next)
        if packer is not None:
            await response.write(packer.flush())
        await response.write_eof()
        if stats is not None:
            stats.duration.observe(time.perf_counter() - started)
            stats.bytes.inc(sent)
        return response

    async def health(_: web.Request) -> web.Response:
        # dcgm-exporter answers /health with 200 when it can collect.
        return web.Response(text="OK")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/health", health)])
    return app
