"""Run the operator on the local control plane without a container runtime.

``helm upgrade -i`` installs the real chart (ConfigMaps, RBAC, ServiceAccounts, DeviceClasses,
Deployments...). The chart's pods cannot run here (no container runtime, and KWOK nodes only
pretend), so each Deployment of ours is run as a local process instead, configured *from the
rendered manifest*: the same environment variables (downward-API fields resolved the way the
kubelet would) and the same identity — a token of the Deployment's ServiceAccount from the
TokenRequest API — so the chart's RBAC is exercised for real: a call the chart does not allow
fails exactly as it would in a cluster. DaemonSets select only real (non-KWOK) GPU nodes, of
which the local cluster has none, so none of their pods would run there either; a test that
plays a node's kubelet gets them for that node (``node_workloads``) and starts them the same way.

Listen ports are the one thing that differs: every pod has its own network namespace, local
processes share one, so each environment variable whose value is one of the container's ports
is pointed at a free loopback port instead (the mapping is kept by port name, ``metrics``,
``health``, in ``<name>.ports.json``). A restart reuses the recorded ports while they are free,
like the control plane's (``cluster.json``), so printed URLs stay valid across ``down``/``up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fgo_localcluster import process
from fgo_localcluster.layout import fresh_port, port_is_free, write_atomic
from fgo_localcluster.oci import ContainerRuntime, Mount, remove_all

if TYPE_CHECKING:
    from fgo_localcluster.cluster import LocalCluster

# Image repository (last path element) -> Python module of the service it runs.
SERVICE_MODULES = {
    "status-updater": "fgo_status_updater",
    "device-plugin": "fgo_device_plugin",
    "dra-plugin": "fgo_dra_plugin",
    "kwok-dra-plugin": "fgo_kwok_dra_plugin",
    "status-exporter": "fgo_status_exporter",
    "compute-domain-controller": "fgo_compute_domain_controller",
}
TOKEN_SECONDS = 24 * 3600
CONTAINER_KUBECONFIG = "/var/run/fgo/kubeconfig"
# What a service logs when the apiserver refused a call (HTTP 403 / reason Forbidden).
FORBIDDEN = re.compile(r"\b403\b|[Ff]orbidden")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LocalWorkload:
    """One Deployment of the chart, as a local process."""

    name: str
    namespace: str
    service_account: str
    module: str
    env: dict[str, str]
    # Container port name -> port, from the manifest.
    ports: dict[str, int] = field(default_factory=dict)
    # The container's image, run by a ContainerRuntime instead of the module when one is given.
    image: str = ""


@dataclass(frozen=True)
class RunningWorkload:
    workload: LocalWorkload
    pid: int
    log: Path
    # Container port name -> the loopback port it listens on here.
    ports: dict[str, int]


class OperatorError(RuntimeError):
    """The chart could not be installed or a workload could not be started."""


def resolve_env(
    entries: list[dict[str, Any]],
    pod_namespace: str,
    pod_name: str,
    service_account: str,
    node_name: str = "",
) -> dict[str, str]:
    """Container env as the kubelet would set it (the fieldRefs our chart uses)."""
    fields = {
        "metadata.namespace": pod_namespace,
        "metadata.name": pod_name,
        "spec.serviceAccountName": service_account,
        "spec.nodeName": node_name,
    }
    env: dict[str, str] = {}
    for entry in entries or []:
        if "valueFrom" in entry:
            ref = entry["valueFrom"].get("fieldRef")
            if ref is None or ref["fieldPath"] not in fields:
                raise OperatorError(f"env {entry['name']}: unsupported source {entry['valueFrom']}")
            env[entry["name"]] = fields[ref["fieldPath"]]
        else:
            env[entry["name"]] = str(entry.get("value", ""))
    return env


def _workload(
    doc: dict[str, Any], namespace: str, name: str, node_name: str = ""
) -> LocalWorkload | None:
    """The pod of a Deployment/DaemonSet ``doc`` as a local process (None: not our service)."""
    spec = doc["spec"]["template"]["spec"]
    container = spec["containers"][0]
    repository = container["image"].rsplit("/", 1)[-1].split(":", 1)[0]
    module = SERVICE_MODULES.get(repository)
    if module is None:
        return None
    sa = spec.get("serviceAccountName", "default")
    return LocalWorkload(
        name=name,
        namespace=doc["metadata"].get("namespace", namespace),
        service_account=sa,
        module=module,
        env=resolve_env(container.get("env", []), namespace, f"{name}-local", sa, node_name),
        ports={
            p.get("name", str(p["containerPort"])): int(p["containerPort"])
            for p in container.get("ports", [])
        },
        image=str(container["image"]),
    )


def replica_name(deployment: str, index: int) -> str:
    """Local name of replica ``index`` of a Deployment: the first keeps the Deployment's name."""
    return deployment if index == 0 else f"{deployment}-{index}"


