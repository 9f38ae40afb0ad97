"""Helpers of the end-to-end scenarios: objects as the seed README writes them, reading the
node records, the metrics, and the apiserver's 403 counters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgo_common.kube.errors import raise_for_status
from fgo_common.topology import (
    NODE_TOPOLOGY_LABEL,
    TOPOLOGY_DATA_KEY,
    NodeTopology,
    node_topology_configmap_name,
)
from fgo_localcluster.operator import LocalOperator, forbidden_in
from fgo_localcluster.testing import eventually
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

GPU = "nvidia.com/gpu"
POOL_LABEL = "run.ai/simulated-gpu-node-pool"
KWOK_TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}
UTILIZATION = "run.ai/simulated-gpu-utilization"


# ----------------------------------------------------------------------------- apiserver refusals


DENIED = "requests denied by the authorization filter (no RBAC rule allows them)"


def forbidden_counts(metrics: str) -> dict[str, float]:
    """Refusals counted by the apiserver (its /metrics), by kind of refusal.

    A request RBAC does not allow is stopped by the authorization filter, before the handlers
    that count ``apiserver_request_total``: it only shows in ``authorization_attempts_total``
    with result ``no-opinion`` (no authorizer allowed it; there is no per-resource label, the
    services' logs say which call it was). Refusals inside a handler (e.g. a server-side apply
    that would create an object without the ``create`` verb) are ``apiserver_request_total``
    with code 403, by verb and resource.
    """
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "authorization_attempts_total"
                and labels.get("result") == "no-opinion"
            ):
                out[DENIED] = out.get(DENIED, 0) + sample.value
            elif sample.name == "apiserver_request_total" and labels.get("code") == "403":
                res = labels.get("resource", "")
                if labels.get("subresource"):
                    res += "/" + labels["subresource"]
                group = labels.get("group", "")
                key = f"403 answers to {labels.get('verb', '')} {res}" + (
                    f".{group}" if group else ""
                )
                out[key] = out.get(key, 0) + sample.value
    return out


# ----------------------------------------------------------------------------- targets


class Target:
    """Where the chart runs; the scenario tests only use this interface."""

    def __init__(self, kubeconfig: Path, bin_dir: Path, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.namespace = namespace

    def kubectl(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
        return result.stdout

    async def kwok_metrics(self) -> str:
        """The KWOK exporter's /metrics (dcgm-exporter format)."""
        raise NotImplementedError

    def service_logs(self) -> dict[str, str]:
        """Every service's log so far, by workload name."""
        raise NotImplementedError


class LocalTarget(Target):
    def __init__(self, operator: LocalOperator, bin_dir: Path) -> None:
        super().__init__(operator.kubeconfig, bin_dir, operator.namespace)
        self.operator = operator
        self.workloads: list[str] = []

    async def kwok_metrics(self) -> str:
        import aiohttp

        port = self.operator.ports("nvidia-dcgm-exporter-kwok")["metrics"]
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            return await resp.text()

    def service_logs(self) -> dict[str, str]:
        out = {}
        for name in self.workloads:
            path = self.operator.log(name)
            out[name] = path.read_text(errors="replace") if path.exists() else ""
        return out


class ClusterTarget(Target):
    """The chart's pods in a real cluster (kind)."""

    async def kwok_metrics(self) -> str:
        path = (
            f"/api/v1/namespaces/{self.namespace}/services/"
            "nvidia-dcgm-exporter-kwok:gpu-metrics/proxy/metrics"
        )
        return await asyncio.to_thread(self.kubectl, "get", "--raw", path)

    def service_logs(self) -> dict[str, str]:
        out = {}
        names = self.kubectl("get", "deploy,ds", "-n", self.namespace, "-o", "name").split()
        for name in names:
            out[name] = self.kubectl(
                "logs", "-n", self.namespace, name, "--all-containers", "--prefix", check=False
            )
        return out


# What a real kubelet logs when the Node authorizer refuses it an object its graph does not
# (yet, or any more) link to the node: a pod just deleted, a volume of a pod just bound. Those
# are the kubelet's normal races, counted by the apiserver like any refusal.
KUBELET_GRAPH_RACE = "no relationship found between node"


