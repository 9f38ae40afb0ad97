"""The benchmark's environment: its own local control plane, the chart's services, probes.

The cluster lives in its own state directory (default ``.fgo/bench``) so a benchmark never
disturbs a developer's ``make demo`` cluster or a test session's; it is purged at the start of
a run, so every run starts from an empty etcd. Our services are run the way users get them:
``helm upgrade -i`` of the real chart, then each Deployment as a local process under its
ServiceAccount (fgo_localcluster.operator), which is also what lets the apiserver attribute
requests to them (bench.apicount).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from fgo_localcluster import nodes
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.layout import COMPONENTS
from fgo_localcluster.operator import LocalOperator, LocalWorkload, RunningWorkload

from bench import apicount
from bench.procmon import Sampler, Tracked

POOL = "bench"
NAMESPACE = "fgo-bench"
OPERATOR_NAMESPACE = "gpu-operator"
NODE_PREFIX = "bench-gpu-"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
DRA_DRIVER = "gpu.nvidia.com"
DEVICE_CLASS = "gpu.nvidia.com"
EXPORTER_MODULE = "fgo_status_exporter"


@dataclass
class BenchConfig:
    """Every knob of a run (also written into results.json)."""

    nodes: list[int] = field(default_factory=lambda: [100, 500, 1000])
    gpus_per_node: int = 8
    gpu_type: str = "NVIDIA H100 80GB HBM3"
    pods: int = 200
    churn_rate: float = 0.0  # pods/s when creating; 0 = all at once
    sched_pods: int = 500
    scrapes: int = 10
    smi_runs: int = 20
    idle_seconds: float = 20.0
    scenario_timeout_s: float = 600.0
    bringup_timeout_s: float = 300.0
    scenarios: list[str] = field(default_factory=list)
    state_dir: Path = Path(".fgo/bench")
    out_dir: Path = Path("bench-results")
    keep_cluster: bool = False
    dra: bool = True
    components: str = "standalone"  # or "all": also those that start their own cluster
    # Bench-only RBAC additions for permissions the chart is known to lack (see
    # BENCH_RBAC_PATCHES); off by default so a run measures the chart as shipped.
    grant_missing_rbac: bool = False
    # Replicas of each central service (> 1: leader election; the standbys show up as
    # <deployment>-1 in every table, which is what their cost is read from).
    replicas: int = 1

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["state_dir"] = str(self.state_dir)
        out["out_dir"] = str(self.out_dir)
        return out


def chart_values(config: BenchConfig) -> dict[str, Any]:
    """Chart values of the benchmark: one pool of ``gpus_per_node`` GPUs, KWOK DRA on."""
    return {
        "topology": {
            "nodePoolLabelKey": nodes.POOL_LABEL,
            "migStrategy": "none",
            "nodePools": {
                POOL: {"gpus": [{"type": config.gpu_type, "count": config.gpus_per_node}]}
            },
        },
        "kwokDraPlugin": {"enabled": config.dra, "replicas": config.replicas},
        "statusUpdater": {"replicas": config.replicas},
        "kwokGpuDevicePlugin": {"replicas": config.replicas},
        "statusExporter": {"kwok": {"replicas": config.replicas}},
        # The local cluster applies NVIDIA's DeviceClasses itself at start (so DRA works before
        # any chart); Helm refuses to adopt objects it did not create.
        "deviceClasses": {"enabled": False},
    }


# Server-side apply that creates an object is authorised as `create`; before commit bbf184b the
# chart's kwok-dra-plugin role had only patch on resourceslices, so every first publish was a 403.
BENCH_RBAC_PATCHES: list[dict[str, Any]] = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "fgo-bench-kwok-dra-plugin-create-slices"},
        "rules": [
            {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"], "verbs": ["create"]}
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "fgo-bench-kwok-dra-plugin-create-slices"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "fgo-bench-kwok-dra-plugin-create-slices",
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": "fgo-kwok-dra-plugin", "namespace": "gpu-operator"}
        ],
    },
]


class BenchEnv:
    """Cluster + operator + admin API client + process sampler for one run."""

    def __init__(self, config: BenchConfig, repo: Path, sampler: Sampler) -> None:
        self.config = config
        self.repo = repo
        self.sampler = sampler
        self.cluster = LocalCluster(config.state_dir.resolve(), progress=self._say)
        self.operator: LocalOperator | None = None
        self.workloads: list[RunningWorkload] = []
        self.exporter_url: str | None = None
        self.api: Any = None
        self._api_cm: Any = None
        self.node_names: list[str] = []

    @staticmethod
    def _say(message: str) -> None:
        print(f"[env] {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._say(f"purging and starting the bench cluster in {self.cluster.state_dir}")
        await self.cluster.stop(purge=True)
        await self.cluster.start(wait=True)
        self.sampler.track([Tracked("harness", "harness", os.getpid())])
        for name in COMPONENTS:
            pid = self.cluster.pid(name)
            if pid:
                self.sampler.track([Tracked(name, "control-plane", pid)])
        self._api_cm = nodes.api_client(self.cluster.kubeconfig)
        self.api = await self._api_cm.__aenter__()
        await self._ensure_namespace(NAMESPACE)
        await self.install_services()

    async def stop(self) -> None:
        if self.operator is not None:
            with contextlib.suppress(Exception):
                await self.operator.stop()
        if self._api_cm is not None:
            with contextlib.suppress(Exception):
                await self._api_cm.__aexit__(None, None, None)
        if not self.config.keep_cluster:
            await self.cluster.stop(purge=True)
        else:
            self._say(f"cluster left running: KUBECONFIG={self.cluster.kubeconfig}")

    async def install_services(self) -> None:
        values = self.config.out_dir.resolve() / "bench-values.yaml"
        values.parent.mkdir(parents=True, exist_ok=True)
        values.write_text(yaml.safe_dump(chart_values(self.config)))
        self.operator = LocalOperator(
            kubeconfig=self.cluster.kubeconfig,
            bin_dir=self.cluster.bin_dir,
            chart=self.repo / "charts" / "fake-gpu-operator",
            state_dir=self.cluster.state_dir,
            namespace=OPERATOR_NAMESPACE,
            progress=self._say,
        )
        workloads = await self.operator.install(values_files=[values])
        if self.config.grant_missing_rbac:
            from kubernetes_asyncio import client

            rbac = client.RbacAuthorizationV1Api(self.api)
            role, binding = BENCH_RBAC_PATCHES
            await rbac.patch_cluster_role(role["metadata"]["name"], role, **apicount.APPLY)
            await rbac.patch_cluster_role_binding(
                binding["metadata"]["name"], binding, **apicount.APPLY
            )
            self._say("bench-only RBAC added: create on resourceslices for fgo-kwok-dra-plugin")
        # Count each identity's requests from the first one on.
        await apicount.apply_flow_schemas(
            self.api,
            apicount.flow_schemas(OPERATOR_NAMESPACE, {w.service_account for w in workloads}),
        )
        self.workloads = await self.operator.start(workloads)
        for w in self.workloads:
            if is_kwok_exporter(w.workload) and "metrics" in w.ports:
                self.exporter_url = f"http://127.0.0.1:{w.ports['metrics']}/metrics"
        self.sampler.track([Tracked(w.workload.name, "ours", w.pid) for w in self.workloads])
        try:
            await self.operator.wait_ready([w.workload.name for w in self.workloads], 120.0)
        except Exception as exc:
            self._say(f"WARNING: not every service became ready: {exc}")
        dead = [w.workload.name for w in self.workloads if not _alive(w.pid)]
        if dead:
            self._say(
                f"WARNING: exited right after start: {', '.join(dead)} "
                f"(logs in {self.operator.dir / 'logs'})"
            )

    def exporter_names(self) -> set[str]:
        return {w.workload.name for w in self.workloads if is_kwok_exporter(w.workload)}

    def service_logs(self) -> dict[str, Path]:
        return {w.workload.name: w.log for w in self.workloads}

    def alive_services(self) -> dict[str, bool]:
        return {w.workload.name: _alive(w.pid) for w in self.workloads}

    def health_url(self, name: str) -> str | None:
        for w in self.workloads:
            if w.workload.name == name and "health" in w.ports:
                return f"http://127.0.0.1:{w.ports['health']}"
        return None

    # ------------------------------------------------------------------ phases

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        """Tag footprint samples taken meanwhile with ``name`` (back to ``between`` after)."""
        self.sampler.phase = name
        self.sampler.sample()
        try:
            yield
        finally:
            self.sampler.sample()
            self.sampler.phase = "between"

    # ------------------------------------------------------------------ objects

    async def _ensure_namespace(self, name: str) -> None:
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        core = client.CoreV1Api(self.api)
        try:
            await core.create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise
        deadline = time.monotonic() + 60
        while True:
            try:
                await core.read_namespaced_service_account("default", name)
                return
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.3)

    def node_body(self, name: str) -> dict[str, Any]:
        return nodes.kwok_node(name, POOL)

    async def create_nodes(self, count: int, start: int = 1) -> tuple[list[str], dict[str, float]]:
        """Create ``count`` bench nodes; returns names and when each create call returned."""
        names = [f"{NODE_PREFIX}{i:05d}" for i in range(start, start + count)]
        created: dict[str, float] = {}
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        core = client.CoreV1Api(self.api)
        sem = asyncio.Semaphore(nodes.DEFAULT_CONCURRENCY)

        async def one(name: str) -> None:
            async with sem:
                try:
                    await core.create_node(self.node_body(name))  # type: ignore[arg-type]
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                created[name] = time.monotonic()

        await asyncio.gather(*(one(n) for n in names))
        self.node_names = sorted(set(self.node_names) | set(names))
        return names, created

    async def delete_nodes(self, names: list[str]) -> None:
        await nodes.delete_nodes(self.api, names)
        self.node_names = [n for n in self.node_names if n not in set(names)]


def is_kwok_exporter(workload: LocalWorkload) -> bool:
    return workload.module == EXPORTER_MODULE and workload.env.get("EXPORTER_MODE") == "kwok"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
