"""Run:ai's /runai/proc files from a node-mode exporter, end to end on the local control plane.

The real status-updater records a Run:ai reservation pod and two fractional pods
(``gpu-fraction`` 0.5 and 0.25) on a KWOK node; a node-mode status-exporter for that node writes
into a directory standing in for the node's /var/lib/runai/proc (what the chart mounts at
/runai/proc). The files appear with the telemetry model's values for the recorded usage, move
with the 10 s bucket, and a fractional pod's directory goes when the pod is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from fgo_common.telemetry import BUCKET_SECONDS, pod_utilization, process_memory_mib, profile_for
from fgo_common.topology import NodeTopology
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    eventually,
)
from fgo_testkit.status_updater import StatusUpdaterProcess, free_port, read_record
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


class World:
    """A topology config with one 8 x H100 pool, the real status-updater, a reservation
    namespace."""

    def __init__(
        self, kube: client.ApiClient, cluster: LocalCluster, ns: str, nodes: KwokNodeFactory,
        tmp: Path,
    ) -> None:  # fmt: skip
        self.api, self.cluster, self.ns, self.nodes, self.tmp = kube, cluster, ns, nodes, tmp
        self.core: Any = client.CoreV1Api(kube)
        self.pool_key = f"fgo.test/pool-{ns[-6:]}"
        self.reservation_ns = f"{ns[:50]}-res"
        self.updater = StatusUpdaterProcess(
            cluster.kubeconfig, tmp / "status-updater.log", TOPOLOGY_CM_NAMESPACE=ns,
            RESOURCE_RESERVATION_NAMESPACE=self.reservation_ns, PROMETHEUS_URL="",
            DEBOUNCE_SECONDS="0.1",
        )  # fmt: skip

    async def start(self) -> str:
        config = {"nodePoolLabelKey": self.pool_key,
                  "nodePools": {"default": {"gpus": [{"type": "H100", "count": 8}]}}}  # fmt: skip
        await self.core.create_namespaced_config_map(
            self.ns,
            {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
        )
        await self.updater.start()
        (node,) = await self.nodes(
            1, labels={self.pool_key: "default"}, extra_capacity={"nvidia.com/gpu": "8"}
        )
        return node

    async def record(self, node: str) -> NodeTopology | None:
        return await read_record(self.api, self.ns, node)

    async def wait_record(self, node: str, check: Any, what: str) -> NodeTopology:
        async def probe() -> NodeTopology | None:
            rec = await self.record(node)
            return rec if rec is not None and check(rec) else None

        return await eventually(probe, timeout_s=60, what=f"{what}\n{self.updater.log_tail()}")


def gpu_pod(name: str, node: str, gpus: int, labels: dict[str, str]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "registry.k8s.io/pause:3.10"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "metadata": {"name": name, "labels": labels, "annotations": {}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [KWOK_TOLERATION],
            "terminationGracePeriodSeconds": 0,
            "containers": [container],
        },
    }


@pytest_asyncio.fixture
async def env(
    kube: client.ApiClient, local_cluster: LocalCluster, namespace: str,
    kwok_nodes: KwokNodeFactory, tmp_path: Path,
) -> AsyncIterator[World]:  # fmt: skip
    world = World(kube, local_cluster, namespace, kwok_nodes, tmp_path)
    await create_namespace(kube, world.reservation_ns)
    yield world
    await world.updater.stop()
    await delete_namespace(kube, world.reservation_ns)


class NodeExporter:
    """``python -m fgo_status_exporter`` in node mode for one node, writing Run:ai's files."""

    def __init__(self, world: World, node: str, proc_dir: Path) -> None:
        self.health = free_port()
        self.metrics = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(world.cluster.kubeconfig),
            "EXPORTER_MODE": "node",
            "NODE_NAME": node,
            "TOPOLOGY_CM_NAMESPACE": world.ns,
            "METRICS_PORT": str(self.metrics),
            "HEALTH_PORT": str(self.health),
            "GFD_LABELS_ENABLED": "false",
            "RUNAI_PROC_DIR": str(proc_dir),
            "LOG_LEVEL": "DEBUG",
        }
        self.log = world.tmp / "exporter.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fgo_status_exporter", env=self.env, stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip

        async def ready() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.tail()
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(f"http://127.0.0.1:{self.health}/readyz")).is_success
            return False

        await eventually(ready, timeout_s=60, what="node-mode exporter ready")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