def workloads_from_manifest(manifest: str, namespace: str) -> list[LocalWorkload]:
    """The Deployments of ``manifest`` (``helm get manifest``) that run one of our services,
    one workload per replica (each its own pod name, hence its own Lease identity)."""
    out = []
    for doc in yaml.safe_load_all(manifest):
        if not doc or doc.get("kind") != "Deployment":
            continue
        for index in range(int(doc["spec"].get("replicas", 1) or 1)):
            name = replica_name(doc["metadata"]["name"], index)
            workload = _workload(doc, namespace, name)
            if workload is not None:
                out.append(workload)
    return out


def node_workloads_from_manifest(
    manifest: str, namespace: str, node_name: str
) -> list[LocalWorkload]:
    """The DaemonSets of ``manifest`` that run one of our services, as their pod on
    ``node_name`` would run (``spec.nodeName`` resolved); named ``<daemonset>-<node>``.

    Nothing runs them by itself (the DaemonSets select real nodes only): a test that plays the
    node's kubelet starts the ones it needs, with the kubelet's directories moved to a temp
    dir through ``start(..., extra_env=...)``.
    """
    out = []
    for doc in yaml.safe_load_all(manifest):
        if not doc or doc.get("kind") != "DaemonSet":
            continue
        name = f"{doc['metadata']['name']}-{node_name}"
        workload = _workload(doc, namespace, name, node_name)
        if workload is not None:
            out.append(workload)
    return out


def local_ports(
    workload: LocalWorkload,
    previous: Mapping[str, int] | None = None,
    taken: set[int] | frozenset[int] = frozenset(),
) -> tuple[dict[str, str], dict[str, int]]:
    """Env overrides moving every listen port of ``workload`` to a free loopback port.

    A variable whose value is a container port (``9400``, ``:9400``, ``0.0.0.0:9400``) names
    that port; it gets the new port in the same form. ``previous`` (port name -> local port of
    an earlier run) is reused where still free. ``taken``: ports given to other workloads, which
    may not be bound yet (a service binds seconds after its start), so "free" does not prove
    them unclaimed. Returns (env overrides, name -> port).
    """
    moved: dict[int, int] = {}
    for name, port in workload.ports.items():
        old = (previous or {}).get(name)
        if old and old not in moved.values() and old not in taken and port_is_free(old):
            moved[port] = old
        else:
            moved[port] = fresh_port(set(moved.values()) | set(taken))
    overrides: dict[str, str] = {}
    for var, value in workload.env.items():
        match = re.fullmatch(r"(?P<host>[^:]*:)?(?P<port>\d+)", value)
        if match and int(match["port"]) in moved and (var.endswith("PORT") or match["host"]):
            overrides[var] = f"{match['host'] or ''}{moved[int(match['port'])]}"
    return overrides, {name: moved[port] for name, port in workload.ports.items()}


def forbidden_in(text: str) -> list[str]:
    """Lines of service log text reporting a refused API call."""
    return [line for line in text.splitlines() if FORBIDDEN.search(line)]


