"""The whole KWOK path: node joins a pool -> the real status-updater writes its record -> the
exporter labels the node -> the real scheduler places a pod by `nvidia.com/gpu.product` -> the
status-updater records the holder -> Prometheus sees the pod's GPU series -> pod deleted ->
series gone -> node leaves the pool -> its labels and series go."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from exporter_harness import Prometheus, StartExporter
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import KwokNodeFactory, eventually
from fgo_testkit.status_updater import StatusUpdaterProcess
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


async def test_pods_on_kwok_nodes_through_status_updater_exporter_and_prometheus(
    kube: client.ApiClient,
    exporter_cluster: LocalCluster,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    prometheus: Prometheus,
    start_exporter: StartExporter,
    tmp_path: Path,
) -> None:
    core: Any = client.CoreV1Api(kube)
    pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
    config = {
        "nodePoolLabelKey": pool_key,
        "nodePools": {
            "hopper": {"gpus": [{"type": "H100", "count": 2}]},
            "kepler": {"gpus": [{"type": "Tesla K80", "count": 2}]},
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
    await updater.start()
    try:
        exporter = await start_exporter(
            {"EXPORTER_MODE": "kwok", "TOPOLOGY_CM_NAMESPACE": namespace}
        )
        await prometheus.start([exporter.target])
        capacity = {"nvidia.com/gpu": "2"}
        (hopper,) = await kwok_nodes(1, labels={pool_key: "hopper"}, extra_capacity=capacity)
        (kepler,) = await kwok_nodes(1, labels={pool_key: "kepler"}, extra_capacity=capacity)

        async def labels(node: str) -> dict[str, str]:
            return dict((await core.read_node(node)).metadata.labels or {})

        async def labelled() -> bool:
            h, k = await labels(hopper), await labels(kepler)
            return (
                h.get("nvidia.com/gpu.product") == "NVIDIA-H100-80GB-HBM3"
                and k.get("nvidia.com/gpu.product") == "Tesla-K80"
            )

        await eventually(
            labelled, timeout_s=60, what="GFD labels from the status-updater's records"
        )

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "train",
                "annotations": {"run.ai/simulated-gpu-utilization": "70"},
            },
            "spec": {
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                "tolerations": [KWOK_TOLERATION],
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
        await core.create_namespaced_pod(namespace, pod)

        async def scheduled() -> str | None:
            p = await core.read_namespaced_pod("train", namespace)
            return p.spec.node_name if p.status.phase == "Running" else None

        assert await eventually(scheduled, timeout_s=60, what="pod Running") == hopper

        async def pod_series() -> list[dict[str, Any]] | None:
            found = await prometheus.query(
                f'DCGM_FI_DEV_GPU_UTIL{{pod="train",namespace="{namespace}"}}'
            )
            return found or None

        (series,) = await eventually(pod_series, timeout_s=60, what="the pod's GPU series")
        assert series["value"][1] == "70"
        assert series["metric"]["Hostname"] == hopper
        assert series["metric"]["modelName"] == "NVIDIA H100 80GB HBM3"
        # The same GPU as the status-updater recorded (one identity everywhere).
        cm = await core.read_namespaced_config_map(f"topology-{hopper}", namespace)
        held = [g for g in yaml.safe_load(cm.data["topology.yml"])["gpus"]
                if (g.get("status") or {}).get("holders")]  # fmt: skip
        assert [g["id"] for g in held] == [series["metric"]["UUID"]]

        await core.delete_namespaced_pod("train", namespace, grace_period_seconds=0)

        async def gone() -> bool:
            return not await prometheus.query('DCGM_FI_DEV_GPU_UTIL{pod="train"}')

        await eventually(gone, timeout_s=60, what="the pod's series gone")

        # The node leaves its pool: the status-updater drops its record, we drop its labels.
        await core.patch_node(hopper, {"metadata": {"labels": {pool_key: None}}})

        async def unlabelled() -> bool:
            return "nvidia.com/gpu.product" not in await labels(hopper)

        await eventually(unlabelled, timeout_s=60, what="labels removed after leaving the pool")

        async def no_series() -> bool:
            return not await prometheus.query(f'DCGM_FI_DEV_GPU_TEMP{{Hostname="{hopper}"}}')

        await eventually(no_series, timeout_s=60, what="the node's series gone")
        assert (await labels(kepler))["nvidia.com/gpu.count"] == "2"
    finally:
        await updater.stop()