async def test_fraction_files_follow_the_pods(env: World) -> None:
    node = await env.start()
    await env.wait_record(node, lambda r: len(r.gpus) == 8, "record")
    proc_dir = env.tmp / "host" / "var" / "lib" / "runai" / "proc"
    proc_dir.mkdir(parents=True)
    exporter = NodeExporter(env, node, proc_dir)
    await exporter.start()
    try:
        group = {"runai-gpu-group": "grp-proc"}
        await env.core.create_namespaced_pod(
            env.reservation_ns, gpu_pod("runai-reservation-gpu-p", node, 1, group)
        )
        uids: dict[str, str] = {}
        for name, fraction in (("frac-a", "0.5"), ("frac-b", "0.25")):
            body = gpu_pod(name, node, 0, group)
            body["metadata"]["annotations"] = {"gpu-fraction": fraction}
            await env.core.create_namespaced_pod(env.ns, body)
            pod = await env.core.read_namespaced_pod(name, env.ns)
            uids[name] = pod.metadata.uid
        record = await env.wait_record(
            node,
            lambda r: any(set(uids.values()) <= set(g.status.usage) for g in r.gpus),
            "both fractional pods on the reserved GPU",
        )
        (gpu,) = [g for g in record.gpus if g.status.holders]
        started = time.monotonic()

        def files_of(uid: str) -> Path:
            return proc_dir / "pod" / uid / "metrics" / "gpu" / str(gpu.index)

        async def written() -> bool:
            # The record may still gain the pods' start times (usage.since): compare with the
            # current one.
            current = await env.record(node)
            assert current is not None
            (now_gpu,) = [g for g in current.gpus if g.id == gpu.id]
            memory = process_memory_mib(now_gpu, profile_for(now_gpu))
            for uid in uids.values():
                got = _read(files_of(uid) / "memory.allocated")
                if got != str(memory[uid] * MIB):
                    return False
            return True

        await eventually(written, timeout_s=30, what=f"/runai/proc files\n{exporter.tail()}")
        print(f"files written {time.monotonic() - started:.2f}s after the record showed the pods")
        assert (proc_dir / "events").is_file()
        # memory.allocated: the fraction of the GPU's memory, in bytes.
        assert _read(files_of(uids["frac-a"]) / "memory.allocated") == str(
            gpu.memory_mib // 2 * MIB
        )
        # utilization.sm: the telemetry model's value for the pod in this bucket (or the one
        # just before, if the bucket turned between the write and the read).
        for uid in uids.values():
            usage = gpu.status.usage[uid]
            now = math.floor(time.time() / BUCKET_SECONDS)
            allowed = {str(pod_utilization(usage, gpu.id, uid, b, 0)) for b in (now - 1, now)}
            assert _read(files_of(uid) / "utilization.sm") in allowed

        # The files and the exporter's series of the shared GPU tell one story: the pods'
        # utilisation shares add up to DCGM_FI_DEV_GPU_UTIL, their memory to DCGM_FI_DEV_FB_USED
        # (both series labelled with the reservation pod, the GPU's holder, as the reference).
        async def agrees() -> bool:
            async with httpx.AsyncClient(timeout=5) as http:
                text = (await http.get(f"http://127.0.0.1:{exporter.metrics}/metrics")).text
            series = {}
            for line in text.splitlines():
                if f'UUID="{gpu.id}"' in line and line.startswith(
                    ("DCGM_FI_DEV_GPU_UTIL{", "DCGM_FI_DEV_FB_USED{")
                ):
                    assert 'pod="runai-reservation-gpu-p"' in line, line
                    series[line.split("{")[0]] = int(float(line.rsplit(" ", 1)[1]))
            util = sum(int(_read(files_of(u) / "utilization.sm") or 0) for u in uids.values())
            mem = sum(int(_read(files_of(u) / "memory.allocated") or 0) for u in uids.values())
            return series == {"DCGM_FI_DEV_GPU_UTIL": min(100, util),
                              "DCGM_FI_DEV_FB_USED": mem // MIB}  # fmt: skip

        await eventually(agrees, timeout_s=30, what="files agree with the exporter's series")
        # Only the fractional pods have files (the reservation pod holds, it does not work).
        assert sorted(p.name for p in (proc_dir / "pod").iterdir()) == sorted(uids.values())

        await env.core.delete_namespaced_pod("frac-a", env.ns, grace_period_seconds=0)

        async def gone() -> bool:
            return not (proc_dir / "pod" / uids["frac-a"]).exists()

        await eventually(gone, timeout_s=60, what="frac-a's directory removed")
        assert (files_of(uids["frac-b"]) / "utilization.sm").is_file()

        # Bad input on another reserved GPU: one Warning Event per pod, the pod gets the
        # documented default (the whole GPU / its fraction), everything else goes on.
        bad_group = {"runai-gpu-group": "grp-bad"}
        await env.core.create_namespaced_pod(
            env.reservation_ns, gpu_pod("runai-reservation-gpu-q", node, 1, bad_group)
        )
        bad = {
            "bad-zero": ({"gpu-fraction": "0"}, "InvalidGpuFractionAnnotation"),
            "bad-big": ({"gpu-fraction": "1.5"}, "InvalidGpuFractionAnnotation"),
            "bad-abc": ({"gpu-fraction": "abc"}, "InvalidGpuFractionAnnotation"),
            "bad-mem": ({"gpu-fraction": "0.5", "gpu-memory": "lots"},
                        "InvalidGpuMemoryAnnotation"),
        }  # fmt: skip
        for name, (notes, _) in bad.items():
            body = gpu_pod(name, node, 0, bad_group)
            body["metadata"]["annotations"] = notes
            await env.core.create_namespaced_pod(env.ns, body)
            uids[name] = (await env.core.read_namespaced_pod(name, env.ns)).metadata.uid

        async def bad_files() -> bool:
            return all((proc_dir / "pod" / uids[n]).is_dir() for n in bad) and await written_for(
                ["frac-b", *bad]
            )

        async def written_for(names: list[str]) -> bool:
            current = await env.record(node)
            assert current is not None
            for name in names:
                uid = uids[name]
                (g,) = [g for g in current.gpus if uid in g.status.usage]
                memory = process_memory_mib(g, profile_for(g))
                path = proc_dir / "pod" / uid / "metrics" / "gpu" / str(g.index)
                if _read(path / "memory.allocated") != str(memory[uid] * MIB):
                    return False
            return True

        await eventually(bad_files, timeout_s=60, what=f"files of the bad pods\n{exporter.tail()}")
        for name, (_, reason) in bad.items():

            async def warned(name: str = name, reason: str = reason) -> bool:
                events = await env.core.list_namespaced_event(
                    env.ns, field_selector=f"involvedObject.name={name},reason={reason}"
                )
                return len(events.items) == 1 and events.items[0].type == "Warning"

            await eventually(warned, timeout_s=30, what=f"one {reason} Warning on {name}")
        # frac-b, on the first GPU, is untouched by them.
        assert _read(files_of(uids["frac-b"]) / "memory.allocated") == str(
            gpu.memory_mib // 4 * MIB
        )
        assert exporter.proc is not None and exporter.proc.returncode is None
    finally:
        code = await exporter.stop()
    assert code == 0, exporter.tail()
    problems = [
        line
        for line in exporter.log.read_text().splitlines()
        if '"level": "warning"' in line or '"level": "error"' in line
    ]
    assert not [p for p in problems if "runai" in p], problems