def forbidden_lines(log: Path, since: int = 0) -> list[str]:
    """Lines of a service log (from byte offset ``since``) reporting a refused API call."""
    try:
        with log.open("rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return forbidden_in(text)


class LocalOperator:
    """Install the chart and run its Deployments as local processes (see module docstring),
    or, given a :class:`~fgo_localcluster.oci.ContainerRuntime`, as runc containers of the
    images the manifest names (same env, same token, the kubeconfig mounted read-only)."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        bin_dir: Path,
        chart: Path,
        state_dir: Path,
        namespace: str = "gpu-operator",
        release: str = "gpu-operator",
        progress: Progress | None = None,
        containers: ContainerRuntime | None = None,
    ) -> None:
        self.containers = containers
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.chart = chart
        self.namespace = namespace
        self.release = release
        self.dir = operator_dir(state_dir) / namespace
        self._say = progress or (lambda message: print(f"fgo: {message}", file=sys.stderr))

    @classmethod
    def for_cluster(
        cls,
        cluster: LocalCluster,
        chart: Path,
        *,
        namespace: str,
        release: str,
        progress: Progress | None = None,
        containers: ContainerRuntime | None = None,
    ) -> LocalOperator:
        """An operator for ``release`` of ``chart`` on a running local cluster."""
        return cls(
            kubeconfig=cluster.kubeconfig,
            bin_dir=cluster.bin_dir,
            chart=chart,
            state_dir=cluster.state_dir,
            namespace=namespace,
            release=release,
            progress=progress,
            containers=containers,
        )

    async def _run(self, *argv: str, stdin: bytes | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )
        out, err = await proc.communicate(stdin)
        if proc.returncode != 0:
            raise OperatorError(
                f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed: "
                f"{err.decode(errors='replace').strip()}"
            )
        return out.decode()

    async def helm(self, *args: str) -> str:
        return await self._run(str(self.bin_dir / "helm"), *args)

    async def install(
        self, values_files: list[Path] | None = None, set_values: list[str] | None = None
    ) -> list[LocalWorkload]:
        """``helm upgrade -i`` the chart; returns the workloads to run locally."""
        argv = ["upgrade", "-i", self.release, str(self.chart),
                "--namespace", self.namespace, "--create-namespace"]  # fmt: skip
        for path in values_files or []:
            argv += ["-f", str(path)]
        for item in set_values or []:
            argv += ["--set", item]
        self._say(f"helm upgrade -i {self.release} (namespace {self.namespace})")
        await self.helm(*argv)
        return await self.workloads()

    async def workloads(self) -> list[LocalWorkload]:
        """The workloads of the installed release."""
        manifest = await self.helm("get", "manifest", self.release, "--namespace", self.namespace)
        return workloads_from_manifest(manifest, self.namespace)

    async def node_workloads(self, node_name: str) -> list[LocalWorkload]:
        """The release's node agents (DaemonSets) as they would run on ``node_name``."""
        manifest = await self.helm("get", "manifest", self.release, "--namespace", self.namespace)
        return node_workloads_from_manifest(manifest, self.namespace, node_name)

    async def uninstall(self) -> None:
        """Stop the workloads, ``helm uninstall``, and forget them (logs are kept)."""
        await self.stop()
        await self.helm("uninstall", self.release, "--namespace", self.namespace, "--wait")
        for pattern in ("*.pid", "*.ports.json", "*.kubeconfig"):
            for path in self.dir.glob(pattern):
                path.unlink(missing_ok=True)

    async def _token_kubeconfig(self, workload: LocalWorkload) -> Path:
        """A kubeconfig that authenticates as the workload's ServiceAccount."""
        token = (
            await self._run(
                str(self.bin_dir / "kubectl"),
                "create",
                "token",
                workload.service_account,
                "--namespace",
                workload.namespace,
                f"--duration={TOKEN_SECONDS}s",
            )
        ).strip()
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": workload.service_account, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "sa",
                    "context": {
                        "cluster": cluster["name"],
                        "user": workload.service_account,
                        "namespace": workload.namespace,
                    },
                }
            ],
            "current-context": "sa",
        }
        path = self.dir / f"{workload.name}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, yaml.safe_dump(config), mode=0o600)
        return path

    async def start(
        self, workloads: list[LocalWorkload], extra_env: dict[str, dict[str, str]] | None = None
    ) -> list[RunningWorkload]:
        """Start each workload as a detached process (restarting ones already running)."""
        running = []
        for workload in workloads:
            await self.stop_one(workload.name)
            kubeconfig = await self._token_kubeconfig(workload)
            taken = {
                port
                for other in self.dir.glob("*.ports.json")
                if other.name != f"{workload.name}.ports.json"
                for port in self.ports(other.name.removesuffix(".ports.json")).values()
            }
            port_env, ports = local_ports(workload, self.ports(workload.name), taken)
            env = {
                **workload.env,
                **port_env,
                "KUBECONFIG": str(kubeconfig),
                **(extra_env or {}).get(workload.name, {}),
            }
            log = self.log(workload.name)
            pid_file = self.dir / f"{workload.name}.pid"
            if self.containers is None:
                record = await process.spawn(
                    [sys.executable, "-m", workload.module], log, pid_file, env=env
                )
                how = f"pid {record.pid}"
            else:
                # The image's user reads it through the bind mount; its directory stays 0700.
                kubeconfig.chmod(0o644)
                env["KUBECONFIG"] = CONTAINER_KUBECONFIG
                record = await self.containers.start(
                    self._container(workload.name), workload.image, log, pid_file, env=env,
                    mounts=[Mount(kubeconfig, CONTAINER_KUBECONFIG)],
                )  # fmt: skip
                how = f"container of {workload.image}, runc pid {record.pid}"
            write_atomic(self.dir / f"{workload.name}.ports.json", json.dumps(ports))
            running.append(RunningWorkload(workload, record.pid, log, ports))
            self._say(f"started {workload.name} as {workload.service_account} ({how}, log {log})")
        return running

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def is_running(self, name: str) -> bool:
        record = process.PidRecord.read(self.dir / f"{name}.pid")
        return record is not None and process.is_running(record)

    async def wait_ready(self, names: list[str], timeout_s: float = 60.0) -> None:
        """Until every named workload answers /readyz with 200 (fails early if one died)."""
        import aiohttp

        deadline = time.monotonic() + timeout_s
        pending = list(names)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while pending:
                for name in list(pending):
                    if not self.is_running(name):
                        tail = "\n".join(self.log(name).read_text().splitlines()[-20:])
                        raise OperatorError(f"{name} exited; last log lines:\n{tail}")
                    port = self.ports(name).get("health")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                            if resp.status == 200:
                                pending.remove(name)
                if pending and time.monotonic() > deadline:
                    raise OperatorError(f"not ready after {timeout_s:.0f}s: {', '.join(pending)}")
                if pending:
                    await asyncio.sleep(0.5)

    async def stop_one(self, name: str) -> str:
        record = process.PidRecord.read(self.dir / f"{name}.pid")
        outcome = await process.terminate(record) if record else "not running"
        if self.containers is not None:
            await self.containers.remove(self._container(name))
        return outcome

    def _container(self, name: str) -> str:
        return f"{self.namespace}-{name}"

    async def stop(self) -> None:
        for pid_file in sorted(self.dir.glob("*.pid")):
            await self.stop_one(pid_file.stem)

    def ports(self, name: str) -> dict[str, int]:
        """Port name (``health``, ``metrics``) -> local port of a started workload."""
        try:
            return {
                k: int(v)
                for k, v in json.loads((self.dir / f"{name}.ports.json").read_text()).items()
            }
        except (OSError, ValueError):
            return {}


