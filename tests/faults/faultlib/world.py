"""The fault suite's world: the chart's services on the local control plane, GPU nodes, load.

Everything long-lived runs in one background thread with its own event loop, so it survives
from one test to the next (pytest gives every test a fresh loop): the API proxy, the test
kubelets and their peers, the churn generator, the Knative scrape target. Tests are plain
functions that hand coroutines to that loop (:meth:`World.call`).

What runs (all against the session's local control plane):

* the chart, installed with ``helm upgrade -i`` into its own namespace, its Deployments run as
  local processes under their ServiceAccounts (``fgo_localcluster.operator``): status-updater,
  device-plugin in KWOK mode (``fgo-kwok-gpu-capacity``), kwok-dra-plugin, the KWOK exporter;
* the chart's node agents for two non-KWOK nodes, as local processes configured from the
  chart's DaemonSets under their ServiceAccounts: the device plugin on ``kubelet-dp`` and the
  DRA plugin on ``kubelet-dra``, each with a test kubelet (``faultlib.kubelet``);
* three KWOK nodes (two for device-plugin pods, one for DRA pods), 4 H100 each;
* Prometheus scraping a Knative request counter for one inference pod;
* every service reaches the apiserver through a TCP proxy that can cut connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import structlog
import yaml
from fgo_localcluster import invariants, nodes, process
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.knative import KnativeRequestCounters
from fgo_localcluster.operator import LocalOperator, LocalWorkload, resolve_env
from fgo_localcluster.tcpproxy import TcpProxy, proxied_kubeconfig
from fgo_localcluster.testing import create_namespace, delete_namespace
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from faultlib.churn import Churn
from faultlib.kubelet import MiniKubelet

log = structlog.get_logger("faults.world")
T = TypeVar("T")

GPUS_PER_NODE = 4
STATUS_UPDATER = "fgo-status-updater"
STATUS_UPDATER_STANDBY = "fgo-status-updater-1"  # its second replica (replica_name)
LEASE_S, RENEW_S = 6, 4  # leader election of the status-updater replicas
KWOK_CAPACITY = "fgo-kwok-gpu-capacity"
KWOK_DRA = "fgo-kwok-dra-plugin"
KWOK_EXPORTER = "nvidia-dcgm-exporter-kwok"
SCHEDULER = "kube-scheduler"
DEVICE_PLUGIN = "fgo-device-plugin"
DRA_PLUGIN = "fgo-dra-plugin"
KNATIVE_FULL_RPS = 100.0  # the status-updater's default: 100 req/s = 100 %
# The kubelet restarts a crashed container after 10 s, doubling per crash (CrashLoopBackOff).
RESTART_DELAYS_S = (10.0, 20.0, 40.0, 80.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scheduler_dump(text: str, nodes: set[str]) -> list[str]:
    """From kube-scheduler's SIGUSR2 output: its cache comparer's findings and the cached
    NodeInfo blocks of ``nodes`` (requested/allocatable resources, pods it counts there)."""
    out: list[str] = []
    keep = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Node name:"):
            keep = stripped.removeprefix("Node name:").strip() in nodes
        elif not line.startswith(("\t", " ")):
            keep = False
            if any(w in line for w in ("mismatch", "Redundant", "Missing", "Dump of")):
                out.append(line[:300])
        if keep:
            out.append(stripped[:300])
    return out[:60]


@dataclass
class NodeAgent:
    """One chart DaemonSet pod run as a local process for one node."""

    name: str  # DaemonSet name
    node: str
    module: str
    env: dict[str, str]
    log: Path
    pid_file: Path
    health_port: int

    def record(self) -> process.PidRecord | None:
        return process.PidRecord.read(self.pid_file)

    def running(self) -> bool:
        rec = self.record()
        return rec is not None and process.is_running(rec)


class World:
    def __init__(self, cluster: LocalCluster, repo: Path, workdir: Path) -> None:
        self.cluster = cluster
        self.repo = repo
        self.workdir = workdir
        self.run = secrets.token_hex(3)
        self.op_ns = f"fgo-faults-{self.run}"
        self.work_ns = f"fgo-faults-work-{self.run}"
        self.release = f"faults-{self.run}"
        self.pool_key = f"fgo.test/faults-pool-{self.run}"
        self.pool = "faults"
        # Unix socket paths are limited to 107 bytes; pytest's tmp dirs can be too long.
        self.short = Path(f"/tmp/fgo-f-{self.run}")
        prefix = f"f{self.run}"
        self.kwok_dp = [f"{prefix}-kwok-dp-0", f"{prefix}-kwok-dp-1"]
        self.kwok_dra = [f"{prefix}-kwok-dra-0"]
        self.kubelet_dp = f"{prefix}-kubelet-dp"
        self.kubelet_dra = f"{prefix}-kubelet-dra"
        self.all_nodes = frozenset(
            [*self.kwok_dp, *self.kwok_dra, self.kubelet_dp, self.kubelet_dra]
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._thread_main, name="fgo-fault-world", daemon=True
        )
        self.api: client.ApiClient | None = None
        self._api_cm: Any = None
        self.proxy: TcpProxy | None = None
        self.operator: LocalOperator | None = None
        self.workloads: dict[str, LocalWorkload] = {}
        self.failovers: list[float] = []  # seconds from a leader's kill to another's Lease
        self.agents: dict[str, NodeAgent] = {}
        self.kubelets: dict[str, MiniKubelet] = {}
        self.churn: Churn | None = None
        self.prometheus_pid: Path = self.workdir / "prometheus.pid"
        self.prometheus_port = free_port()
        self.knative_pod = "knative-0"
        self.counter = KnativeRequestCounters(self.work_ns, {self.knative_pod: 50.0})
        # Crashes: processes that exited without a fault asking for it. A kubelet would restart
        # them (restartPolicy Always); the supervisor does, with the kubelet's back-off.
        self.crashes: Counter[str] = Counter()
        self.crash_log: list[str] = []
        self.held: set[str] = set()  # components a fault is controlling right now
        # Wall-clock times the control plane came back from a fault: an apiserver answers 403
        # for a moment after its start (RBAC caches), which is not an RBAC gap of the chart.
        self.control_plane_restarts: list[float] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ thread plumbing

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout_s: float = 600) -> T:
        """Run a coroutine in the world's loop and wait for it (from a test's thread)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(factory(), self.loop)
        return future.result(timeout_s)

    def start_thread(self) -> None:
        self.thread.start()

    def stop_thread(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    # ------------------------------------------------------------------ setup

    async def setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.short.mkdir(parents=True, exist_ok=True)
        self._api_cm = nodes.api_client(self.cluster.kubeconfig)
        self.api = await self._api_cm.__aenter__()
        self.proxy = TcpProxy("127.0.0.1", self.cluster.ports.apiserver)
        await self.proxy.start()
        proxied = self._proxied_kubeconfig(
            self.cluster.kubeconfig, self.workdir / "admin-proxied.yaml"
        )

        await create_namespace(self.api, self.work_ns)
        await self._start_prometheus()

        self.operator = LocalOperator(
            kubeconfig=proxied,
            bin_dir=self.cluster.bin_dir,
            chart=self.repo / "charts" / "fake-gpu-operator",
            state_dir=self.workdir,
            namespace=self.op_ns,
            release=self.release,
            progress=lambda m: log.info("operator", message=m),
        )
        values = self.workdir / "values.yaml"
        values.write_text(yaml.safe_dump(self._values()))
        workloads = await self.operator.install(values_files=[values])
        self.workloads = {w.name: w for w in workloads}
        await self.operator.start(workloads)
        await self.operator.wait_ready(list(self.workloads), timeout_s=180)

        await nodes.create_nodes(
            self.api,
            [
                nodes.kwok_node(n, f"faults-{self.run}", labels={self.pool_key: self.pool})
                for n in [*self.kwok_dp, *self.kwok_dra]
            ],
        )
        for name, dp, dra in ((self.kubelet_dp, True, False), (self.kubelet_dra, False, True)):
            kubelet = MiniKubelet(
                self.api,
                name,
                self.short / ("kdp" if dp else "kdra"),
                labels={self.pool_key: self.pool},
                device_plugin=dp,
                dra=dra,
            )
            await kubelet.start()
            self.kubelets[name] = kubelet
        manifest = await self.operator.helm(
            "get", "manifest", self.release, "--namespace", self.op_ns
        )
        self._agents_from_manifest(manifest, proxied)
        for agent in self.agents.values():
            await self.start_agent(agent.name)

        self.churn = Churn(
            self.api,
            self.work_ns,
            dp_nodes=dict.fromkeys([*self.kwok_dp, self.kubelet_dp], GPUS_PER_NODE),
            dra_nodes=dict.fromkeys([*self.kwok_dra, self.kubelet_dra], GPUS_PER_NODE),
            run=self.run,
        )
        await self.churn.setup()
        await self._knative_pod()
        self.churn.start()
        self._supervisor = asyncio.create_task(self._supervise(), name="supervisor")

    # ------------------------------------------------------------------ restartPolicy: Always

    def _is_running(self, name: str) -> bool:
        if name in self.agents:
            return self.agents[name].running()
        rec = self.service_record(name)
        return rec is not None and process.is_running(rec)

    def _last_log_lines(self, name: str) -> str:
        """Why a component exited: its service.failed reason, else its last error lines."""
        assert self.operator is not None
        log_path = self.agents[name].log if name in self.agents else self.operator.log(name)
        try:
            text = log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for line in reversed(text):
            if '"service.failed"' in line:
                with contextlib.suppress(ValueError):
                    return str(json.loads(line).get("reason", line))[:400]
        errors = [line for line in text if "Error" in line and not line.startswith("{")]
        return " | ".join(line[:200] for line in errors[-3:])

    async def _supervise(self) -> None:
        streak: Counter[str] = Counter()
        restarted: dict[str, float] = {}
        while True:
            await asyncio.sleep(1.0)
            for name in [*self.workloads, *self.agents]:
                if name in self.held or self._is_running(name):
                    # Like the kubelet, forget the back-off after a while of running well.
                    if time.monotonic() - restarted.get(name, 0.0) > 120:
                        streak[name] = 0
                    continue
                restarted[name] = time.monotonic()
                self.crashes[name] += 1
                self.crash_log.append(f"{name}: {self._last_log_lines(name)}")
                log.warning("supervisor.crashed", component=name)
                delay = RESTART_DELAYS_S[min(streak[name], len(RESTART_DELAYS_S) - 1)]
                streak[name] += 1
                self.held.add(name)
                task = asyncio.create_task(self._restart_later(name, delay), name=f"restart-{name}")
                self._restarts.add(task)
                task.add_done_callback(self._restarts.discard)

    async def _restart_later(self, name: str, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            if name in self.agents:
                await self.start_agent(name)
            else:
                await self.restart_service(name)
        except Exception as exc:
            log.warning("supervisor.restart_failed", component=name, error=repr(exc))
        finally:
            self.held.discard(name)

    def _values(self) -> dict[str, Any]:
        return {
            "topology": {
                "nodePoolLabelKey": self.pool_key,
                "migStrategy": "none",
                "nodePools": {self.pool: {"gpus": [{"type": "H100", "count": GPUS_PER_NODE}]}},
            },
            "prometheus": {"url": f"http://127.0.0.1:{self.prometheus_port}"},
            "draPlugin": {"enabled": True},
            "kwokDraPlugin": {"enabled": True},
            # The local cluster has NVIDIA's DeviceClasses already; a RuntimeClass is cluster
            # scoped and another release may own it.
            "deviceClasses": {"enabled": False},
            "runtimeClass": {"enabled": False},
            "statusUpdater": {
                # Two replicas electing a leader (docs/reliability.md): every fault below hits
                # an HA status-updater; one fault kills the leader itself.
                "replicas": 2,
                "extraEnv": [
                    {"name": "KNATIVE_POLL_INTERVAL_SECONDS", "value": "2"},
                    {"name": "PROMETHEUS_TIMEOUT_SECONDS", "value": "2"},
                ],
            },
            # Short timings keep a failover well inside an episode (defaults: 15/10/2 s).
            "leaderElection": {
                "leaseDurationSeconds": LEASE_S,
                "renewDeadlineSeconds": RENEW_S,
                "retryPeriodSeconds": 1,
            },
        }

    def _proxied_kubeconfig(self, source: Path, target: Path) -> Path:
        return proxied_kubeconfig(source, target, self.proxy.port if self.proxy else 0)

    async def _token_kubeconfig(self, service_account: str, path: Path) -> Path:
        """A kubeconfig for ``service_account`` (TokenRequest), through the proxy."""
        core = self.core
        request = {"spec": {"expirationSeconds": 24 * 3600}}
        resp = await core.create_namespaced_service_account_token(
            service_account, self.op_ns, request, _preload_content=False
        )
        try:
            token = json.loads(await resp.read())["status"]["token"]
        finally:
            resp.release()
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        cluster["cluster"]["server"] = f"https://127.0.0.1:{self.proxy.port if self.proxy else 0}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [
                {"name": "sa", "context": {"cluster": cluster["name"], "user": service_account}}
            ],
            "current-context": "sa",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _agents_from_manifest(self, manifest: str, _proxied: Path) -> None:
        """The chart's node DaemonSets for our two kubelet nodes, with the kubelet's directories
        moved under a short temp dir (the only thing that differs from a node)."""
        (self.workdir / "agents").mkdir(parents=True, exist_ok=True)
        for doc in yaml.safe_load_all(manifest):
            if not doc or doc.get("kind") != "DaemonSet":
                continue
            name = doc["metadata"]["name"]
            if name not in (DEVICE_PLUGIN, DRA_PLUGIN):
                continue
            node = self.kubelet_dp if name == DEVICE_PLUGIN else self.kubelet_dra
            kubelet_root = self.short / ("kdp" if name == DEVICE_PLUGIN else "kdra")
            spec = doc["spec"]["template"]["spec"]
            container = spec["containers"][0]
            env = resolve_env(
                container.get("env", []),
                self.op_ns,
                f"{name}-{node}",
                spec["serviceAccountName"],
                node,
            )
            health = free_port()
            state = kubelet_root / "state"
            env |= {"HEALTH_PORT": str(health), "STATE_DIR": str(state), "LOG_LEVEL": "INFO"}
            if name == DEVICE_PLUGIN:
                env |= {
                    "DEVICE_PLUGIN_DIR": str(kubelet_root / "dp"),
                    "POD_RESOURCES_SOCKET": str(kubelet_root / "pr" / "kubelet.sock"),
                    "POD_RESOURCES_INTERVAL_SECONDS": "2",
                    "KUBELET_POLL_INTERVAL_SECONDS": "0.5",
                    "NVIDIA_SMI_HOST_PATH": "",
                    "NVIDIA_SMI_BUNDLE_HOST_DIR": "",
                }
                module = "fgo_device_plugin"
            else:
                env |= {
                    "KUBELET_REGISTRAR_DIRECTORY_PATH": str(kubelet_root / "reg"),
                    "KUBELET_PLUGINS_DIRECTORY_PATH": str(kubelet_root / "plugins"),
                    "CDI_ROOT": str(kubelet_root / "cdi"),
                    "HEALTHCHECK_PORT": str(free_port()),
                    "SOCKET_CHECK_INTERVAL_SECONDS": "0.5",
                    "NVIDIA_SMI_HOST_PATH": "",
                }
                module = "fgo_dra_plugin"
            env["SERVICE_ACCOUNT"] = spec["serviceAccountName"]
            self.agents[name] = NodeAgent(
                name,
                node,
                module,
                env,
                self.workdir / "agents" / f"{name}.log",
                self.workdir / "agents" / f"{name}.pid",
                health,
            )

    async def start_agent(self, name: str, *, wait: bool = True) -> None:
        agent = self.agents[name]
        kubeconfig = await self._token_kubeconfig(
            agent.env["SERVICE_ACCOUNT"], self.workdir / "agents" / f"{name}.kubeconfig"
        )
        env = {k: v for k, v in agent.env.items() if k != "SERVICE_ACCOUNT"}
        env["KUBECONFIG"] = str(kubeconfig)
        await process.spawn([sys.executable, "-m", agent.module], agent.log, agent.pid_file, env)
        if wait:
            await self.wait_agent_ready(name)

    async def wait_agent_ready(self, name: str, timeout_s: float = 90) -> None:
        agent = self.agents[name]
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if not agent.running():
                    tail = "\n".join(agent.log.read_text().splitlines()[-30:])
                    raise AssertionError(f"{name} exited:\n{tail}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"http://127.0.0.1:{agent.health_port}/readyz") as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} not ready after {timeout_s}s")
                await asyncio.sleep(0.3)

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> bool:
        rec = self.agents[name].record()
        return rec is not None and process.send_signal(rec, sig)

    async def wait_agent_dead(self, name: str) -> None:
        rec = self.agents[name].record()
        if rec is not None:
            await process.wait_exit(rec, 10)

    # ------------------------------------------------------------------ services of the chart

    def service_record(self, name: str) -> process.PidRecord | None:
        assert self.operator is not None
        return process.PidRecord.read(self.operator.dir / f"{name}.pid")

    def kill_service(self, name: str, sig: int = signal.SIGKILL) -> bool:
        rec = self.service_record(name)
        return rec is not None and process.send_signal(rec, sig)

    async def restart_service(self, name: str) -> None:
        assert self.operator is not None
        rec = self.service_record(name)
        if rec is not None:
            await process.wait_exit(rec, 10)
        await self.operator.start([self.workloads[name]])
        await self.operator.wait_ready([name], timeout_s=120)

    def service_port(self, name: str, port: str) -> int:
        assert self.operator is not None
        return self.operator.ports(name)[port]

    def exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.service_port(KWOK_EXPORTER, 'metrics')}/metrics"

    def replicas_of(self, name: str) -> list[str]:
        """The workloads running replicas of Deployment ``name`` (itself, ``name-1``, ...)."""
        return [w for w in self.workloads if w == name or w.removeprefix(f"{name}-").isdigit()]

    async def service_metric(self, name: str, metric: str) -> float:
        """Sum of a service's own metric over its replicas (/metrics on the health port)."""
        total = 0.0
        for replica in self.replicas_of(name):
            url = f"http://127.0.0.1:{self.service_port(replica, 'health')}/metrics"
            samples = await invariants.scrape(url)
            if isinstance(samples, str):
                raise AssertionError(f"scrape of {replica} failed: {samples}")
            total += sum(s.value for s in samples if s.name == metric)
        return total

    async def lease_holder(self, lease: str) -> str | None:
        """The workload named by a Lease's holderIdentity (the pod name, ``<workload>-local``
        for a local process), or None while nobody holds it."""
        coordination: Any = client.CoordinationV1Api(self.api)
        try:
            obj = await coordination.read_namespaced_lease(lease, self.op_ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        holder = obj.spec.holder_identity or ""
        return holder.removesuffix("-local") or None

    # ------------------------------------------------------------------ Prometheus / Knative

    async def _start_prometheus(self) -> None:
        await self.counter.start()
        config = self.workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "knative",
                            "static_configs": [{"targets": [f"127.0.0.1:{self.counter.port}"]}],
                        }
                    ],
                }
            )
        )
        await self.start_prometheus()

    async def start_prometheus(self) -> None:
        binary = shutil.which("prometheus")
        assert binary, (
            "prometheus is not installed: run `make host-deps` (hack/install-prometheus.sh)"
        )
        await process.spawn(
            [
                binary,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
            ],
            self.workdir / "prometheus.log",
            self.prometheus_pid,
        )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"http://127.0.0.1:{self.prometheus_port}/-/ready") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.5)
        raise AssertionError("Prometheus did not become ready")

    def kill_prometheus(self) -> bool:
        rec = process.PidRecord.read(self.prometheus_pid)
        return rec is not None and process.send_signal(rec, signal.SIGKILL)

    async def _knative_pod(self) -> None:
        """A long-lived inference pod on the first KWOK node (outside the churn)."""
        node = self.kwok_dp[0]
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.knative_pod,
                "labels": {"workloadKind": "InferenceWorkload"},
            },
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [
                    {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.k8s.io/pause:3.10",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }
                ],
            },
        }
        with contextlib.suppress(ApiException):
            await self.core.create_namespaced_pod(self.work_ns, body)
        # The churn must leave room for it on that node.
        assert self.churn is not None
        self.churn.dp_nodes[node] = GPUS_PER_NODE - 1

    async def knative_utilization(self) -> int | None:
        """The utilisation the record gives the inference pod (min == max for Knative)."""
        record = await self.record(self.kwok_dp[0])
        if record is None:
            return None
        for gpu in record.gpus:
            for usage in gpu.status.usage.values():
                if usage.pod == self.knative_pod:
                    return int(usage.utilization.max)
        return None

    async def record(self, node: str) -> Any:
        from fgo_testkit.status_updater import read_record

        assert self.api is not None
        return await read_record(self.api, self.op_ns, node)

    # ------------------------------------------------------------------ invariants

    def scope(self) -> invariants.Scope:
        kwok = frozenset([*self.kwok_dp, *self.kwok_dra])
        return invariants.Scope(
            topology_namespace=self.op_ns,
            nodes=self.all_nodes,
            # The DRA-only kubelet node has no device plugin: nobody publishes its capacity.
            capacity_nodes=self.all_nodes - {self.kubelet_dra},
            slice_nodes=frozenset([*(n for n in kwok if n in self.live_nodes), self.kubelet_dra]),
            # kwokDraPlugin is on: the capacity controller runs with DRA_SHARES_GPUS.
            dra_shared_nodes=kwok,
            exporters=(invariants.ExporterTarget(self.exporter_url()),),
        )

    @property
    def live_nodes(self) -> frozenset[str]:
        assert self.churn is not None
        return self.all_nodes - self.churn.excluded

    async def violations(self) -> list[invariants.Violation]:
        assert self.api is not None
        scope = self.scope()
        snap = await invariants.collect(self.api, scope)
        return invariants.check(snap, scope) + await self.node_agent_violations(snap)

    async def node_agent_violations(self, snap: invariants.Snapshot) -> list[invariants.Violation]:
        """What only the node agents know: the kubelet's view of the device plugin, and the
        DRA plugin's checkpoint and CDI specs against the claims of the pods on its node."""
        out: list[invariants.Violation] = []
        dp_kubelet = self.kubelets[self.kubelet_dp]
        record = snap.records.get(self.kubelet_dp)
        if record is not None and dp_kubelet.dp is not None:
            connection = dp_kubelet.dp.plugins.get("nvidia.com/gpu")
            want = sorted((g.id, g.health) for g in record.gpus)
            got = (
                sorted((d.ID, d.health) for d in connection.devices) if connection else "no plugin"
            )
            if got != want:
                out.append(
                    invariants.Violation(
                        "node-agent", self.kubelet_dp, f"kubelet sees devices {got}, record {want}"
                    )
                )
        dra_kubelet = self.kubelets[self.kubelet_dra]
        root = self.short / "kdra"
        checkpoint = root / "plugins" / "gpu.nvidia.com" / "checkpoint.json"
        try:
            claims = set(json.loads(checkpoint.read_text()).get("claims", {}))
        except (OSError, ValueError) as exc:
            claims = {f"unreadable: {exc}"}
        prepared = dra_kubelet.prepared_claims()
        if claims != prepared:
            out.append(
                invariants.Violation(
                    "node-agent",
                    self.kubelet_dra,
                    f"dra-plugin checkpoint claims {sorted(claims)}, kubelet prepared {sorted(prepared)}",
                )
            )
        specs = {
            p.name.removeprefix("k8s.gpu.nvidia.com-claim_").removesuffix(".json")
            for p in (root / "cdi").glob("k8s.gpu.nvidia.com-claim_*.json")
        }
        if specs != prepared:
            out.append(
                invariants.Violation(
                    "node-agent",
                    self.kubelet_dra,
                    f"CDI specs for {sorted(specs)}, prepared claims {sorted(prepared)}",
                )
            )
        return out

    async def explain_unsettled(self) -> str:
        """Why churn pods are still Pending: for each node one waits on, what the API says is
        there (allocatable GPUs, every pod bound to it) and what kube-scheduler's cache holds
        (its SIGUSR2 dump). Tells a stale scheduler from capacity we published wrong."""
        assert self.churn is not None and self.api is not None
        core: Any = client.CoreV1Api(self.api)
        lines: list[str] = []
        pods = await self.churn.list_pods()
        waiting = {
            p["spec"]["nodeSelector"]["kubernetes.io/hostname"]
            for p in pods
            if (p.get("status") or {}).get("phase") == "Pending"
        }
        log_file = self.cluster.layout.log(SCHEDULER)
        mark = log_file.stat().st_size if log_file.exists() else 0
        dumped = self.cluster.kill_component(SCHEDULER, signal.SIGUSR2)
        for node_name in sorted(waiting):
            node = await core.read_node(node_name)
            gpu = (node.status.allocatable or {}).get("nvidia.com/gpu")
            lines.append(f"node {node_name}: allocatable nvidia.com/gpu={gpu}")
            bound = await core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node_name}"
            )
            for pod in bound.items:
                wants = [
                    (c.resources.limits or {}).get("nvidia.com/gpu", "0")
                    for c in [*(pod.spec.init_containers or []), *pod.spec.containers]
                    if c.resources is not None
                ]
                lines.append(
                    f"  {pod.metadata.namespace}/{pod.metadata.name} {pod.status.phase}"
                    f"{' deleting' if pod.metadata.deletion_timestamp else ''} gpu={wants}"
                )
        if dumped:
            await asyncio.sleep(1.0)
            with contextlib.suppress(OSError):
                with log_file.open(errors="replace") as f:
                    f.seek(mark)
                    dump = f.read()
                lines += ["  scheduler: " + line for line in scheduler_dump(dump, waiting)]
        return "\n".join(lines)

    async def wait_green(self, timeout_s: float) -> tuple[float | None, list[invariants.Violation]]:
        """Poll the checker until it is green; (seconds it took or None, last violations)."""
        start = time.monotonic()
        last: list[invariants.Violation] = []
        while True:
            try:
                last = await self.violations()
            except Exception as exc:  # the API may still be coming back
                last = [invariants.Violation("checker", "-", f"cannot check: {exc!r}")]
            if not last:
                return time.monotonic() - start, []
            if time.monotonic() - start > timeout_s:
                return None, last
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ teardown

    async def teardown(self) -> None:
        for task in [self._supervisor, *self._restarts]:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.churn is not None:
            await self.churn.stop()
            await self.churn.delete_all()
        for kubelet in self.kubelets.values():
            with contextlib.suppress(Exception):
                await kubelet.stop()
        for agent in self.agents.values():
            rec = agent.record()
            if rec is not None:
                await process.terminate(rec)
        rec = process.PidRecord.read(self.prometheus_pid)
        if rec is not None:
            await process.terminate(rec)
        await self.counter.stop()
        if self.operator is not None:
            with contextlib.suppress(Exception):
                await self.operator.uninstall()
        if self.api is not None:
            with contextlib.suppress(Exception):
                await nodes.delete_nodes(self.api, sorted(self.all_nodes))
            for ns in (self.work_ns, self.op_ns):
                with contextlib.suppress(Exception):
                    await delete_namespace(self.api, ns)
        if self.proxy is not None:
            await self.proxy.stop()
        if self._api_cm is not None:
            await self._api_cm.__aexit__(None, None, None)
        shutil.rmtree(self.short, ignore_errors=True)


async def until(
    probe: Callable[[], Awaitable[bool]], timeout_s: float, what: str, interval_s: float = 0.5
) -> float:
    """Poll ``probe`` until true; returns the seconds it took, fails with ``what``."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if await probe():
                return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval_s)


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))
