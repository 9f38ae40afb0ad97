"""The status-exporter against the real local control plane and a real Prometheus server.

The test plays the status-updater's part (it writes the topology ConfigMaps, and records which
pod holds which GPU) so the exporter is tested on its own contract: ConfigMaps in, metrics and
node labels out. Pods are real: created on KWOK nodes, placed by the real scheduler.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from exporter_harness import ExporterProcess, Prometheus, StartExporter
from fgo_common.config import load_cluster_config
from fgo_common.identity import mig_uuid
from fgo_common.nodebuild import build_node_topology
from fgo_common.profiles import BUILTIN_CATALOG
from fgo_common.topology import (
    Holder,
    MigDevice,
    NodeTopology,
    PodUsage,
    UtilizationRange,
)
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.tcpproxy import TcpProxy, proxied_kubeconfig
from fgo_localcluster.testing import KwokNodeFactory, eventually, pod_phase
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def record(node: str, gpu_type: str, count: int, mig_strategy: str = "none") -> NodeTopology:
    config = load_cluster_config(
        f"migStrategy: {mig_strategy}\n"
        f"nodePools: {{p: {{gpus: [{{type: {gpu_type}, count: {count}}}]}}}}"
    )
    return build_node_topology(node, config.pools["p"], config, kwok=True)


def configmap_body(topology: NodeTopology, namespace: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"topology-{topology.node_name}",
            "namespace": namespace,
            "labels": {"node-topology": "true", "node-name": topology.node_name},
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "data": {"topology.yml": topology.to_yaml()},
    }


async def write_record(core: Any, topology: NodeTopology, namespace: str) -> None:
    """Create or replace ``topology-<node>``, as the status-updater does."""
    body = configmap_body(topology, namespace)
    try:
        await core.create_namespaced_config_map(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        await core.replace_namespaced_config_map(body["metadata"]["name"], namespace, body)


async def node_labels(core: Any, name: str) -> dict[str, str]:
    node = await core.read_node(name)
    return dict(node.metadata.labels or {})


def gpu_pod(name: str, node_selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": node_selector,
            "tolerations": [KWOK_TOLERATION],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "train",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }


async def wait_running(core: Any, namespace: str, name: str) -> Any:
    async def running() -> Any:
        pod = await core.read_namespaced_pod(name, namespace)
        return pod if pod_phase(pod) == "Running" else None

    return await eventually(running, timeout_s=60, what=f"pod {namespace}/{name} Running")


def hold(topology: NodeTopology, index: int, pod: Any, util: int, fb_mib: int) -> None:
    gpu = topology.gpus[index]
    meta = pod.metadata
    gpu.status.holders = [Holder(meta.namespace, meta.name, "train", meta.uid)]
    gpu.status.usage = {
        meta.uid: PodUsage(UtilizationRange(util, util), fb_mib, namespace=meta.namespace,
                           pod=meta.name)
    }  # fmt: skip


async def series(prom: Prometheus, promql: str, expected: int) -> list[dict[str, Any]]:
    """Poll Prometheus until ``promql`` returns ``expected`` series."""

    async def probe() -> list[dict[str, Any]] | None:
        result = await prom.query(promql)
        return result if len(result) == expected else None

    if expected == 0:

        async def gone() -> bool:
            return not await prom.query(promql)

        await eventually(gone, timeout_s=30, what=f"no series for {promql}")
        return []
    return await eventually(probe, timeout_s=30, what=f"{expected} series for {promql}")


async def test_kwok_mode_dashboards_labels_and_scheduling(
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    prometheus: Prometheus,
    start_exporter: StartExporter,
) -> None:
    core: Any = client.CoreV1Api(kube)
    h100_node, k80_node = await kwok_nodes(2, extra_capacity={"nvidia.com/gpu": "2"})
    h100 = record(h100_node, "H100", 2, mig_strategy="mixed")
    k80 = record(k80_node, "K80", 2)
    for topology in (h100, k80):
        await write_record(core, topology, namespace)

    exporter = await start_exporter({"EXPORTER_MODE": "kwok", "TOPOLOGY_CM_NAMESPACE": namespace})
    await prometheus.start([exporter.target])
    await eventually(prometheus.targets_up, timeout_s=30, what="scrape target up")

    # GFD labels appear on both nodes.
    async def labelled() -> bool:
        h, k = await node_labels(core, h100_node), await node_labels(core, k80_node)
        return (
            h.get("nvidia.com/gpu.product") == "NVIDIA-H100-80GB-HBM3"
            and k.get("nvidia.com/gpu.product") == "Tesla-K80"
        )

    await eventually(labelled, timeout_s=30, what="GFD labels on both nodes")
    labels = await node_labels(core, h100_node)
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.family"] == "hopper"
    assert labels["nvidia.com/mig.strategy"] == "mixed"
    assert labels["run.ai/fake.gpu"] == "true"
    assert labels["kubernetes.io/hostname"] == h100_node  # others' labels untouched

    # The real scheduler places a pod by the GFD product label.
    await core.create_namespaced_pod(
        namespace, gpu_pod("trainer-0", {"nvidia.com/gpu.product": "Tesla-K80"})
    )
    pod = await wait_running(core, namespace, "trainer-0")
    assert pod.spec.node_name == k80_node
    hold(k80, 0, pod, util=80, fb_mib=5000)
    await write_record(core, k80, namespace)

    # The dcgm-exporter Grafana dashboard's queries.
    util = await series(prometheus, "DCGM_FI_DEV_GPU_UTIL", 4)
    assert {(s["metric"]["Hostname"], s["metric"]["gpu"]) for s in util} == {
        (h100_node, "0"), (h100_node, "1"), (k80_node, "0"), (k80_node, "1"),
    }  # fmt: skip
    (busy,) = await series(prometheus, 'DCGM_FI_DEV_GPU_UTIL{pod="trainer-0"}', 1)
    assert busy["value"][1] == "80"
    assert busy["metric"]["namespace"] == namespace
    assert busy["metric"]["container"] == "train"
    assert busy["metric"]["modelName"] == "Tesla K80"
    assert busy["metric"]["UUID"] == k80.gpus[0].id
    (fb,) = await series(prometheus, 'DCGM_FI_DEV_FB_USED{pod="trainer-0"}', 1)
    assert fb["value"][1] == "5000"
    power = await series(prometheus, "DCGM_FI_DEV_POWER_USAGE", 4)
    watts = {(p["metric"]["Hostname"], p["metric"]["gpu"]): float(p["value"][1]) for p in power}
    assert watts[(k80_node, "0")] > watts[(k80_node, "1")]  # the busy GPU draws more
    temps = await series(prometheus, "avg by (Hostname) (DCGM_FI_DEV_GPU_TEMP)", 2)
    assert all(20 < float(t["value"][1]) < 100 for t in temps)
    assert await series(prometheus, "sum(DCGM_FI_DEV_POWER_USAGE)", 1)
    per_pod = await series(prometheus, 'sum by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{pod!=""})', 1)
    assert per_pod[0]["metric"] == {"namespace": namespace, "pod": "trainer-0"}
    await series(prometheus, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 2)  # Volta+ only: the H100s
    await series(prometheus, "DCGM_FI_DEV_SM_CLOCK", 4)
    (energy,) = await series(
        prometheus,
        f'rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{Hostname="{h100_node}",gpu="0"}}[5s])',
        1,
    )
    assert float(energy["value"][1]) > 0  # a counter that grows (mJ/s = mW)

    # Pod deleted -> the status-updater drops the holder -> its series vanish next scrape.
    await core.delete_namespaced_pod("trainer-0", namespace, grace_period_seconds=0)
    idle_k80 = record(k80_node, "K80", 2)
    await write_record(core, idle_k80, namespace)
    await series(prometheus, 'DCGM_FI_DEV_GPU_UTIL{pod="trainer-0"}', 0)
    assert "trainer-0" not in await exporter.scrape()
    await series(prometheus, "DCGM_FI_DEV_GPU_UTIL", 4)  # the GPUs stay, idle

    # Labels change with the topology: the H100s get a MIG layout.
    profile = BUILTIN_CATALOG.get("h100")
    for gpu in h100.gpus:
        gpu.mig_enabled = True
        gpu.mig_devices = []
        for gi, start in enumerate(range(7), start=1):
            spec = profile.mig_profile("1g.10gb")
            gpu.mig_devices.append(
                MigDevice(mig_uuid(gpu.id, gi, 0), spec.name, gi, 0, spec.gi_profile_id,
                          spec.ci_profile_id, start, 1, spec.memory_mib, spec.sm_count)
            )  # fmt: skip
    await write_record(core, h100, namespace)

    async def mig_labelled() -> bool:
        h = await node_labels(core, h100_node)
        return h.get("nvidia.com/mig-1g.10gb.count") == "14" and h["nvidia.com/gpu.replicas"] == "0"

    await eventually(mig_labelled, timeout_s=30, what="MIG labels on the H100 node")
    mig = await series(prometheus, f'DCGM_FI_DEV_FB_USED{{Hostname="{h100_node}"}}', 14)
    assert {s["metric"]["GPU_I_PROFILE"] for s in mig} == {"1g.10gb"}
    # A real MIG device's GPU_UTIL does not exist; only the K80s report it now.
    await series(prometheus, "DCGM_FI_DEV_GPU_UTIL", 2)

    # The node leaves its pool: its ConfigMap goes, and with it its labels and series.
    await core.delete_namespaced_config_map(f"topology-{h100_node}", namespace)

    async def unlabelled() -> bool:
        h = await node_labels(core, h100_node)
        return not any(k.startswith("nvidia.com/") or k == "run.ai/fake.gpu" for k in h)

    await eventually(unlabelled, timeout_s=30, what="labels removed from the H100 node")
    assert "kubernetes.io/hostname" in await node_labels(core, h100_node)
    await series(prometheus, f'DCGM_FI_DEV_FB_USED{{Hostname="{h100_node}"}}', 0)
    assert (await node_labels(core, k80_node))["nvidia.com/gpu.product"] == "Tesla-K80"


async def test_node_mode_serves_one_node_with_reference_hostname(
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    prometheus: Prometheus,
    start_exporter: StartExporter,
) -> None:
    core: Any = client.CoreV1Api(kube)
    mine, other = await kwok_nodes(2)
    for name in (mine, other):
        await write_record(core, record(name, "H100", 1), namespace)
    exporter = await start_exporter(
        {
            "EXPORTER_MODE": "node",
            "NODE_NAME": mine,
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "REFERENCE_HOSTNAME": "true",
            "HOSTNAME_LABEL": "hostname",
        }
    )
    await prometheus.start([exporter.target])
    (only,) = await series(prometheus, "DCGM_FI_DEV_GPU_TEMP", 1)
    assert only["metric"]["hostname"].startswith("nvidia-dcgm-exporter-")
    assert only["metric"]["UUID"] == record(mine, "H100", 1).gpus[0].id

    async def labelled() -> bool:
        return (await node_labels(core, mine)).get("nvidia.com/gpu.count") == "1"

    await eventually(labelled, timeout_s=30, what=f"GFD labels on {mine}")
    assert "nvidia.com/gpu.product" not in await node_labels(core, other)


async def test_restarted_exporter_removes_labels_of_nodes_that_left_meanwhile(
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    start_exporter: StartExporter,
) -> None:
    core: Any = client.CoreV1Api(kube)
    (name,) = await kwok_nodes(1)
    await write_record(core, record(name, "H100", 2), namespace)
    env = {"EXPORTER_MODE": "kwok", "TOPOLOGY_CM_NAMESPACE": namespace}
    first = await start_exporter(env)

    async def labelled() -> bool:
        return (await node_labels(core, name)).get("nvidia.com/gpu.count") == "2"

    await eventually(labelled, timeout_s=30, what=f"GFD labels on {name}")
    assert await first.stop() == 0
    # While no exporter runs, the node leaves its pool.
    await core.delete_namespaced_config_map(f"topology-{name}", namespace)
    await start_exporter(env)

    async def unlabelled() -> bool:
        return "nvidia.com/gpu.count" not in await node_labels(core, name)

    await eventually(unlabelled, timeout_s=30, what=f"labels removed from {name}")


async def _health_metric(exporter: ExporterProcess, metric: str) -> float:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{exporter.health_port}/metrics") as r,
    ):
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((metric + "{", metric + " "))
    )


async def test_kwok_replicas_both_serve_metrics_only_the_leader_labels(
    exporter_cluster: LocalCluster,
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> None:
    """Two KWOK exporters with leader election, each through its own TCP proxy: both serve the
    metrics, only the Lease holder patches labels; the leader cut off, the other labels a node
    recorded meanwhile; the old leader, healed, patches nothing."""
    core: Any = client.CoreV1Api(kube)
    first, second = await kwok_nodes(2)
    await write_record(core, record(first, "H100", 2), namespace)
    replicas: list[tuple[ExporterProcess, TcpProxy]] = []

    async def labelled(node: str, count: str) -> bool:
        return (await node_labels(core, node)).get("nvidia.com/gpu.count") == count

    async def start(name: str) -> tuple[ExporterProcess, TcpProxy]:
        proxy = TcpProxy("127.0.0.1", exporter_cluster.ports.apiserver)
        await proxy.start()
        workdir = tmp_path / name
        workdir.mkdir()
        kubeconfig = proxied_kubeconfig(
            exporter_cluster.kubeconfig, workdir / "kubeconfig", proxy.port
        )
        env = {
            "EXPORTER_MODE": "kwok",
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "LEADER_ELECTION": "true",
            "LEASE_NAMESPACE": namespace,
            "LEASE_IDENTITY": f"replica-{name}",
            "LEASE_DURATION_SECONDS": "3",
            "RENEW_DEADLINE_SECONDS": "2",
            "RETRY_PERIOD_SECONDS": "0.3",
        }
        exporter = ExporterProcess(kubeconfig, env, workdir)
        replicas.append((exporter, proxy))
        await exporter.start()
        return exporter, proxy

    try:
        # The first replica labels the node (so it holds the Lease) before the second starts.
        a, a_proxy = await start("a")
        await eventually(lambda: labelled(first, "2"), timeout_s=30, what="labels by the leader")
        b, _ = await start("b")
        assert await _health_metric(a, "fgo_leader") == 1
        assert await _health_metric(b, "fgo_leader") == 0
        await asyncio.sleep(1)
        assert await _health_metric(b, "fgo_status_exporter_label_patches") == 0
        for exporter, _ in replicas:  # a standby serves the metrics too
            page = await exporter.scrape()
            assert page.count('DCGM_FI_DEV_GPU_UTIL{gpu="') == 2, page[:500]

        a_patches = await _health_metric(a, "fgo_status_exporter_label_patches")
        a_proxy.partition(12)
        await write_record(core, record(second, "H100", 1), namespace)
        await eventually(
            lambda: labelled(second, "1"), timeout_s=25, what="labels by the new leader"
        )
        assert await _health_metric(b, "fgo_leader") == 1
        a_proxy.heal()
        await asyncio.sleep(4)
        assert await _health_metric(a, "fgo_leader") == 0
        assert await _health_metric(a, "fgo_status_exporter_label_patches") == a_patches
    finally:
        for exporter, proxy in replicas:
            assert await exporter.stop() == 0, exporter.log_tail()
            await proxy.stop()


async def test_kwok_per_node_targets_through_prometheus_http_sd(
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    prometheus: Prometheus,
    start_exporter: StartExporter,
) -> None:
    """A real Prometheus discovers one target per KWOK node from the exporter's /http_sd and
    scrapes /metrics/<node>: each target's series carry its node's instance/node labels, and
    together they are the single page's series (scraped by a second job, alongside)."""
    core: Any = client.CoreV1Api(kube)
    names = await kwok_nodes(3, extra_capacity={"nvidia.com/gpu": "2"})
    for name, (gpu_type, count) in zip(names, [("H100", 2), ("K80", 2), ("H100", 1)], strict=True):
        await write_record(core, record(name, gpu_type, count), namespace)
    exporter = await start_exporter({"EXPORTER_MODE": "kwok", "TOPOLOGY_CM_NAMESPACE": namespace})
    await prometheus.start([exporter.target], http_sd=(f"http://{exporter.target}/http_sd",))

    up = await series(prometheus, 'up{job="dcgm-sd-0"} == 1', 3)
    assert {(u["metric"]["instance"], u["metric"]["node"]) for u in up} == {(n, n) for n in names}
    per_node = await series(prometheus, 'DCGM_FI_DEV_GPU_TEMP{job="dcgm-sd-0"}', 5)
    for s in per_node:
        assert s["metric"]["instance"] == s["metric"]["node"] == s["metric"]["Hostname"]
    assert {s["metric"]["node"] for s in per_node} == set(names)
    # Per-node series equal the single page's: the same label sets but job/instance/node (the
    # values come from scrapes at different instants, so only the unit-tested page compares
    # them byte for byte).
    drop = ("job", "instance", "node", "__name__")

    def keyed(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], str]:
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k not in drop)): r["value"][1]
            for r in result
        }

    for family in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_SM_CLOCK"):
        sd = keyed(await series(prometheus, f'{family}{{job="dcgm-sd-0"}}', 5))
        page = keyed(await series(prometheus, f'{family}{{job="dcgm-0"}}', 5))
        assert sd.keys() == page.keys(), family
    every = await prometheus.query('count by (job) ({job=~"dcgm-.*", __name__=~"DCGM_.*"})')
    counts = {r["metric"]["job"]: r["value"][1] for r in every}
    assert counts["dcgm-sd-0"] == counts["dcgm-0"], counts

    # A node that leaves is no longer a target.
    await core.delete_namespaced_config_map(f"topology-{names[2]}", namespace)
    await series(prometheus, 'up{job="dcgm-sd-0"}', 2)
