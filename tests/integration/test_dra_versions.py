"""What the DRA publishers do on the cluster at hand (issue 19): where resource.k8s.io serves v1
or v1beta2 they write through the newest of them and become ready; where it serves neither
(Kubernetes 1.31, where DRA is alpha v1alpha3 and off; 1.32, v1beta1 only) they exit with one
error line saying what is served and what is needed. Runs in the version matrix (make
integration-oldest) as well as on the default control plane."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import httpx
import pytest
from fgo_common.kube.served import DRA_GROUP, DRA_WRITE_VERSIONS, newest, served_versions
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.operator import LocalOperator, OperatorError
from fgo_testkit.status_updater import free_port
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

CHART = Path(__file__).parents[2] / "charts" / "fake-gpu-operator"


async def test_kwok_dra_plugin_uses_the_served_version_or_refuses_in_one_line(
    kube: client.ApiClient, local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    version = newest(await served_versions(kube, DRA_GROUP), DRA_WRITE_VERSIONS)
    port = free_port()
    log_path = tmp_path / "kwok-dra-plugin.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(local_cluster.kubeconfig),
        "TOPOLOGY_CM_NAMESPACE": namespace,
        "INSTANCE": f"kwok-dra-{namespace[-6:]}",
        "HEALTH_PORT": str(port),
        "LOG_LEVEL": "INFO",
    }
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fgo_kwok_dra_plugin", env=env, stdout=log, stderr=log
        )
    try:
        if version is None:
            async with asyncio.timeout(60):
                code = await proc.wait()
            lines = log_path.read_text().splitlines()
            assert code == 1, lines
            entries = [json.loads(line) for line in lines]
            loud = [e for e in entries if e.get("level") in ("warning", "error", "critical")]
            assert [e["event"] for e in loud] == ["dra.api_not_served"], lines
            assert loud[0]["needs"] == "v1 or v1beta2"
        else:
            async with httpx.AsyncClient(timeout=2.0) as http:
                for _ in range(240):
                    assert proc.returncode is None, log_path.read_text()
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.25)
                else:
                    raise AssertionError(f"not ready:\n{log_path.read_text()}")
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(20):
                await proc.wait()


async def test_the_chart_refuses_dra_components_where_the_publishers_cannot_write(
    kube: client.ApiClient, local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """helm asks the cluster (--dry-run=server): DRA components render where v1 or v1beta2 is
    served and are refused with the chart's message elsewhere."""
    version = newest(await served_versions(kube, DRA_GROUP), DRA_WRITE_VERSIONS)
    operator = LocalOperator(
        kubeconfig=local_cluster.kubeconfig,
        bin_dir=local_cluster.bin_dir,
        chart=CHART,
        state_dir=tmp_path,
        namespace=namespace,
        release=f"dra-{namespace[-6:]}",
        progress=lambda message: None,
    )
    args = ("install", operator.release, str(CHART), "--namespace", namespace,
            "--dry-run=server", "--set", "kwokDraPlugin.enabled=true")  # fmt: skip
    if version is None:
        with pytest.raises(OperatorError, match="need Dynamic Resource Allocation as"):
            await operator.helm(*args)
    else:
        out = await operator.helm(*args)
        assert "kind: Deployment" in out and "kwok-dra-plugin" in out, out[-2000:]
