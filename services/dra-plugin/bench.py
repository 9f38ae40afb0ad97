"""Benchmark: NodePrepareResources / NodeUnprepareResources latency as the kubelet sees it.

    uv run python services/dra-plugin/bench.py [--claims 200] [--batch 10] [--state-dir DIR]

Runs the plugin in-process against a local control plane (throw-away unless ``--state-dir``
names a running one) and drives it with the kubelet-side peer over the real unix-socket gRPC
protocol. Every claim exists in the API server, allocated (status written as the scheduler
writes it) to one of the node's 8 GPUs. Measured per call, from the peer:

* ``prepare``: first prepare of one claim (claim read from the API server, CDI spec written,
  checkpoint fsync'd);
* ``prepare_cached``: the kubelet repeating the call (answered from the checkpoint);
* ``prepare_batch``: ``--batch`` claims in one call (the kubelet batches a pod's claims);
* ``unprepare``: one claim (checkpoint fsync'd, CDI spec removed).

No public benchmark exists to compare with (peers-and-standards.md §7); the NVIDIA driver's
prepare does real work (MIG, IMEX) and reports seconds in its own metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fgo_common.config import parse_cluster_config
from fgo_common.kube.client import api_client
from fgo_common.nodebuild import build_node_topology
from fgo_common.runtime.logging import configure_logging
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import NODE_NAME_LABEL, NODE_TOPOLOGY_LABEL, TOPOLOGY_DATA_KEY
from fgo_dra_plugin.plugin import DraPlugin
from fgo_dra_plugin.settings import Settings
from fgo_kubelet_api import dra_v1
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import create_namespace, delete_namespace, unique_name
from fgo_testkit.kubelet import DraKubeletPeer, claim
from kubernetes_asyncio import client

DRIVER = "gpu.nvidia.com"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 2)

    return {
        "calls": len(ms),
        "p50_ms": pct(0.5),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": round(ms[-1], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


async def timed(samples: list[float], call: Any) -> Any:
    started = time.perf_counter()
    result = await call
    samples.append(time.perf_counter() - started)
    return result


def check(response: dra_v1.pb2.NodePrepareResourcesResponse) -> None:
    errors = {uid: r.error for uid, r in response.claims.items() if r.error}
    if errors:
        raise RuntimeError(f"prepare failed: {errors}")


async def make_claims(
    api: client.ApiClient, namespace: str, node: str, count: int, prefix: str
) -> list[dra_v1.pb2.Claim]:
    resource: Any = client.ResourceV1Api(api)
    request = {"name": "gpu", "exactly": {"deviceClassName": DRIVER}}
    semaphore = asyncio.Semaphore(16)

    async def one(i: int) -> dra_v1.pb2.Claim:
        name = f"{prefix}{i}"
        async with semaphore:
            created = await resource.create_namespaced_resource_claim(
                namespace,
                {"metadata": {"name": name}, "spec": {"devices": {"requests": [request]}}},
            )
            result = {"request": "gpu", "driver": DRIVER, "pool": node, "device": f"gpu-{i % 8}"}
            await resource.patch_namespaced_resource_claim_status(
                name, namespace, {"status": {"allocation": {"devices": {"results": [result]}}}}
            )
        return claim(created.metadata.uid, name, namespace)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    owns_cluster = args.state_dir is None
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="fgo-bench-prepare-"))
    cluster = LocalCluster(state_dir, progress=say)
    await cluster.start(wait=True)
    root = Path(tempfile.mkdtemp(prefix="fgo-dra-b-", dir="/tmp"))
    try:
        async with api_client(str(cluster.kubeconfig)) as api:
            core: Any = client.CoreV1Api(api)
            namespace = unique_name("bench-prepare", 30)
            node = unique_name("bench-dra-node", 30)
            await create_namespace(api, namespace)
            await core.create_node({"metadata": {"name": node}})
            config = parse_cluster_config(
                {"nodePools": {"p": {"gpus": [{"type": "h100", "count": 8}]}}}
            )
            topology = build_node_topology(node, config.pools["p"], config, kwok=False)
            await core.create_namespaced_config_map(
                namespace,
                {
                    "metadata": {
                        "name": f"topology-{node}",
                        "labels": {NODE_NAME_LABEL: node, NODE_TOPOLOGY_LABEL: "true"},
                    },
                    "data": {TOPOLOGY_DATA_KEY: topology.to_yaml()},
                },
            )
            settings = load_settings(
                Settings,
                {
                    "NODE_NAME": node,
                    "TOPOLOGY_CM_NAMESPACE": namespace,
                    "KUBELET_REGISTRAR_DIRECTORY_PATH": str(root / "registry"),
                    "KUBELET_PLUGINS_DIRECTORY_PATH": str(root / "plugins"),
                    "CDI_ROOT": str(root / "cdi"),
                    "STATE_DIR": str(root / "state"),
                    "HEALTHCHECK_PORT": "0",
                },
            )
            ctx = ServiceContext(name="dra-plugin")
            plugin = DraPlugin(api, settings, ctx)
            tasks = [
                asyncio.create_task(plugin.node.run(ctx)),
                asyncio.create_task(plugin.serve_kubelet(ctx)),
            ]
            try:
                async with DraKubeletPeer(root / "registry") as peer:
                    connection = await peer.wait_for_plugin(DRIVER, timeout_seconds=60)
                    await asyncio.wait_for(plugin.node.synced.wait(), 60)
                    say(f"creating {args.claims + args.batch * 10} allocated claims")
                    claims = await make_claims(api, namespace, node, args.claims, "single-")
                    batch_claims = await make_claims(
                        api, namespace, node, args.batch * 10, "batch-"
                    )
                    prepare: list[float] = []
                    cached: list[float] = []
                    unprepare: list[float] = []
                    batch: list[float] = []
                    for ref in claims:
                        check(await timed(prepare, connection.prepare([ref])))
                    for ref in claims:
                        check(await timed(cached, connection.prepare([ref])))
                    for ref in claims:
                        await timed(unprepare, connection.unprepare([ref]))
                    for i in range(0, len(batch_claims), args.batch):
                        check(
                            await timed(batch, connection.prepare(batch_claims[i : i + args.batch]))
                        )
                    return {
                        "prepare": summary(prepare),
                        "prepare_cached": summary(cached),
                        f"prepare_batch_of_{args.batch}": summary(batch),
                        "unprepare": summary(unprepare),
                        "service": connection.service,
                    }
            finally:
                ctx.stop.set()
                await asyncio.gather(*tasks)
                await delete_namespace(api, namespace)
                await core.delete_node(node)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if owns_cluster:
            await cluster.stop(purge=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--state-dir", help="use this (running) local cluster")
    args = parser.parse_args()
    configure_logging("bench", "WARNING", json=False)
    print(json.dumps(asyncio.run(main_async(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