@dataclass
class ForbiddenGuard:
    """403s since the last ``reset``: apiserver counters and refused calls in service logs.

    ``kubelet_logs``: the real nodes' kubelet logs; the Node-authorizer refusals they report
    (KUBELET_GRAPH_RACE) are the kubelet's own and are not counted against our services."""

    target: Target
    counts: dict[str, float] = field(default_factory=dict)
    log_sizes: dict[str, int] = field(default_factory=dict)
    kubelet_logs: list[Path] = field(default_factory=list)
    kubelet_log_sizes: dict[Path, int] = field(default_factory=dict)

    def _metrics(self) -> dict[str, float]:
        return forbidden_counts(self.target.kubectl("get", "--raw", "/metrics"))

    def reset(self) -> None:
        self.counts = self._metrics()
        self.log_sizes = {k: len(v) for k, v in self.target.service_logs().items()}
        self.kubelet_log_sizes = {p: _size(p) for p in self.kubelet_logs}

    def _kubelet_races(self) -> int:
        races = 0
        for path in self.kubelet_logs:
            with contextlib.suppress(OSError), path.open("rb") as handle:
                handle.seek(self.kubelet_log_sizes.get(path, 0))
                races += handle.read().decode(errors="replace").count(KUBELET_GRAPH_RACE)
        return races

    def new_forbidden(self) -> list[str]:
        problems = []
        metrics = self._metrics()
        excused = self._kubelet_races()
        for key, value in metrics.items():
            delta = value - self.counts.get(key, 0)
            if key == DENIED:
                delta -= excused
            if delta > 0:
                problems.append(f"apiserver: {delta:.0f} {key}")
        for name, text in self.target.service_logs().items():
            fresh = text[self.log_sizes.get(name, 0) :]
            for line in forbidden_in(fresh):
                problems.append(f"{name}: {line[:300]}")
        return problems


# ----------------------------------------------------------------------------- API helpers


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a kubernetes-asyncio method, return the JSON body as a dict (no model classes).

    Without preloading, kubernetes-asyncio does not raise for an error status itself: an error
    becomes the ApiException it would have raised (``exc.status == 404``, ...)."""
    resp = await call(*args, _preload_content=False, **kwargs)
    try:
        await raise_for_status(resp)
        return dict(json.loads(await resp.read()))
    finally:
        resp.release()


def gpu_pod(
    name: str,
    node: str,
    *,
    gpus: int = 0,
    claim_template: str | None = None,
    claim: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The seed README's test pod (device-plugin path: ``gpus``; DRA: a claim), pinned to a
    KWOK node of this test."""
    container: dict[str, Any] = {
        "name": "gpu-container",
        "image": "nvidia/cuda-vector-add:v0.1",
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
    }
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [KWOK_TOLERATION],
        "containers": [container],
    }
    if gpus:
        container["resources"] = {"limits": {GPU: str(gpus)}}
    if claim_template or claim:
        ref = (
            {"name": "gpu", "resourceClaimTemplateName": claim_template}
            if claim_template
            else {"name": "gpu", "resourceClaimName": claim}
        )
        spec["resourceClaims"] = [ref]
        container["resources"] = {"claims": [{"name": "gpu"}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }


def gpu_claim_spec() -> dict[str, Any]:
    """The seed README's DRA request: one device of class gpu.nvidia.com."""
    return {
        "devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}
    }


async def create_pod(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    core: Any = client.CoreV1Api(kube)
    await core.create_namespaced_pod(namespace, body)


async def delete_pods(kube: client.ApiClient, namespace: str, names: list[str]) -> None:
    """Delete and wait until they are gone (KWOK removes them at once)."""
    core = client.CoreV1Api(kube)
    for name in names:
        try:
            await core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def gone() -> bool:
        for name in names:
            try:
                await core.read_namespaced_pod(name, namespace)
                return False
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return True

    await eventually(gone, timeout_s=60, what=f"pods {names} deleted")


async def pod(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return await raw(client.CoreV1Api(kube).read_namespaced_pod, name, namespace)


async def wait_running(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body = await pod(kube, namespace, name)
        return body if body.get("status", {}).get("phase") == "Running" else None

    return await eventually(probe, timeout_s=90, what=f"pod {namespace}/{name} Running")


async def node(kube: client.ApiClient, name: str) -> dict[str, Any]:
    return await raw(client.CoreV1Api(kube).read_node, name)


async def wait_gpu_capacity(kube: client.ApiClient, name: str, count: int) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body = await node(kube, name)
        got = body.get("status", {}).get("allocatable", {}).get(GPU)
        return body if got == str(count) else None

    return await eventually(probe, timeout_s=90, what=f"{GPU}={count} allocatable on {name}")


async def record(kube: client.ApiClient, namespace: str, node_name: str) -> NodeTopology | None:
    """The node's record ``topology-<node>`` as the status-updater wrote it, or None."""
    name = node_topology_configmap_name("topology", node_name)
    try:
        cm = await raw(client.CoreV1Api(kube).read_namespaced_config_map, name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    assert cm["metadata"]["labels"].get(NODE_TOPOLOGY_LABEL) == "true"
    return NodeTopology.from_yaml(cm["data"][TOPOLOGY_DATA_KEY], node_name)


def holders(topology: NodeTopology) -> dict[str, list[str]]:
    """GPU UUID -> "<namespace>/<pod>" of each holder."""
    return {g.id: sorted(f"{h.namespace}/{h.pod}" for h in g.status.holders) for g in topology.gpus}


async def node_slices(kube: client.ApiClient, node_name: str) -> list[dict[str, Any]]:
    resource: Any = client.ResourceV1Api(kube)
    body = await raw(resource.list_resource_slice, field_selector=f"spec.nodeName={node_name}")
    return list(body["items"])


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def samples(metrics: str, name: str) -> list[Sample]:
    out = []
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name:
                out.append(Sample(s.name, dict(s.labels), float(s.value)))
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
