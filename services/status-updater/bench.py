"""Status-updater benchmark: N KWOK nodes x G GPUs, P one-GPU pods created at once.

    uv run python services/status-updater/bench.py [--nodes 500 --gpus 8 --pods 4000]

Starts (or reuses) a local control plane, creates the nodes, runs the status-updater as a
subprocess, creates the pods in one burst (the real scheduler places them, KWOK runs them), then
deletes them all, and reports:

* time until every record reflects every pod (pod Running and recorded with its start time);
* p50/p99 latency from "the bench saw the pod Running" to "the bench saw the record say so"
  (both seen through this process's own watches, so one clock);
* record writes (ConfigMap create/update, from the controller's own counter) per pod and per
  pod event (pod watch events the bench saw: bind, Running, delete ...);
* the controller's peak RSS (sampled from /proc every 0.5 s).

Not a timed test: the numbers depend on the machine (2 cores are shared by the apiserver, etcd,
scheduler, KWOK, the controller and this script).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import consume, pct, wait_until
from fgo_common.kube.client import api_client
from fgo_common.kube.errors import is_transient, status_of
from fgo_common.kube.watch import Reflector
from fgo_common.topology import NodeTopology
from fgo_localcluster import nodes as kwok
from fgo_localcluster.cluster import LocalCluster
from fgo_testkit.status_updater import StatusUpdaterProcess
from kubernetes_asyncio import client


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _writes(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('fgo_status_updater_api_writes_total{kind="ConfigMap"')
    )


def _metric(metrics: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


def _reconcile_stats(metrics: str) -> dict[str, float]:
    count = _metric(metrics, "fgo_status_updater_reconcile_duration_seconds_count")
    total = _metric(metrics, "fgo_status_updater_reconcile_duration_seconds_sum")
    return {
        "reconciles": count,
        "mean_reconcile_ms": round(total / count * 1000, 1) if count else 0.0,
        "conflicts": _metric(metrics, "fgo_status_updater_write_conflicts_total"),
    }


class Observer:
    """Watches pods and records; notes when each pod is first seen Running and first seen
    recorded as running (usage with its start time)."""

    def __init__(self) -> None:
        self.running_at: dict[str, float] = {}
        self.recorded_at: dict[str, float] = {}
        self.pod_events = 0
        self.held: dict[str, set[str]] = {}  # node -> pod uids with usage
        self.changed = asyncio.Event()

    def on_pod(self, obj: dict[str, Any], deleted: bool) -> None:
        self.pod_events += 1
        uid = obj["metadata"]["uid"]
        if not deleted and (obj.get("status") or {}).get("phase") == "Running":
            self.running_at.setdefault(uid, time.monotonic())
        self.changed.set()

    def on_record(self, obj: dict[str, Any], deleted: bool) -> None:
        node = obj["metadata"]["labels"].get("node-name", "")
        self.changed.set()
        if deleted:
            self.held.pop(node, None)
            return
        record = NodeTopology.from_yaml(obj["data"]["topology.yml"], node)
        now = time.monotonic()
        uids: set[str] = set()
        for gpu in record.gpus:
            for uid, usage in gpu.status.usage.items():
                uids.add(uid)
                if usage.since:
                    self.recorded_at.setdefault(uid, now)
        self.held[node] = uids


async def _delete_all_pods(core: Any, ns: str) -> None:
    """delete-collection, retried: a loaded apiserver answers 504 while still deleting."""
    for attempt in range(10):
        try:
            await core.delete_collection_namespaced_pod(ns)
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            say(f"delete-collection: {type(exc).__name__} {status_of(exc)}, retrying")
            await asyncio.sleep(2 + attempt)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster = LocalCluster(Path(args.state_dir))
    await cluster.start(wait=True)
    tag = secrets.token_hex(3)
    ns = f"bench-{tag}"
    pool_key = f"fgo.bench/pool-{tag}"
    results: dict[str, Any] = {"nodes": args.nodes, "gpus_per_node": args.gpus, "pods": args.pods}
    async with api_client(str(cluster.kubeconfig), qps_connections=64) as api:
        core: Any = client.CoreV1Api(api)
        await core.create_namespace({"metadata": {"name": ns}})
        config = {
            "nodePoolLabelKey": pool_key,
            "nodePools": {"bench": {"gpus": [{"type": "H100", "count": args.gpus}]}},
        }
        await core.create_namespaced_config_map(
            ns, {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}}
        )
        names = [f"bench-{tag}-{i}" for i in range(args.nodes)]
        started = time.monotonic()
        await kwok.create_nodes(
            api,
            [
                kwok.kwok_node(
                    n,
                    "bench",
                    labels={pool_key: "bench"},
                    extra_capacity={"nvidia.com/gpu": str(args.gpus)},
                )
                for n in names
            ],
        )
        say(f"{args.nodes} nodes created in {time.monotonic() - started:.1f}s")
        updater = StatusUpdaterProcess(
            cluster.kubeconfig,
            Path(args.log),
            TOPOLOGY_CM_NAMESPACE=ns,
            PROMETHEUS_URL="",
            LOG_LEVEL="WARNING",
        )
        stop = asyncio.Event()
        observer = Observer()
        rss_peak = 0.0
        tasks: list[asyncio.Task[None]] = []
        try:
            started = time.monotonic()
            await updater.start(timeout_s=300)
            assert updater.proc is not None
            pods = Reflector(core.list_namespaced_pod, name="bench-pods", namespace=ns)
            records = Reflector(
                core.list_namespaced_config_map,
                name="bench-records",
                namespace=ns,
                label_selector="node-topology=true",
            )
            tasks = [
                asyncio.create_task(consume(pods, observer.on_pod, stop)),
                asyncio.create_task(consume(records, observer.on_record, stop)),
            ]

            async def sample_rss() -> None:
                nonlocal rss_peak
                while not stop.is_set():
                    rss_peak = max(rss_peak, _rss_mib(updater.proc.pid))  # type: ignore[union-attr]
                    await asyncio.sleep(0.5)

            tasks.append(asyncio.create_task(sample_rss()))
            await wait_until(
                observer, lambda: len(observer.held) >= args.nodes, time.monotonic() + args.timeout
            )
            results["records_created_s"] = round(time.monotonic() - started, 1)
            say(f"{args.nodes} records in {results['records_created_s']}s")
            results["rss_idle_mib"] = round(_rss_mib(updater.proc.pid), 1)

            writes_before = _writes(await updater.metrics())
            events_before = observer.pod_events
            body = {
                "metadata": {"generateName": "gpu-"},
                "spec": {
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            }
            sem = asyncio.Semaphore(32)

            async def create() -> None:
                async with sem:
                    await core.create_namespaced_pod(ns, body)

            burst = time.monotonic()
            await asyncio.gather(*(create() for _ in range(args.pods)))
            say(f"{args.pods} pods created in {time.monotonic() - burst:.1f}s")
            deadline = burst + args.timeout
            await wait_until(observer, lambda: len(observer.recorded_at) >= args.pods, deadline)
            all_recorded = max(observer.recorded_at.values(), default=burst)
            results["all_recorded_after_burst_s"] = round(all_recorded - burst, 1)
            last_running = max(observer.running_at.values(), default=burst)
            results["all_running_after_burst_s"] = round(last_running - burst, 1)
            results["all_recorded_after_last_running_s"] = round(all_recorded - last_running, 1)
            results["recorded"] = len(observer.recorded_at)
            results["running"] = len(observer.running_at)
            latencies = [
                observer.recorded_at[uid] - t
                for uid, t in observer.running_at.items()
                if uid in observer.recorded_at
            ]
            results["latency_running_to_recorded_s"] = {
                "p50": round(pct(latencies, 0.5), 3),
                "p99": round(pct(latencies, 0.99), 3),
                "max": round(max(latencies, default=float("nan")), 3),
                "mean": round(statistics.fmean(latencies), 3) if latencies else None,
            }
            await asyncio.sleep(2)
            writes_create = _writes(await updater.metrics()) - writes_before
            events_create = observer.pod_events - events_before
            metrics = await updater.metrics()
            results["controller_after_create"] = _reconcile_stats(metrics)
            results["create_phase"] = {
                "record_writes": int(writes_create),
                "pod_events": events_create,
                "writes_per_pod": round(writes_create / args.pods, 3),
                "writes_per_pod_event": round(writes_create / max(1, events_create), 3),
            }
            say(json.dumps(results))

            # Delete everything at once: every record must become empty.
            writes_before = _writes(await updater.metrics())
            events_before = observer.pod_events
            gone = time.monotonic()
            await _delete_all_pods(core, ns)
            await wait_until(observer, lambda: not any(observer.held.values()), gone + args.timeout)
            results["all_released_after_delete_s"] = round(time.monotonic() - gone, 1)
            await asyncio.sleep(2)
            writes_delete = _writes(await updater.metrics()) - writes_before
            events_delete = observer.pod_events - events_before
            results["delete_phase"] = {
                "record_writes": int(writes_delete),
                "pod_events": events_delete,
                "writes_per_pod_event": round(writes_delete / max(1, events_delete), 3),
            }
            results["controller_after_delete"] = _reconcile_stats(await updater.metrics())
            results["rss_peak_mib"] = round(rss_peak, 1)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await updater.stop()
            if not args.keep:
                await kwok.delete_nodes(api, names)
                await core.delete_namespace(ns)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=4000)
    tmp = Path(tempfile.gettempdir())
    parser.add_argument("--state-dir", default=str(tmp / "fgo-bench-status-updater"))
    parser.add_argument("--log", default=str(tmp / "fgo-bench-status-updater.log"))
    parser.add_argument("--timeout", type=float, default=900.0, help="per phase, seconds")
    parser.add_argument("--keep", action="store_true", help="leave nodes and namespace behind")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
