"""A default install on a cluster without Run:ai (and, on the oldest Kubernetes, without DRA)
is quiet: once it has settled, a minute with nothing happening logs no warning or error.

The chart is installed with its default values into its own namespace and its Deployments run
as local processes under the chart's ServiceAccounts (fgo_localcluster.operator, as in e2e).
Issue 19: the PodGroups watch used to log a `watch.retry` warning every 15-30 s forever.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.operator import LocalOperator
from fgo_localcluster.testing import KwokNodeFactory, eventually
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

CHART = Path(__file__).parents[2] / "charts" / "fake-gpu-operator"
POOL_LABEL = "run.ai/simulated-gpu-node-pool"
QUIET_SECONDS = 60
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def _loud_lines(text: str) -> list[str]:
    """Log lines at warning level or above (JSON lines; anything unparsable counts too: a
    service's log is JSON from its first line)."""
    loud = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry: dict[str, Any] = json.loads(line)
        except ValueError:
            loud.append(line)
            continue
        if str(entry.get("level", "")).lower() in ("warning", "error", "critical"):
            loud.append(line)
    return loud


async def test_a_default_install_is_quiet_for_a_minute(
    kube: client.ApiClient,
    local_cluster: LocalCluster,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> None:
    name = f"quiet-{secrets.token_hex(3)}"
    operator = LocalOperator(
        kubeconfig=local_cluster.kubeconfig,
        bin_dir=local_cluster.bin_dir,
        chart=CHART,
        state_dir=tmp_path,
        namespace=name,
        release=name,
        progress=lambda message: None,
    )
    core: Any = client.CoreV1Api(kube)
    workloads = await operator.install()
    names = [w.name for w in workloads]
    try:
        await operator.start(workloads)
        await operator.wait_ready(names, timeout_s=120)
        (node,) = await kwok_nodes(1, labels={POOL_LABEL: "default"})
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "gpu"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
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
        uid = (await core.create_namespaced_pod(name, pod)).metadata.uid

        async def held() -> bool | None:
            try:
                cm = await core.read_namespaced_config_map(f"topology-{node}", name)
            except client.ApiException:
                return None
            return True if uid in (cm.data or {}).get("topology.yml", "") else None

        await eventually(held, timeout_s=90, what="the GPU pod in its node's record")
        # The KWOK exporter serves the node's GPU and the pod holding it.
        (exporter,) = [n for n in names if "exporter" in n]
        port = operator.ports(exporter).get("metrics") or operator.ports(exporter)["health"]

        async def scraped() -> str | None:
            async with httpx.AsyncClient(timeout=5.0) as http:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            series = [line for line in text.splitlines() if line.startswith("DCGM_FI_DEV_GPU_UTIL")]
            return text if any(node in line and 'pod="gpu"' in line for line in series) else None

        await eventually(scraped, timeout_s=60, what=f"{exporter}: the pod's GPU in /metrics")
        offsets = {n: operator.log(n).stat().st_size for n in names}
        await asyncio.sleep(QUIET_SECONDS)
        loud: dict[str, list[str]] = {}
        for n in names:
            with operator.log(n).open(errors="replace") as log:
                log.seek(offsets[n])
                found = _loud_lines(log.read())
            if found:
                loud[n] = found
            assert operator.is_running(n), f"{n} exited"
        assert not loud, f"warnings in a quiet minute: {json.dumps(loud, indent=1)[:3000]}"
    finally:
        await operator.stop()
        await operator.uninstall()
        await core.delete_namespace(name)
