"""`helm upgrade` of a run-ai/fake-gpu-operator 0.2 release to this chart (issue 18, point 3).

The "reference release" is built here from the facts in upstream-reference.md (§3, §4): its
objects under their names, labels and selectors (status-updater, device-plugin,
kwok-gpu-device-plugin, nvidia-dcgm-exporter DaemonSet and -kwok Deployment with their
Services, ConfigMap topology), and the per-node record its status-updater wrote for a KWOK
node, with a running GPU pod on GPU index 1. Then our chart upgrades the same release with the
reference's values file and our services start. What must hold:

- the upgrade succeeds (two of our objects keep the reference's names: their selectors must be
  the ones the API already has, spec.selector being immutable);
- objects we keep by name are updated in place (same UID), ConfigMap topology too;
- the reference's Deployments and DaemonSets that we do not render are gone;
- the node keeps its GPU identities and the running pod keeps GPU 1 (no re-shuffle).

The node is in a pool label key of its own, so the session's release (tests/e2e/conftest.py)
never touches it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodes import api_client
from fgo_localcluster.operator import LocalOperator
from fgo_localcluster.testing import KwokNodeFactory, create_namespace, unique_name
from kubernetes_asyncio import client

CHART = Path(__file__).parents[2] / "charts" / "fake-gpu-operator"
POOL_KEY = "fgo.test/upgrade-pool"
GPUS = 2
GPU_MEMORY = 11441
REFERENCE_REPO = "ghcr.io/run-ai/fake-gpu-operator"

TOPOLOGY = {
    "nodePools": {
        "default": {"gpuProduct": "Tesla-K80", "gpuCount": GPUS, "gpuMemory": GPU_MEMORY}
    },
    "nodePoolLabelKey": POOL_KEY,
    "migStrategy": "mixed",
}


def _workload(kind: str, name: str, labels: dict[str, str], selector: dict[str, str]) -> str:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "containers": [{"name": name, "image": f"{REFERENCE_REPO}/{name}:0.2.0"}],
            },
        },
    }
    if kind == "Deployment":
        spec["replicas"] = 1
    body = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "labels": {"app": labels["app"]}},
        "spec": spec,
    }
    return yaml.safe_dump(body, sort_keys=False)


def _service(name: str, selector: dict[str, str]) -> str:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "labels": {"app": selector["app"]},
            "annotations": {"prometheus.io/scrape": "true"},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "gpu-metrics", "port": 9400, "targetPort": 9400, "protocol": "TCP"}],
        },
    }
    return yaml.safe_dump(body, sort_keys=False)


def write_reference_chart(root: Path) -> Path:
    """A chart whose objects have the reference 0.2.0 names, labels and selectors."""
    chart = root / "fake-gpu-operator"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: fake-gpu-operator\nversion: 0.2.0\nappVersion: 0.2.0\n"
    )
    dcgm = {"app": "nvidia-dcgm-exporter", "component": "status-exporter"}
    objects = [
        _workload(
            "Deployment",
            "status-updater",
            {"app": "status-updater", "component": "status-updater"},
            {"app": "status-updater", "component": "status-updater"},
        ),
        _workload(
            "DaemonSet",
            "device-plugin",
            {"app": "device-plugin", "component": "device-plugin"},
            {"app": "device-plugin", "component": "device-plugin"},
        ),
        _workload(
            "Deployment",
            "kwok-gpu-device-plugin",
            {"app": "kwok-gpu-device-plugin", "component": "kwok-gpu-device-plugin"},
            {"app": "kwok-gpu-device-plugin", "component": "kwok-gpu-device-plugin"},
        ),
        _workload(
            "DaemonSet",
            "nvidia-dcgm-exporter",
            {**dcgm, "app.kubernetes.io/name": "nvidia-container-toolkit"},
            {"app": "nvidia-dcgm-exporter"},
        ),
        _workload(
            "Deployment",
            "nvidia-dcgm-exporter-kwok",
            {
                "app": "nvidia-dcgm-exporter-kwok",
                "app.kubernetes.io/name": "nvidia-container-toolkit",
            },
            {"app": "nvidia-dcgm-exporter-kwok"},
        ),
        _service("nvidia-dcgm-exporter", dcgm),
        _service("nvidia-dcgm-exporter-kwok", {"app": "nvidia-dcgm-exporter-kwok"}),
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "topology"},
                "data": {"topology.yml": yaml.safe_dump(TOPOLOGY, sort_keys=False)},
            }
        ),
    ]
    (chart / "templates" / "reference.yaml").write_text("---\n".join(objects))
    return chart


def gpu_uuid(node: str, index: int) -> str:
    """The reference's GPU identity: GPU- + UUIDv5(nil namespace, "<node>-<index>")."""
    return "GPU-" + str(uuid.uuid5(uuid.UUID(int=0), f"{node}-{index}"))


def reference_record(node: str, pod: dict[str, Any]) -> dict[str, Any]:
    """What the reference's status-updater wrote for the node (upstream-reference.md §1.5)."""
    meta = pod["metadata"]
    free = {"namespace": "", "pod": "", "container": ""}
    gpus = [
        {"id": gpu_uuid(node, 0), "status": {"allocatedBy": free, "podGpuUsageStatus": {}}},
        {
            "id": gpu_uuid(node, 1),
            "status": {
                "allocatedBy": {
                    "namespace": meta["namespace"],
                    "pod": meta["name"],
                    "container": "main",
                },
                "podGpuUsageStatus": {
                    meta["uid"]: {
                        "utilization": {"min": 100, "max": 100},
                        "fbUsed": GPU_MEMORY,
                        "useKnativeUtilization": False,
                    }
                },
            },
        },
    ]
    document = {
        "gpuMemory": GPU_MEMORY,
        "gpuProduct": "Tesla-K80",
        "migStrategy": "mixed",
        "gpus": gpus,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"topology-{node}",
            "labels": {"node-topology": "true", "node-name": node},
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "data": {"topology.yml": yaml.safe_dump(document, sort_keys=False)},
    }


