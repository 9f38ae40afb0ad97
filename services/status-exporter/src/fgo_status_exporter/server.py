"""The dcgm-exporter endpoint: ``GET /metrics`` for the served records at request time.

The page of one set of records is the same for a whole telemetry bucket except for a few
families (``page.py``), so it is rendered once per bucket, kept compressed, and served from
there; while someone scrapes, the next bucket's page is rendered ahead in the background, so a
scrape only renders the energy counters. Records with faults, and records that changed after
their bucket's page was built (pod churn), are rendered straight at request time, family by
family (the original path, still the reference the page is tested against).

In kwok mode the nodes are also served one per target, as a real cluster's one dcgm-exporter per
node: ``GET /http_sd`` is a Prometheus HTTP service-discovery document listing
``/metrics/<node>`` for every served node with ``instance``/``node`` labels, and a scrape of
``/metrics/<node>`` costs that node's GPUs only (its own per-bucket page, built when scraped).

All rendering runs in a worker thread on a snapshot of the served records (records are replaced,
never mutated, when a ConfigMap changes), so the event loop keeps answering probes and consuming
watch events during a large scrape. Bodies are streamed, never built whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from aiohttp import web
from fgo_common.telemetry import BUCKET_SECONDS
from prometheus_client import CollectorRegistry, Counter, Histogram

from fgo_status_exporter.dcgm import DcgmCollector, ServedNode
from fgo_status_exporter.page import PageCache, bucket_of, gzip_pieces, plain_pieces

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Render the next bucket's page ahead only while someone scrapes: an unscraped exporter idles.
PREPARE_WHILE_SCRAPED_SECONDS = 120.0

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
        self.node_duration = Histogram(
            "fgo_status_exporter_node_scrape_duration_seconds",
            "Time to compute and send one per-node target's scrape (/metrics/<node>).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.bytes = Counter(
            "fgo_status_exporter_scrape_bytes",
            "Uncompressed bytes of dcgm-exporter text served.",
            registry=registry,
        )


def sd_targets(address: str, node_names: Sequence[str]) -> list[dict[str, Any]]:
    """The HTTP service-discovery document: one target group per node, all at ``address``
    (the exporter as Prometheus reaches it), told apart by ``__metrics_path__``. ``instance``
    and ``node`` are the node's name, as per-node dcgm-exporter targets relabelled by node
    give NVIDIA's dashboard; the series themselves carry ``Hostname`` as they always do."""
    return [
        {
            "targets": [address],
            "labels": {"__metrics_path__": f"/metrics/{name}", "instance": name, "node": name},
        }
        for name in node_names
    ]