@dataclass(frozen=True)
class WorkloadStatus:
    """One workload a LocalOperator started under a state dir, as ``fgo cluster status`` shows
    it."""

    namespace: str
    name: str
    pid: int | None  # None: not running
    # "ok" (answers /readyz), "not ready (...)", "down"
    health: str
    ports: dict[str, int]
    log: Path

    @property
    def healthy(self) -> bool:
        return self.health == "ok"


async def _readyz(port: int | None) -> str:
    if port is None:
        return "ok"  # nothing to ask; running is all we know
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(f"http://127.0.0.1:{port}/readyz") as resp,
        ):
            return "ok" if resp.status == 200 else f"not ready (HTTP {resp.status})"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"not ready ({type(exc).__name__})"


async def workload_statuses(state_dir: Path) -> list[WorkloadStatus]:
    """Every workload with a pid file under ``state_dir``'s operator dir: pid, /readyz, ports."""

    async def one(pid_file: Path) -> WorkloadStatus:
        ns_dir, name = pid_file.parent, pid_file.stem
        record = process.PidRecord.read(pid_file)
        running = record is not None and process.is_running(record)
        ports: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            ports = {
                k: int(v)
                for k, v in json.loads((ns_dir / f"{name}.ports.json").read_text()).items()
            }
        health = await _readyz(ports.get("health")) if running else "down"
        return WorkloadStatus(
            namespace=ns_dir.name,
            name=name,
            pid=record.pid if record is not None and running else None,
            health=health,
            ports=ports,
            log=ns_dir / "logs" / f"{name}.log",
        )

    pid_files = sorted(operator_dir(state_dir).glob("*/*.pid"))
    return list(await asyncio.gather(*(one(p) for p in pid_files)))


def operator_dir(state_dir: Path) -> Path:
    """Where LocalOperator keeps pid files, logs and kubeconfigs (one subdirectory per ns)."""
    return state_dir / "operator"


async def stop_all(state_dir: Path) -> list[str]:
    """Stop every workload any LocalOperator started under ``state_dir`` (``fgo cluster down``).

    Returns ``<namespace>/<name>: <outcome>`` for each pid file found.
    """
    outcomes = []
    for pid_file in sorted(operator_dir(state_dir).glob("*/*.pid")):
        record = process.PidRecord.read(pid_file)
        outcome = await process.terminate(record) if record else "not running"
        outcomes.append(f"{pid_file.parent.name}/{pid_file.stem}: {outcome}")
    for name in await remove_all(operator_dir(state_dir)):
        outcomes.append(f"container {name}: removed")
    return outcomes
