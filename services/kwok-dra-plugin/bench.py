"""Benchmark: how fast the real kube-scheduler allocates claims against our ResourceSlices.

    uv run python services/kwok-dra-plugin/bench.py [--nodes 100] [--gpus 8] [--pods N]
        [--mode claim|template|both] [--state-dir DIR] [--json]

Sets up ``--nodes`` KWOK nodes with ``--gpus`` H100s each (topology records written like the
status-updater writes them), runs the kwok-dra-plugin controller in-process until every node's
slice is published, then creates one pod per GPU (default: all GPUs), each with its own
single-GPU claim, and measures until every pod is bound (its claim allocated by the scheduler):

* ``claim`` mode: the ResourceClaims are created up front and pods name them, so the number is
  the scheduler's own claim-allocation throughput (scheduler_perf runs its claim creation outside
  the scheduler too);
* ``template`` mode: pods carry a ResourceClaimTemplate, as users write them; the
  controller-manager's resourceclaim controller creates the claims, so its API client rate limit
  becomes part of the number.

Compare with scheduler_perf's DRA thresholds (../shared/spec/peers-and-standards.md §7):
SchedulingWithResourceClaimTemplate 5000 pods / 500 nodes >= 40 pods/s (typically > 51), steady
state 64-70 pods/s — on dedicated CI machines, with the scheduler's API rate limit raised.

Uses a throw-away local control plane unless ``--state-dir`` names a running one. The local
cluster runs kube-scheduler with its default API client limits (50 QPS, burst 100); binding a
DRA pod takes two writes (claim status, binding), which caps it near 25 pods/s once the burst is
spent. ``--scheduler-qps N`` replaces it for the run by the same binary and flags plus
``--kube-api-qps=N --kube-api-burst=2N``, as scheduler_perf does, to measure the scheduler itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fgo_common.config import parse_cluster_config
from fgo_common.kube.client import api_client
from fgo_common.kube.watch import Reflector
from fgo_common.nodebuild import build_node_topology
from fgo_common.runtime.logging import configure_logging
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.settings import load_settings
from fgo_common.topology import NODE_NAME_LABEL, NODE_TOPOLOGY_LABEL, TOPOLOGY_DATA_KEY
from fgo_kwok_dra_plugin.controller import KwokSliceController
from fgo_kwok_dra_plugin.settings import Settings
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    unique_name,
)
from kubernetes_asyncio import client

RUN_LABEL = "fgo.bench/dra-run"
TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}
REQUEST = {"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def gather_limited(coros: list[Any], limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


def pod(name: str, run: str, claim_ref: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {RUN_LABEL: run},
            "tolerations": [TOLERATION],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "main", "image": "pause", "resources": {"claims": [{"name": "gpu"}]}}
            ],
            "resourceClaims": [{"name": "gpu", **claim_ref}],
        },
    }


async def scheduled_times(core: Any, namespace: str, total: int, timeout_s: float) -> list[float]:
    """Watch until ``total`` pods are bound; the time each was first seen bound."""
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    pods = Reflector(core.list_namespaced_pod, name="bench-pods", namespace=namespace)

    async def follow() -> None:
        async for event in pods.events(stop):
            if event.type in ("ADDED", "MODIFIED") and event.obj["spec"].get("nodeName"):
                seen.setdefault(event.obj["metadata"]["name"], time.monotonic())
                if len(seen) >= total:
                    return

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await follow()
    stop.set()
    return sorted(seen.values())


async def run_mode(
    mode: str,
    api: client.ApiClient,
    run: str,
    pods: int,
    *,
    concurrency: int,
    timeout_s: float,
    prequeue: Scheduler | None = None,
) -> dict[str, Any]:
    core: Any = client.CoreV1Api(api)
    resource: Any = client.ResourceV1Api(api)
    namespace = unique_name(f"bench-{mode}", 30)
    await create_namespace(api, namespace)
    try:
        if mode == "claim":
            say(f"[{mode}] creating {pods} ResourceClaims")
            await gather_limited(
                [
                    resource.create_namespaced_resource_claim(
                        namespace,
                        {
                            "metadata": {"name": f"c{i}"},
                            "spec": {"devices": {"requests": [REQUEST]}},
                        },
                    )
                    for i in range(pods)
                ],
                concurrency,
            )
            refs = [{"resourceClaimName": f"c{i}"} for i in range(pods)]
        else:
            await resource.create_namespaced_resource_claim_template(
                namespace,
                {
                    "metadata": {"name": "gpu-claim"},
                    "spec": {"spec": {"devices": {"requests": [REQUEST]}}},
                },
            )
            refs = [{"resourceClaimTemplateName": "gpu-claim"}] * pods
        if prequeue is not None:
            await prequeue.stop()
        say(f"[{mode}] creating {pods} pods")
        created_at: list[float] = []

        async def create_all() -> None:
            await gather_limited(
                [
                    core.create_namespaced_pod(namespace, pod(f"p{i}", run, refs[i]))
                    for i in range(pods)
                ],
                concurrency,
            )
            created_at.append(time.monotonic())

        t0 = time.monotonic()
        if prequeue is not None:
            # The whole batch waits in the queue; the clock starts with the scheduler.
            await create_all()
            start = time.monotonic()
            await prequeue.start()
            times = await scheduled_times(core, namespace, pods, timeout_s)
        else:
            start = t0
            creating = asyncio.create_task(create_all())
            times = await scheduled_times(core, namespace, pods, timeout_s)
            await creating
        created_s = created_at[0] - t0
        if len(times) < pods:
            say(f"[{mode}] only {len(times)}/{pods} pods scheduled within {timeout_s:.0f}s")
        total_s = (times[-1] - start) if times else float("nan")
        # Steady state: the middle 80 % of bindings, free of start-up and tail effects.
        lo, hi = int(len(times) * 0.1), max(int(len(times) * 0.9) - 1, 0)
        steady = (
            (hi - lo) / (times[hi] - times[lo])
            if hi > lo and times[hi] > times[lo]
            else float("nan")
        )
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return {
            "mode": mode,
            "pods": pods,
            "scheduled": len(times),
            "create_seconds": round(created_s, 2),
            "schedule_seconds": round(total_s, 2),
            "pods_per_second": round(len(times) / total_s, 1) if times else 0.0,
            "steady_pods_per_second": round(steady, 1),
            "median_gap_ms": round(statistics.median(gaps) * 1000, 1) if gaps else None,
        }
    finally:
        await delete_namespace(api, namespace)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    owns_cluster = args.state_dir is None
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="fgo-bench-dra-"))
    cluster = LocalCluster(state_dir, progress=say)
    await cluster.start(wait=True)
    results: dict[str, Any] = {"nodes": args.nodes, "gpus_per_node": args.gpus}
    scheduler: Scheduler | None = None
    if args.scheduler_qps:
        scheduler = Scheduler(cluster, args.scheduler_qps, state_dir / "bench-kube-scheduler.log")
        await scheduler.take_over()
        results["scheduler_qps"] = args.scheduler_qps
        results["prequeued"] = args.prequeue
    try:
        async with api_client(str(cluster.kubeconfig)) as api:
            run = unique_name("run", 20)
            topo_ns = unique_name("bench-topology", 30)
            await create_namespace(api, topo_ns)
            factory = KwokNodeFactory(api, f"{run}-n")
            core: Any = client.CoreV1Api(api)
            try:
                say(f"creating {args.nodes} KWOK nodes")
                names = await factory(args.nodes, labels={RUN_LABEL: run}, timeout_s=300)
                config = parse_cluster_config(
                    {"nodePools": {"p": {"gpus": [{"type": "h100", "count": args.gpus}]}}}
                )

                async def record(node: str) -> None:
                    topology = build_node_topology(node, config.pools["p"], config, kwok=True)
                    await core.create_namespaced_config_map(
                        topo_ns,
                        {
                            "metadata": {
                                "name": f"topology-{node}",
                                "labels": {NODE_NAME_LABEL: node, NODE_TOPOLOGY_LABEL: "true"},
                            },
                            "data": {TOPOLOGY_DATA_KEY: topology.to_yaml()},
                        },
                    )

                await gather_limited([record(n) for n in names], 32)
                settings = load_settings(
                    Settings, {"TOPOLOGY_CM_NAMESPACE": topo_ns, "INSTANCE": run, "WORKERS": "8"}
                )
                ctx = ServiceContext(name="kwok-dra-plugin")
                controller = KwokSliceController(api, settings, ctx.registry)
                started = time.monotonic()
                task = asyncio.create_task(controller.run(ctx))
                while not ctx.readiness.describe().get("synced"):
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.05)
                results["publish_seconds"] = round(time.monotonic() - started, 2)
                say(f"{args.nodes} nodes' slices published in {results['publish_seconds']} s")
                try:
                    pods = args.pods or args.nodes * args.gpus
                    modes = ["claim", "template"] if args.mode == "both" else [args.mode]
                    results["runs"] = []
                    for mode in modes:
                        outcome = await run_mode(
                            mode,
                            api,
                            run,
                            pods,
                            concurrency=args.concurrency,
                            timeout_s=args.timeout,
                            prequeue=scheduler if args.prequeue else None,
                        )
                        say(json.dumps(outcome))
                        results["runs"].append(outcome)
                        await asyncio.sleep(5)  # let the deleted namespace release its devices
                finally:
                    ctx.stop.set()
                    await task
            finally:
                await factory.cleanup()
                await delete_namespace(api, topo_ns)
    finally:
        if scheduler is not None:
            await scheduler.stop()
            if not owns_cluster:
                await cluster.restart_component("kube-scheduler")
        if owns_cluster:
            await cluster.stop(purge=True)
    return results


class Scheduler:
    """Our own kube-scheduler in place of the cluster's: its exact command line plus higher API
    client limits (scheduler_perf raises them too)."""

    def __init__(self, cluster: LocalCluster, qps: int, log_path: Path) -> None:
        # The cluster's own command line (private helper: the flags must be exactly the cluster's).
        spec = cluster._spec("kube-scheduler")
        self.argv = [*spec.argv, f"--kube-api-qps={qps}", f"--kube-api-burst={2 * qps}"]
        self.cluster = cluster
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def take_over(self) -> None:
        self.cluster.kill_component("kube-scheduler", signal.SIGTERM)
        await asyncio.sleep(2)
        await self.start()

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(*self.argv, stdout=log, stderr=log)
        say(f"kube-scheduler started (pid {self.process.pid}): {' '.join(self.argv[-2:])}")

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=0, help="default: nodes x gpus (every GPU)")
    parser.add_argument("--mode", choices=("claim", "template", "both"), default="both")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent creates")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--state-dir", help="use this (running) local cluster")
    parser.add_argument(
        "--scheduler-qps", type=int, default=0, help="run kube-scheduler with this API QPS"
    )
    parser.add_argument(
        "--prequeue",
        action="store_true",
        help="with --scheduler-qps: create every pod first, then start the scheduler and time "
        "it alone (the creation rate of this script no longer limits the result)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.prequeue and not args.scheduler_qps:
        parser.error("--prequeue needs --scheduler-qps (the script must own the scheduler)")
    configure_logging("bench", "WARNING", json=False)
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{results['nodes']} KWOK nodes x {results['gpus_per_node']} GPUs; "
        f"slices published in {results['publish_seconds']} s; scheduler API QPS "
        f"{results.get('scheduler_qps', 'default (50)')}"
    )
    for r in results["runs"]:
        print(
            f"  {r['mode']:8s} {r['scheduled']}/{r['pods']} pods bound in "
            f"{r['schedule_seconds']} s: {r['pods_per_second']} pods/s overall, "
            f"{r['steady_pods_per_second']} pods/s steady (pods created in "
            f"{r['create_seconds']} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
