"""The fake kubelet podresources socket and sysfs tree, against the real control plane.

A KWOK node of a pool with ``numa: {zones: 2}`` and 8 GPUs; the real status-updater writes its
record and holds GPUs for pods the real scheduler places; the status-exporter runs in node mode
for that node with ``POD_RESOURCES_SOCKET`` and ``SYSFS_ROOT``. A real gRPC client (our
kubelet-api stubs) asks the socket what a topology-aware node agent asks the kubelet.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from exporter_harness import StartExporter
from fgo_common.identity import gpu_uuid
from fgo_kubelet_api import podresources_v1 as podres
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import KwokNodeFactory, eventually
from fgo_testkit.status_updater import StatusUpdaterProcess
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

pb2 = podres.pb2
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
GI = 1024**3


def gpu_pod(name: str, node: str, gpus: int, cpu: str, memory: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [KWOK_TOLERATION],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {
                        "requests": {"cpu": cpu, "memory": memory},
                        "limits": {"nvidia.com/gpu": str(gpus)},
                    },
                }
            ],
        },
    }


def zones(entries: Any) -> list[list[int]]:
    return [[n.ID for n in e.topology.nodes] for e in entries]


async def test_podresources_socket_for_a_numa_node(
    kube: client.ApiClient,
    exporter_cluster: LocalCluster,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    start_exporter: StartExporter,
    tmp_path: Path,
) -> None:
    core: Any = client.CoreV1Api(kube)
    pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
    config = {
        "nodePoolLabelKey": pool_key,
        "nodePools": {
            "hgx": {
                "gpus": [{"type": "H100", "count": 8}],
                "numa": {"zones": 2, "cpuPerZone": "16", "memPerZone": "64Gi"},
            }
        },
    }
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
    )
    updater = StatusUpdaterProcess(
        exporter_cluster.kubeconfig,
        tmp_path / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=namespace,
        RESOURCE_RESERVATION_NAMESPACE=f"{namespace[:50]}-res",
        PROMETHEUS_URL="",
        DEBOUNCE_SECONDS="0.1",
    )
    # A unix socket path must fit in 107 bytes: pytest's tmp_path may not.
    short = Path(tempfile.mkdtemp(prefix="fgo-pr-"))
    sock = short / "pod-resources" / "kubelet.sock"
    sysfs = short / "sys"
    await updater.start()
    try:
        (node,) = await kwok_nodes(
            1, labels={pool_key: "hgx"}, extra_capacity={"nvidia.com/gpu": "8"}
        )
        await start_exporter(
            {
                "EXPORTER_MODE": "node",
                "NODE_NAME": node,
                "TOPOLOGY_CM_NAMESPACE": namespace,
                "GFD_LABELS_ENABLED": "false",
                "POD_RESOURCES_SOCKET": str(sock),
                "SYSFS_ROOT": str(sysfs),
            }
        )
        uuids = [gpu_uuid(node, i) for i in range(8)]
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            stub = podres.pb2_grpc.PodResourcesListerStub(channel)

            async def allocatable() -> Any:
                try:
                    resp = await stub.GetAllocatableResources(pb2.AllocatableResourcesRequest())
                except grpc.aio.AioRpcError:
                    return None  # not serving yet, or no record yet
                return resp if len(resp.devices) == 8 else None

            alloc = await eventually(allocatable, timeout_s=60, what="allocatable devices")
            assert [d.device_ids[0] for d in alloc.devices] == uuids
            assert {d.resource_name for d in alloc.devices} == {"nvidia.com/gpu"}
            assert zones(alloc.devices) == [[0]] * 4 + [[1]] * 4
            assert list(alloc.cpu_ids) == list(range(32))
            assert [(m.memory_type, m.size) for m in alloc.memory] == [("memory", 64 * GI)] * 2
            assert zones(alloc.memory) == [[0], [1]]

            # sysfs beside it (``online`` is written last)
            node_dir = sysfs / "devices/system/node"

            async def sysfs_written() -> bool:
                return (node_dir / "online").exists()

            await eventually(sysfs_written, timeout_s=10, what="sysfs written")
            assert (node_dir / "online").read_text() == "0-1\n"
            assert (node_dir / "possible").read_text() == "0-1\n"
            assert (node_dir / "node0/cpulist").read_text() == "0-15\n"
            assert (node_dir / "node1/cpulist").read_text() == "16-31\n"
            assert (sysfs / "devices/system/cpu/online").read_text() == "0-31\n"

            # Two pods: 4 GPUs fill zone 0, then 2 GPUs go to zone 1.
            created = time.monotonic()
            await core.create_namespaced_pod(namespace, gpu_pod("big", node, 4, "4", "8Gi"))
            await core.create_namespaced_pod(namespace, gpu_pod("small", node, 2, "2", "4Gi"))

            async def listed() -> dict[str, Any] | None:
                resp = await stub.List(pb2.ListPodResourcesRequest())
                ours = {p.name: p for p in resp.pod_resources if p.namespace == namespace}
                if len(ours) == 2 and all(len(p.containers[0].devices) for p in ours.values()):
                    return ours
                return None

            ours = await eventually(listed, timeout_s=30, interval_s=0.05, what="pods listed")
            shown = time.monotonic() - created
            big, small = ours["big"].containers[0], ours["small"].containers[0]
            assert big.name == "main"
            assert sorted(d.device_ids[0] for d in big.devices) == sorted(uuids[:4])
            assert zones(big.devices) == [[0]] * 4
            assert list(big.cpu_ids) == [0, 1, 2, 3]
            assert [(m.size, m.topology.nodes[0].ID) for m in big.memory] == [(8 * GI, 0)]
            assert sorted(d.device_ids[0] for d in small.devices) == sorted(uuids[4:6])
            assert zones(small.devices) == [[1], [1]]
            assert list(small.cpu_ids) == [16, 17]
            assert [(m.size, m.topology.nodes[0].ID) for m in small.memory] == [(4 * GI, 1)]

            got = await stub.Get(
                pb2.GetPodResourcesRequest(pod_name="small", pod_namespace=namespace)
            )
            assert got.pod_resources == ours["small"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Get(pb2.GetPodResourcesRequest(pod_name="nope", pod_namespace=namespace))
            assert err.value.code() == grpc.StatusCode.UNKNOWN  # the kubelet's plain error
            assert err.value.details() == f"pod nope in namespace {namespace} not found"

            # List latency over the socket (2 GPU pods on the node).
            samples = []
            for _ in range(50):
                start = time.perf_counter()
                await stub.List(pb2.ListPodResourcesRequest())
                samples.append(time.perf_counter() - start)
            p50 = statistics.median(samples)
            print(
                f"podresources: pods shown {shown:.2f}s after creation; List p50 "
                f"{p50 * 1000:.2f} ms, max {max(samples) * 1000:.2f} ms"
            )
            assert p50 < 0.05

            deleted = time.monotonic()
            await core.delete_namespaced_pod("big", namespace, grace_period_seconds=0)

            async def gone() -> bool | None:
                resp = await stub.List(pb2.ListPodResourcesRequest())
                names = {p.name for p in resp.pod_resources if p.namespace == namespace}
                return True if names == {"small"} else None

            await eventually(gone, timeout_s=30, interval_s=0.05, what="deleted pod gone")
            print(f"podresources: deleted pod gone {time.monotonic() - deleted:.2f}s after delete")
            # The remaining pod keeps its CPU ids.
            got = await stub.Get(
                pb2.GetPodResourcesRequest(pod_name="small", pod_namespace=namespace)
            )
            assert list(got.pod_resources.containers[0].cpu_ids) == [16, 17]
    finally:
        await updater.stop()
        shutil.rmtree(short, ignore_errors=True)
