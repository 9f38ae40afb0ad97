"""Device plugin benchmark: Allocate latency and ListAndWatch update latency as the kubelet-side
test peer measures them, the plugin's RSS, and (optionally) KWOK mode at scale.

    uv run python services/device-plugin/bench.py node [--gpus 8] [--allocations N] [--updates N]
    uv run python services/device-plugin/bench.py kwok --kubeconfig PATH [--nodes 1000]

``node``: the plugin runs in its own process (the real NodeAgent and servers; the topology source
is in-process, fed record changes over stdin), the kubelet peer in this one. Update latency is
from writing a health change to the plugin's stdin until the peer holds the new device list.

``kwok``: needs a running local control plane (``fgo cluster up``); creates N KWOK nodes and
their topology ConfigMaps in a scratch namespace, runs ``fgo-device-plugin`` in kwok mode as a
subprocess and times how long until every node shows its capacity, then a pool change on every
node; reports the controller's CPU seconds and RSS; deletes what it created.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GPU = "nvidia.com/gpu"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(name: str, values_ms: list[float]) -> str:
    return (
        f"{name}: n={len(values_ms)} p50={statistics.median(values_ms):.3f}ms "
        f"p95={_pct(values_ms, 0.95):.3f}ms p99={_pct(values_ms, 0.99):.3f}ms "
        f"max={max(values_ms):.3f}ms"
    )


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM in KiB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


# -- node mode ----------------------------------------------------------------------------------


def _record(gpus: int, unhealthy: set[int]) -> Any:
    sys.path.insert(0, str(HERE / "tests"))
    from dp_helpers import topology

    return topology(gpus, unhealthy=unhealthy)


async def _child_node(directory: str, gpus: int) -> None:
    """The plugin process: real NodeAgent; stdin lines 'unhealthy <i,j,...>' change the record."""
    sys.path.insert(0, str(HERE / "tests"))
    import dp_helpers
    from fgo_common.runtime.logging import configure_logging
    from fgo_device_plugin import main as _production_imports  # noqa: F401 - representative RSS
    from fgo_device_plugin.metrics import Metrics
    from fgo_device_plugin.node import NodeAgent
    from fgo_device_plugin.source import StaticTopologySource

    # Logs go to stderr (discarded): stdout is the "ready" handshake only, and nobody drains it.
    configure_logging("device-plugin", "WARNING", json=True)
    config = dp_helpers.settings(Path(directory), kubelet_poll_interval_seconds=1.0)
    source = StaticTopologySource(_record(gpus, set()))
    agent = NodeAgent(config, source, Metrics())
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(agent.follow_topology(stop)),
        asyncio.create_task(agent.manager.run(stop)),
    ]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := (await reader.readline()).decode().strip():
        command, _, arg = line.partition(" ")
        if command == "unhealthy":
            bad = {int(i) for i in arg.split(",") if i}
            await source.set(_record(gpus, bad))
    stop.set()
    await asyncio.gather(*tasks)


async def bench_node(gpus: int, allocations: int, updates: int) -> None:
    from fgo_testkit.kubelet import DevicePluginKubeletPeer

    directory = Path(tempfile.mkdtemp(prefix="fgo-dpb-", dir="/tmp"))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "bench.py"),
        "_child-node",
        "--dir",
        str(directory),
        "--gpus",
        str(gpus),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        async with DevicePluginKubeletPeer(directory / "dp") as peer:
            assert (await child.stdout.readline()).strip() == b"ready"
            started = time.perf_counter()
            plugin = await peer.wait_for_plugin(GPU, timeout_seconds=30)
            devices = await plugin.wait_for_devices()
            print(f"registration seen by peer after {1000 * (time.perf_counter() - started):.1f}ms "
                  f"(from plugin 'ready')")  # fmt: skip
            ids = [d.ID for d in devices]
            rss_idle = _proc_status(child.pid)

            for size in (1, len(ids)):
                lat = []
                for i in range(allocations):
                    chosen = [ids[(i + k) % len(ids)] for k in range(size)]
                    t0 = time.perf_counter()
                    await plugin.allocate(chosen)
                    lat.append(1000 * (time.perf_counter() - t0))
                print(_summary(f"Allocate ({size} GPU{'s' if size > 1 else ''})", lat))

            lat = []
            while not plugin.updates.empty():
                plugin.updates.get_nowait()
            for i in range(updates):
                bad = str(i % len(ids)) if i % 2 == 0 else ""
                t0 = time.perf_counter()
                child.stdin.write(f"unhealthy {bad}\n".encode())
                await child.stdin.drain()
                update = await asyncio.wait_for(plugin.updates.get(), 10)
                lat.append(1000 * (time.perf_counter() - t0))
                healthy = sum(1 for d in update if d.health == "Healthy")
                assert healthy == len(ids) - (1 if bad else 0), "wrong update"
            print(_summary("ListAndWatch update (health change -> peer)", lat))
            rss_after = _proc_status(child.pid)
            print(
                f"plugin RSS: {rss_idle['VmRSS'] / 1024:.1f} MiB after registration, "
                f"{rss_after['VmRSS'] / 1024:.1f} MiB after the run "
                f"(peak {rss_after['VmHWM'] / 1024:.1f} MiB), {gpus} GPUs, "
                f"CPU {_cpu_seconds(child.pid):.2f}s"
            )
    finally:
        with contextlib.suppress(Exception):
            child.stdin.write(b"\n")
            await child.stdin.drain()
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            child.kill()
            await child.wait()
        shutil.rmtree(directory, ignore_errors=True)


# -- kwok mode ----------------------------------------------------------------------------------


async def bench_kwok(kubeconfig: str, nodes: int, gpus: int, log_file: str = "") -> None:
    verbose = bool(log_file)
    import json
    import socket

    import aiohttp
    from fgo_common.config import parse_cluster_config
    from fgo_common.kube.client import api_client
    from fgo_common.nodebuild import build_node_topology
    from fgo_common.topology import NODE_NAME_LABEL, NODE_TOPOLOGY_LABEL, TOPOLOGY_DATA_KEY
    from fgo_localcluster.nodes import create_nodes, delete_nodes, kwok_node
    from fgo_localcluster.testing import create_namespace, delete_namespace, unique_name
    from kubernetes_asyncio import client

    def record(node: str, count: int) -> str:
        pools = {"p": {"gpus": [{"type": "h100", "count": count}]}}
        config = parse_cluster_config({"nodePools": pools})
        return build_node_topology(node, config.pools["p"], config, kwok=True).to_yaml()

    async with api_client(kubeconfig) as api:
        core: Any = client.CoreV1Api(api)
        namespace = unique_name("dp-bench", 30)
        prefix = unique_name("dpb", 12) + "-"
        names = [f"{prefix}{i}" for i in range(nodes)]
        await create_namespace(api, namespace)
        proc = None
        try:
            t0 = time.perf_counter()
            await create_nodes(api, [kwok_node(n) for n in names])
            print(f"created {nodes} KWOK nodes in {time.perf_counter() - t0:.1f}s")
            sem = asyncio.Semaphore(32)

            async def write(node: str, count: int, create: bool) -> None:
                body = {
                    "metadata": {
                        "name": f"topology-{node}",
                        "labels": {NODE_NAME_LABEL: node, NODE_TOPOLOGY_LABEL: "true"},
                    },
                    "data": {TOPOLOGY_DATA_KEY: record(node, count)},
                }
                async with sem:
                    if create:
                        await core.create_namespaced_config_map(namespace, body)
                    else:
                        name = body["metadata"]["name"]
                        await core.replace_namespaced_config_map(name, namespace, body)

            await asyncio.gather(*(write(n, gpus, True) for n in names))
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            env = {
                **os.environ,
                "DEVICE_PLUGIN_MODE": "kwok",
                "TOPOLOGY_CM_NAMESPACE": namespace,
                "KUBECONFIG": kubeconfig,
                "HEALTH_PORT": str(port),
                "LOG_LEVEL": "INFO" if log_file else "WARNING",
            }
            script = shutil.which("fgo-device-plugin") or "fgo-device-plugin"
            quiet = asyncio.subprocess.DEVNULL
            with Path(log_file or os.devnull).open("wb") as log:  # noqa: ASYNC230 - opened once
                proc = await asyncio.create_subprocess_exec(
                    script, env=env, stdout=quiet, stderr=log
                )

            async def wait_all(value: str) -> float:
                start = time.perf_counter()
                while True:
                    # resourceVersion=0: served from the watch cache, so polling 1000 nodes does
                    # not load etcd (it still costs the API server a serialisation per poll).
                    resp = await core.list_node(resource_version="0", _preload_content=False)
                    body = json.loads(await resp.read())
                    resp.release()
                    done = sum(
                        1
                        for n in body["items"]
                        if n["metadata"]["name"].startswith(prefix)
                        and (n["status"].get("allocatable") or {}).get(GPU) == value
                    )
                    if done == nodes:
                        return time.perf_counter() - start
                    if verbose:
                        print(f"  {time.perf_counter() - start:6.1f}s {done}/{nodes}", flush=True)
                    await asyncio.sleep(2.0)

            spawned = time.perf_counter()
            async with aiohttp.ClientSession() as http:
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.1)
            ready = time.perf_counter() - spawned
            elapsed = await wait_all(str(gpus))
            print(f"kwok: controller ready (caches synced) {ready:.1f}s after spawn; all {nodes} "
                  f"nodes show {GPU}={gpus} {elapsed:.1f}s after ready")  # fmt: skip
            cpu_start = _cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            await asyncio.gather(*(write(n, gpus * 2, False) for n in names))
            writes = time.perf_counter() - t0
            elapsed = await wait_all(str(gpus * 2))
            print(f"kwok: pool change on {nodes} nodes visible {elapsed:.1f}s after the last "
                  f"record write (writes took {writes:.1f}s); controller CPU during change "
                  f"{_cpu_seconds(proc.pid) - cpu_start:.2f}s")  # fmt: skip
            st = _proc_status(proc.pid)
            rss, peak = st["VmRSS"] / 1024, st["VmHWM"] / 1024
            cpu = _cpu_seconds(proc.pid)
            print(f"kwok: controller RSS {rss:.1f} MiB (peak {peak:.1f} MiB), CPU total {cpu:.2f}s")
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as resp,
            ):
                text = await resp.text()
            metric = "fgo_device_plugin_kwok_write_duration_seconds"
            for kind in ("status", "annotation"):
                values = {
                    line.split("{", 1)[0]: float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith((f"{metric}_sum", f"{metric}_count")) and f'"{kind}"' in line
                }
                count, total = values.get(f"{metric}_count", 0), values.get(f"{metric}_sum", 0)
                if count:
                    mean = 1000 * total / count
                    print(f"kwok: {int(count)} {kind} writes, mean API time {mean:.0f}ms")
        finally:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()
            await delete_nodes(api, names)
            await delete_namespace(api, namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    node = sub.add_parser("node")
    node.add_argument("--gpus", type=int, default=8)
    node.add_argument("--allocations", type=int, default=1000)
    node.add_argument("--updates", type=int, default=200)
    kwok = sub.add_parser("kwok")
    kwok.add_argument("--kubeconfig", required=True)
    kwok.add_argument("--nodes", type=int, default=1000)
    kwok.add_argument("--gpus", type=int, default=8)
    kwok.add_argument("--log", default="", help="write the controller's log (INFO) here")
    child = sub.add_parser("_child-node")
    child.add_argument("--dir", required=True)
    child.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    if args.cmd == "node":
        asyncio.run(bench_node(args.gpus, args.allocations, args.updates))
    elif args.cmd == "kwok":
        asyncio.run(bench_kwok(args.kubeconfig, args.nodes, args.gpus, args.log))
    else:
        asyncio.run(_child_node(args.dir, args.gpus))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