def helm(cluster: LocalCluster, *args: str) -> str:
    result = subprocess.run(
        [str(cluster.bin_dir / "helm"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        check=False,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
    return result.stdout


async def uids(api: client.ApiClient, namespace: str) -> dict[str, str]:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    found = {}
    for d in (await apps.list_namespaced_deployment(namespace)).items:
        found[f"Deployment/{d.metadata.name}"] = d.metadata.uid
    for d in (await apps.list_namespaced_daemon_set(namespace)).items:
        found[f"DaemonSet/{d.metadata.name}"] = d.metadata.uid
    for s in (await core.list_namespaced_service(namespace)).items:
        found[f"Service/{s.metadata.name}"] = s.metadata.uid
    cm = await core.read_namespaced_config_map("topology", namespace)
    found["ConfigMap/topology"] = cm.metadata.uid
    return found


async def wait_for(probe: Any, what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")


async def test_helm_upgrade_from_a_reference_release_keeps_gpus_and_allocations(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    namespace = unique_name("e2e-upgrade", 30)
    release = "fake-gpu-operator"
    async with api_client(local_cluster.kubeconfig) as api:
        core = client.CoreV1Api(api)
        await create_namespace(api, namespace)
        nodes = KwokNodeFactory(api, unique_name("upg", 20) + "-")
        operator = LocalOperator.for_cluster(
            local_cluster, CHART, namespace=namespace, release=release
        )
        try:
            # 1. The reference release, its node record and a GPU pod it placed on GPU 1.
            reference = write_reference_chart(tmp_path)
            helm(local_cluster, "install", release, str(reference), "--namespace", namespace)
            (node,) = await nodes(
                1, pool="default", labels={POOL_KEY: "default"},
                extra_capacity={"nvidia.com/gpu": str(GPUS)},
            )  # fmt: skip
            pod_body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "trainer", "namespace": namespace},
                "spec": {
                    "nodeName": node,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            }
            created = await core.create_namespaced_pod(namespace, pod_body)
            pod = {
                "metadata": {"namespace": namespace, "name": "trainer", "uid": created.metadata.uid}
            }
            await core.create_namespaced_config_map(namespace, reference_record(node, pod))
            before = await uids(api, namespace)

            # 2. helm upgrade to our chart with the reference's values; our services start.
            workloads = await operator.install(
                [CHART / "ci" / "reference-values.yaml"],
                [f"topology.nodePoolLabelKey={POOL_KEY}"],
            )
            status = json.loads(
                helm(local_cluster, "status", release, "--namespace", namespace, "-o", "json")
            )
            assert status["info"]["status"] == "deployed" and status["version"] == 2
            after = await uids(api, namespace)
            for kept in (
                "DaemonSet/nvidia-dcgm-exporter",
                "Deployment/nvidia-dcgm-exporter-kwok",
                "Service/nvidia-dcgm-exporter",
                "Service/nvidia-dcgm-exporter-kwok",
                "ConfigMap/topology",
            ):
                assert after.get(kept) == before[kept], f"{kept} was re-created or lost"
            for gone in (
                "Deployment/status-updater",
                "DaemonSet/device-plugin",
                "Deployment/kwok-gpu-device-plugin",
            ):
                assert gone not in after, f"{gone} of the reference release survived"

            names = [w.name for w in workloads]
            await operator.start(workloads)
            await operator.wait_ready(names, timeout_s=120)

            # 3. Our status-updater took the record over: same GPUs, the pod still on GPU 1.
            async def record() -> dict[str, Any] | None:
                cm = await core.read_namespaced_config_map(f"topology-{node}", namespace)
                data = yaml.safe_load((cm.data or {}).get("topology.yml", "") or "{}")
                # Ours marks what it wrote; until then the reference's document is there.
                return data if _written_by_us(cm) else None

            data = await wait_for(record, "our status-updater to write the node's record")
            assert [g["id"] for g in data["gpus"]] == [gpu_uuid(node, 0), gpu_uuid(node, 1)]
            holders = [g["status"]["allocatedBy"].get("pod", "") for g in data["gpus"]]
            assert holders == ["", "trainer"], data["gpus"]
            assert pod["metadata"]["uid"] in data["gpus"][1]["status"]["podGpuUsageStatus"]
        finally:
            if operator.dir.exists():
                await operator.uninstall()
            else:
                subprocess.run(
                    [str(local_cluster.bin_dir / "helm"), "uninstall", release, "-n", namespace],
                    env={**os.environ, "KUBECONFIG": str(local_cluster.kubeconfig)},
                    check=False,
                )
            await nodes.cleanup()
            await core.delete_namespace(namespace)


def _written_by_us(cm: client.V1ConfigMap) -> bool:
    """Our status-updater makes the Node the record's owner; the reference's does not."""
    return any(o.kind == "Node" for o in cm.metadata.owner_references or [])
