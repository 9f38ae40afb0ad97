"""NodeResourceTopology benchmark: N KWOK nodes of a numa pool, one 2-GPU pod per node.

    uv run python services/status-updater/bench_nrt.py [--nodes 1000]

Starts (or reuses) a local control plane, installs the chart's NRT CRD, creates the nodes (pool
``numa: {zones: 2}``, 8 GPUs, 32 CPUs, 128Gi), runs the status-updater with
``NODE_RESOURCE_TOPOLOGY_ENABLED=true``, then creates one pod per node (2 GPUs, 1 CPU, 1Gi) in
one burst and deletes them all, and reports, from the controller's own counters and this
script's watches (one clock):

* time until every node has its NRT, until every NRT shows its pod, until every NRT is restored;
* NRT writes (server-side applies) per node and per pod event (watch events the bench saw:
  creation, bind, Running, deletion ...), to be at most one per event;
* p50/p99 from "the bench saw the pod bound" to "the bench saw its zone's available drop" (GPUs
  are held from binding on, as a kubelet's would be from admission).

Not a timed test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import consume, pct, wait_until
from fgo_common.kube.client import api_client
from fgo_common.kube.watch import Reflector
from fgo_common.nrt import NRT_GROUP, NRT_PLURAL, NRT_VERSION
from fgo_localcluster import nodes as kwok
from fgo_localcluster.cluster import LocalCluster
from fgo_testkit.status_updater import StatusUpdaterProcess
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

CRD = Path(__file__).resolve().parents[2] / "charts/fake-gpu-operator/files"
CRD_FILE = CRD / "noderesourcetopology-crd.yaml"


def say(message: str) -> None:
    print(f"bench-nrt: {message}", file=sys.stderr, flush=True)


def _nrt_writes(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('fgo_status_updater_api_writes_total{kind="NodeResourceTopology"')
    )


class Observer:
    def __init__(self) -> None:
        self.free_gpus: dict[str, int] = {}  # node -> available nvidia.com/gpu over zones
        self.bound_at: dict[str, float] = {}  # node -> when its pod was seen bound to it
        self.taken_at: dict[str, float] = {}  # node -> when its NRT was seen with GPUs taken
        self.pod_events = 0
        self.changed = asyncio.Event()

    def on_pod(self, obj: dict[str, Any], deleted: bool) -> None:
        self.pod_events += 1
        node = (obj.get("spec") or {}).get("nodeName") or ""
        if node and not deleted:
            self.bound_at.setdefault(node, time.monotonic())
        self.changed.set()

    def on_nrt(self, obj: dict[str, Any], deleted: bool) -> None:
        node = obj["metadata"]["name"]
        if deleted:
            self.free_gpus.pop(node, None)
        else:
            free = sum(
                int(r["available"])
                for z in obj.get("zones") or []
                for r in z.get("resources") or []
                if r["name"] == "nvidia.com/gpu"
            )
            self.free_gpus[node] = free
            if free < 8:
                self.taken_at.setdefault(node, time.monotonic())
        self.changed.set()


async def ensure_crd(api: client.ApiClient) -> None:
    ext: Any = client.ApiextensionsV1Api(api)
    try:
        await ext.create_custom_resource_definition(yaml.safe_load(CRD_FILE.read_text()))
    except ApiException as exc:
        if exc.status != 409:
            raise
    for _ in range(120):
        crd = await ext.read_custom_resource_definition(f"{NRT_PLURAL}.{NRT_GROUP}")
        if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
            return
        await asyncio.sleep(0.25)
    raise RuntimeError("NRT CRD not established")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster = LocalCluster(Path(args.state_dir))
    was_running = (await cluster.status(include_nodes=False)).running
    await cluster.start(wait=True)
    try:
        return await _run(cluster, args)
    finally:
        if not was_running and not args.keep:
            await cluster.stop(purge=True)


async def _run(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    ns = f"bench-nrt-{tag}"
    pool_key = f"fgo.bench/pool-{tag}"
    results: dict[str, Any] = {"nodes": args.nodes}
    async with api_client(str(cluster.kubeconfig), qps_connections=64) as api:
        core: Any = client.CoreV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        await ensure_crd(api)
        await core.create_namespace({"metadata": {"name": ns}})
        config = {
            "nodePoolLabelKey": pool_key,
            "nodePools": {"numa": {"gpus": [{"type": "H100", "count": 8}], "numa": {"zones": 2}}},
        }
        await core.create_namespaced_config_map(
            ns, {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}}
        )
        names = [f"bench-nrt-{tag}-{i}" for i in range(args.nodes)]
        started = time.monotonic()
        await kwok.create_nodes(
            api,
            [
                kwok.kwok_node(
                    n, "numa", labels={pool_key: "numa"}, extra_capacity={"nvidia.com/gpu": "8"}
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
            NODE_RESOURCE_TOPOLOGY_ENABLED="true",
        )
        stop = asyncio.Event()
        observer = Observer()
        tasks: list[asyncio.Task[None]] = []
        mine = set(names)
        try:
            started = time.monotonic()
            await updater.start(timeout_s=300)
            pods = Reflector(core.list_namespaced_pod, name="bench-pods", namespace=ns)
            nrts = Reflector(
                custom.list_cluster_custom_object,
                name="bench-nrts",
                group=NRT_GROUP,
                version=NRT_VERSION,
                plural=NRT_PLURAL,
            )
            tasks = [
                asyncio.create_task(consume(pods, observer.on_pod, stop)),
                asyncio.create_task(consume(nrts, observer.on_nrt, stop)),
            ]
            ok = await wait_until(
                observer,
                lambda: mine <= set(observer.free_gpus),
                time.monotonic() + args.timeout,
            )
            results["nrts_created_s"] = round(time.monotonic() - started, 1)
            results["nrts_created"] = len(mine & set(observer.free_gpus))
            results["nrt_writes_at_start"] = int(_nrt_writes(await updater.metrics()))
            say(f"{results['nrts_created']} NRTs in {results['nrts_created_s']}s (complete: {ok})")

            writes_before = _nrt_writes(await updater.metrics())
            events_before = observer.pod_events
            sem = asyncio.Semaphore(32)

            async def create(node: str) -> None:
                body = {
                    "metadata": {"name": f"gpu-{node.rsplit('-', 1)[1]}"},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                        "terminationGracePeriodSeconds": 0,
                        "containers": [
                            {
                                "name": "main",
                                "image": "registry.k8s.io/pause:3.10",
                                "resources": {
                                    "requests": {"cpu": "1", "memory": "1Gi"},
                                    "limits": {"nvidia.com/gpu": "2"},
                                },
                            }
                        ],
                    },
                }
                async with sem:
                    await core.create_namespaced_pod(ns, body)

            burst = time.monotonic()
            await asyncio.gather(*(create(n) for n in names))
            say(f"{args.nodes} pods created in {time.monotonic() - burst:.1f}s")
            await wait_until(
                observer,
                lambda: all(observer.free_gpus.get(n, 8) == 6 for n in names),
                burst + args.timeout,
            )
            results["all_taken_after_burst_s"] = round(time.monotonic() - burst, 1)
            latencies = [
                observer.taken_at[n] - t
                for n, t in observer.bound_at.items()
                if n in observer.taken_at
            ]
            results["latency_bound_to_nrt_s"] = {
                "p50": round(pct(latencies, 0.5, empty=-1.0), 3),
                "p99": round(pct(latencies, 0.99, empty=-1.0), 3),
                "max": round(max(latencies, default=-1.0), 3),
            }
            await asyncio.sleep(2)
            writes = _nrt_writes(await updater.metrics()) - writes_before
            events = observer.pod_events - events_before
            results["create_phase"] = {
                "nrt_writes": int(writes),
                "pod_events": events,
                "nrt_writes_per_node": round(writes / args.nodes, 3),
                "nrt_writes_per_pod_event": round(writes / max(1, events), 3),
            }
            say(json.dumps(results))

            writes_before = _nrt_writes(await updater.metrics())
            events_before = observer.pod_events
            gone = time.monotonic()
            await core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
            await wait_until(
                observer,
                lambda: all(observer.free_gpus.get(n, 0) == 8 for n in names),
                gone + args.timeout,
            )
            results["all_restored_after_delete_s"] = round(time.monotonic() - gone, 1)
            await asyncio.sleep(2)
            writes = _nrt_writes(await updater.metrics()) - writes_before
            events = observer.pod_events - events_before
            results["delete_phase"] = {
                "nrt_writes": int(writes),
                "pod_events": events,
                "nrt_writes_per_node": round(writes / args.nodes, 3),
                "nrt_writes_per_pod_event": round(writes / max(1, events), 3),
            }
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
    parser.add_argument("--nodes", type=int, default=1000)
    tmp = Path(tempfile.gettempdir())
    parser.add_argument("--state-dir", default=str(tmp / "fgo-bench-nrt"))
    parser.add_argument("--log", default=str(tmp / "fgo-bench-nrt.log"))
    parser.add_argument("--timeout", type=float, default=900.0, help="per phase, seconds")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave nodes, namespace and (if this run started it) the control plane behind",
    )
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
