"""Scenario 3, exporter: latency and size of one scrape of the KWOK-mode status-exporter's
``/metrics`` (every KWOK node's GPUs, as one dcgm-exporter-format page), at the node count
bring-up left (1000 nodes x 8 GPUs in the full run). Scrapes run one after another, plain and
with ``Accept-Encoding: gzip`` as Prometheus sends it.
"""

from __future__ import annotations

import re
import time

import aiohttp

from bench import stats
from bench.results import ScenarioResult, Target
from bench.scenarios.context import RunContext

NAME = "exporter"
TITLE = "Exporter scrape latency and size"
NEEDS_CLUSTER = True
TARGET_GPUS = 8000
TARGET_SECONDS = 0.5
_UUID = re.compile(r'UUID="([^"]+)"')


def describe_page(text: str) -> dict[str, int]:
    series = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    families = sum(1 for ln in text.splitlines() if ln.startswith("# TYPE"))
    return {"series": len(series), "families": families, "gpus": len(set(_UUID.findall(text)))}


async def run(ctx: RunContext, result: ScenarioResult) -> None:
    env = ctx.require_env()
    cfg = ctx.config
    if env.exporter_url is None:
        raise RuntimeError("no KWOK-mode status-exporter Deployment in the chart")
    result.params.update(scrapes=cfg.scrapes, nodes=len(env.node_names), url=env.exporter_url)
    timeout = aiohttp.ClientTimeout(total=120)
    plain: list[float] = []
    gzipped: list[float] = []
    async with env.phase("exporter-scrape"), aiohttp.ClientSession(timeout=timeout) as session:
        for i in range(cfg.scrapes):
            t0 = time.monotonic()
            async with session.get(
                env.exporter_url, headers={"Accept-Encoding": "identity"}
            ) as resp:
                body = await resp.read()
            plain.append(time.monotonic() - t0)
            if i == 0:
                page = describe_page(body.decode(errors="replace"))
                result.figure("bytes", len(body), stats.fmt_bytes(len(body)))
                result.figure(
                    "page",
                    page,
                    f"{page['series']} series in {page['families']} "
                    f"families for {page['gpus']} GPUs",
                )
            result.say(f"scrape {i + 1}/{cfg.scrapes}: {stats.fmt_seconds(plain[-1])}")
        for _ in range(max(1, cfg.scrapes // 2)):
            t0 = time.monotonic()
            async with session.get(
                env.exporter_url, headers={"Accept-Encoding": "gzip"}, auto_decompress=False
            ) as resp:
                zbody = await resp.read()
                encoding = resp.headers.get("Content-Encoding", "")
            gzipped.append(time.monotonic() - t0)
        result.figure(
            "gzip_bytes",
            len(zbody) if encoding == "gzip" else None,
            f"{stats.fmt_bytes(len(zbody))} with gzip"
            if encoding == "gzip"
            else "server does not gzip",
        )
    result.figure(
        "latency_s",
        stats.summarize(plain),
        f"p50 {stats.fmt_seconds(stats.percentile(plain, 50))}, "
        f"p95 {stats.fmt_seconds(stats.percentile(plain, 95))}, "
        f"max {stats.fmt_seconds(max(plain))}",
    )
    result.figure(
        "gzip_latency_s",
        stats.summarize(gzipped),
        f"p50 {stats.fmt_seconds(stats.percentile(gzipped, 50))}",
    )
    result.series["scrape_latency_s"] = [[i + 1, v] for i, v in enumerate(plain)]
    gpus = result.figures["page"]["gpus"]
    p50 = stats.percentile(plain, 50)
    if gpus:
        result.figure("per_gpu_ms", p50 / gpus * 1000, f"{p50 / gpus * 1e6:.0f} us per GPU")
    # CPU the exporter spent per scrape (from /proc over the phase): unlike the wall time it
    # does not depend on what else the host runs.
    phase = ctx.sampler.summary("exporter-scrape")
    cpu = sum(ps.cpu_seconds for name, ps in phase.procs.items() if name in env.exporter_names())
    per_scrape = cpu / (len(plain) + len(gzipped))
    result.figure(
        "cpu_per_scrape_s", per_scrape, f"{stats.fmt_seconds(per_scrape)} of CPU per scrape"
    )
    note = (
        f"p95 {stats.fmt_seconds(stats.percentile(plain, 95))}; the exporter used "
        f"{stats.fmt_seconds(per_scrape)} of CPU per scrape, other work on the host "
        f"{phase.other_cores:.1f} cores"
    )
    measured: float | None = p50
    if gpus < TARGET_GPUS:
        measured = None
        note = (
            f"not measured at {TARGET_GPUS} GPUs (served {gpus}); at the measured "
            f"{p50 / max(gpus, 1) * 1000:.3f} ms per GPU, {TARGET_GPUS} GPUs would take "
            f"~{p50 / max(gpus, 1) * TARGET_GPUS:.2f} s if it scales linearly"
        )
    result.target(
        Target(
            f"multi-node exporter scrape, {TARGET_GPUS} GPUs (p50)",
            "<",
            TARGET_SECONDS,
            "s",
            measured,
            note,
        )
    )