def build_metrics_app(
    collector: DcgmCollector,
    served: Callable[[], Sequence[ServedNode]],
    *,
    clock: Callable[[], float] = time.time,
    stats: ScrapeStats | None = None,
    pages: PageCache | None = None,
    served_node: Callable[[str], ServedNode | None] | None = None,
    served_names: Callable[[], Sequence[str]] | None = None,
) -> web.Application:
    """The dcgm-exporter app. With ``served_node`` and ``served_names`` (kwok mode) it also
    serves ``/http_sd`` and the per-node targets ``/metrics/<node>``."""
    cache = pages if pages is not None else PageCache(collector)
    # Per-node targets: one page cache per node, holding only the current bucket, created on the
    # node's first scrape (nothing is rendered for nodes nobody scrapes).
    node_pages: dict[str, PageCache] = {}
    pruned_bucket = [0]
    # One thread builds pages, one serves their pieces. Not the default pool: glibc gives each
    # thread that allocates a lot its own malloc arena, and pages built in turn by six pool
    # threads kept ~70 MiB more RSS at 1000 nodes than these two.
    builder = ThreadPoolExecutor(1, thread_name_prefix="exporter-page-build")
    server = ThreadPoolExecutor(1, thread_name_prefix="exporter-page-serve")

    async def run_in(executor: ThreadPoolExecutor, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, func, *args)

    last_scrape = [-PREPARE_WHILE_SCRAPED_SECONDS]  # monotonic time of the latest scrape
    scraped = asyncio.Event()  # set by every scrape of /metrics; wakes the idle preparer

    async def metrics(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        last_scrape[0] = time.monotonic()
        scraped.set()
        nodes = list(served())
        t = clock()
        gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        page = await run_in(builder, cache.lookup, nodes, t)
        if page is None:
            sent, response = await straight(request, nodes, t, gzip=gzip)
        else:
            sizes: list[int] = []
            render = gzip_pieces if gzip else plain_pieces
            response = await stream(request, render(cache, page, t, sizes), gzip=gzip)
            sent = sum(sizes)
        if stats is not None:
            stats.duration.observe(time.perf_counter() - started)
            stats.bytes.inc(sent)
        return response

    async def node_metrics(request: web.Request) -> web.StreamResponse:
        assert served_node is not None and served_names is not None
        started = time.perf_counter()
        name = request.match_info["node"]
        node = served_node(name)
        if node is None:
            node_pages.pop(name, None)
            raise web.HTTPNotFound(text=f"no GPU node {name} is served here\n")
        t = clock()
        bucket = bucket_of(t)
        if bucket > pruned_bucket[0]:
            # Once per bucket: forget the pages of nodes gone or no longer scraped, and the label
            # text of nodes gone (the full page's scrapes do that themselves).
            pruned_bucket[0] = bucket
            for other, other_cache in list(node_pages.items()):
                newest = other_cache.newest()
                if newest is None or newest < bucket - 1:
                    del node_pages[other]
            collector.retain(served_names())
        node_cache = node_pages.get(name)
        if node_cache is None:
            node_cache = node_pages[name] = PageCache(collector, keep=1, all_served=False)
        gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        page = await run_in(builder, node_cache.lookup, [node], t)
        if page is None:
            sent, response = await straight(request, [node], t, gzip=gzip, all_served=False)
        else:
            sizes: list[int] = []
            render = gzip_pieces if gzip else plain_pieces
            response = await stream(request, render(node_cache, page, t, sizes), gzip=gzip)
            sent = sum(sizes)
        if stats is not None:
            stats.node_duration.observe(time.perf_counter() - started)
            stats.bytes.inc(sent)
        return response

    async def http_sd(request: web.Request) -> web.Response:
        assert served_names is not None
        return web.json_response(sd_targets(request.host, sorted(served_names())))

    async def stream(
        request: web.Request, pieces: Iterator[bytes], *, gzip: bool
    ) -> web.StreamResponse:
        headers = {"Content-Type": TEXT_FORMAT}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        while (piece := await run_in(server, next, pieces, None)) is not None:
            await response.write(piece)
        await response.write_eof()
        return response

    async def straight(
        request: web.Request,
        nodes: Sequence[ServedNode],
        t: float,
        *,
        gzip: bool,
        all_served: bool = True,
    ) -> tuple[int, web.StreamResponse]:
        entities = await asyncio.to_thread(
            functools.partial(collector.entities, nodes, t, all_served=all_served)
        )
        chunks = collector.render(entities)
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
        return sent, response

    async def prepare_ahead(_: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                if time.monotonic() - last_scrape[0] > PREPARE_WHILE_SCRAPED_SECONDS:
                    # Nobody scrapes the page: sleep until someone does (no timer at idle).
                    scraped.clear()
                    await scraped.wait()
                now = clock()
                # Early in each bucket, render the next one (any instant in a bucket gives its
                # page), and this one if scraping began in the previous bucket: one build per
                # bucket while scraped.
                await asyncio.sleep(max(0.0, (bucket_of(now) + 1) * BUCKET_SECONDS - now) + 0.5)
                if time.monotonic() - last_scrape[0] > PREPARE_WHILE_SCRAPED_SECONDS:
                    continue
                current = bucket_of(clock())
                for bucket in (current, current + 1):
                    if cache.has(bucket):
                        continue
                    try:
                        await run_in(builder, cache.build, list(served()), bucket)
                    except Exception:
                        log.exception("page.prepare_failed")  # a scrape renders it instead

        task = asyncio.create_task(loop(), name="exporter-page-ahead")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        builder.shutdown(wait=False, cancel_futures=True)
        server.shutdown(wait=False, cancel_futures=True)

    async def health(_: web.Request) -> web.Response:
        # dcgm-exporter answers /health with 200 when it can collect.
        return web.Response(text="OK")

    app = web.Application()
    app.cleanup_ctx.append(prepare_ahead)
    app.add_routes([web.get("/metrics", metrics), web.get("/health", health)])
    if served_node is not None and served_names is not None:
        app.add_routes([web.get("/metrics/{node}", node_metrics), web.get("/http_sd", http_sd)])
    return app
