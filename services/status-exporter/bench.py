"""Benchmark of the multi-node (KWOK) exporter: scrape latency, body size, RSS and CPU.

Builds N synthetic node records (8 GPUs each by default, half of the GPUs held by a pod, the way
the status-updater writes them), feeds them through the same ConfigMap parsing path the watch
uses, serves them with the real aiohttp endpoint on a loopback port, and scrapes it like
Prometheus does (gzip accepted) and uncompressed. In-process: no cluster needed.

    uv run python services/status-exporter/bench.py [--nodes 1000] [--gpus 8] [--scrapes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from fgo_common.config import load_cluster_config
from fgo_common.names import DCGM_NAMES
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import Holder, PodUsage, UtilizationRange
from fgo_status_exporter.dcgm import DcgmCollector, ExporterOptions, ServedNode
from fgo_status_exporter.gfd import GfdLabeler
from fgo_status_exporter.server import build_metrics_app
from fgo_status_exporter.store import TopologyStore


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_configmaps(nodes: int, gpus: int, gpu_type: str) -> list[dict[str, Any]]:
    config = load_cluster_config(
        f"nodePools: {{p: {{gpus: [{{type: {gpu_type}, count: {gpus}}}]}}}}"
    )
    pool = config.pools["p"]
    now = time.time()
    out = []
    for n in range(nodes):
        name = f"kwok-gpu-node-{n:04d}"
        record = build_node_topology(name, pool, config, kwok=True)
        for gpu in record.gpus[: gpus // 2]:  # half the GPUs busy, one pod each
            uid = f"{name}-pod-{gpu.index}"
            gpu.status.holders.append(Holder("team-a", f"train-{n}-{gpu.index}", "main", uid))
            gpu.status.usage[uid] = PodUsage(
                UtilizationRange(60, 100), 40_000, namespace="team-a", pod=uid, since=now - 600
            )
        out.append(
            {
                "metadata": {
                    "name": f"topology-{name}",
                    "namespace": "gpu-operator",
                    "labels": {"node-topology": "true", "node-name": name},
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                },
                "data": {"topology.yml": record.to_yaml()},
            }
        )
    return out


async def scrape(url: str, encoding: str) -> tuple[float, int]:
    """One scrape by curl in its own process, so the client's CPU and memory are not counted
    as the exporter's; returns (latency, bytes received)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-H", f"Accept-Encoding: {encoding}",
        "-w", "%{time_total} %{size_download} %{http_code}", url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    latency, size, code = out.decode().split()
    assert code == "200", code
    return float(latency), int(size)


def reset_peak_rss() -> None:
    """Start a new VmHWM window (Linux: writing 5 to clear_refs resets the peak RSS)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(args: argparse.Namespace) -> dict[str, Any]:
    configmaps = build_configmaps(args.nodes, args.gpus, args.gpu_type)
    gc.collect()
    rss_start = rss_mib()
    store = TopologyStore(accept=lambda parsed: parsed.kwok)
    t0 = time.perf_counter()
    for cm in configmaps:
        store.apply(f"gpu-operator/{cm['metadata']['name']}", cm, "topology")
    parse_s = time.perf_counter() - t0
    del configmaps
    gc.collect()
    rss_records = rss_mib()

    collector = DcgmCollector(ExporterOptions(names=DCGM_NAMES))

    def served() -> list[ServedNode]:
        return [ServedNode(t, name) for name, t in sorted(store.nodes.items())]

    # Real HTTP scrapes first (the service's memory profile), then the phases in-process.
    def served_node(name: str) -> ServedNode | None:
        topology = store.nodes.get(name)
        return None if topology is None else ServedNode(topology, name)

    reset_peak_rss()
    server = TestServer(
        build_metrics_app(
            collector, served, served_node=served_node, served_names=lambda: list(store.nodes)
        )
    )
    await server.start_server()
    url = str(server.make_url("/metrics"))
    results: dict[str, dict[str, float]] = {}
    for encoding in ("gzip", "identity"):
        latencies, cpus, sizes = [], [], []
        for _ in range(args.scrapes):
            cpu_before = time.process_time()
            latency, size = await scrape(url, encoding)
            cpus.append(time.process_time() - cpu_before)
            latencies.append(latency)
            sizes.append(size)
        results[encoding] = {
            "latency_p50_s": round(statistics.median(latencies), 3),
            "latency_max_s": round(max(latencies), 3),
            "cpu_per_scrape_s": round(statistics.median(cpus), 3),
            "body_bytes": int(statistics.median(sizes)),
        }
    # Per-node targets (/metrics/<node>, as listed by /http_sd): each node's first scrape in a
    # bucket builds its page, as Prometheus scraping every target once per interval does.
    for encoding in ("gzip", "identity"):
        latencies, cpus, sizes = [], [], []
        for name in sorted(store.nodes)[: args.node_targets]:
            cpu_before = time.process_time()
            latency, size = await scrape(str(server.make_url(f"/metrics/{name}")), encoding)
            cpus.append(time.process_time() - cpu_before)
            latencies.append(latency)
            sizes.append(size)
        if latencies:
            results[f"node-target-{encoding}"] = {
                "latency_p50_s": round(statistics.median(latencies), 4),
                "latency_max_s": round(max(latencies), 4),
                "cpu_per_scrape_s": round(statistics.median(cpus), 4),
                "body_bytes": int(statistics.median(sizes)),
            }
    await server.close()
    gc.collect()
    rss_after_scrapes = rss_mib()
    peak_after_scrapes = peak_rss_mib()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    entities = collector.entities(served(), time.time())
    sample_s = time.perf_counter() - wall0
    wall1 = time.perf_counter()
    size = series = 0
    for chunk in collector.render(entities):
        size += len(chunk)
        series += chunk.count("\n") - 2  # minus the HELP and TYPE lines
    render_s = time.perf_counter() - wall1
    phases_cpu = time.process_time() - cpu0
    del entities

    t1 = time.perf_counter()
    labeler = GfdLabeler()
    for topology in store.nodes.values():
        labeler.labels(topology)
    labels_s = time.perf_counter() - t1
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "nodes": args.nodes,
        "gpus_per_node": args.gpus,
        "gpu_type": args.gpu_type,
        "series": series,
        "uncompressed_body_bytes": size,
        "configmap_parse_all_s": round(parse_s, 3),
        "sample_s": round(sample_s, 3),
        "render_s": round(render_s, 3),
        "sample_and_render_cpu_s": round(phases_cpu, 3),
        "gfd_labels_all_nodes_s": round(labels_s, 3),
        "http": results,
        "rss_mib": {
            "before_records": round(rss_start, 1),
            "after_records": round(rss_records, 1),
            "after_scrapes": round(rss_after_scrapes, 1),
            "peak_during_scrapes": round(peak_after_scrapes, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument(
        "--node-targets", type=int, default=50, help="per-node targets scraped (/metrics/<node>)"
    )
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-type", default="H100")
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
