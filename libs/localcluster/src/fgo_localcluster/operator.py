"""Run the operator on the local control plane without a container runtime.

``helm upgrade -i`` installs the real chart (ConfigMaps, RBAC, ServiceAccounts, DeviceClasses,
Deployments...). The chart's pods cannot run here (no container runtime, and KWOK nodes only
pretend), so each Deployment of ours is run as a local process instead, configured *from the
rendered manifest*: the same environment variables (downward-API fields resolved the way the
kubelet would) and the same identity — a token of the Deployment's ServiceAccount from the
TokenRequest API — so the chart's RBAC is exercised for real: a call the chart does not allow
fails exactly as it would in a cluster. DaemonSets select only real (non-KWOK) GPU nodes, of
which the local cluster has none, so none of their pods would run there either.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fgo_localcluster import process
from fgo_localcluster.layout import write_atomic

# Image repository (last path element) -> Python module of the service it runs.
SERVICE_MODULES = {
    "status-updater": "fgo_status_updater",
    "device-plugin": "fgo_device_plugin",
    "dra-plugin": "fgo_dra_plugin",
    "kwok-dra-plugin": "fgo_kwok_dra_plugin",
    "status-exporter": "fgo_status_exporter",
}
# Env vars holding listen ports: replaced by free loopback ports so several services can run
# side by side on one host (in a cluster each pod has its own network namespace).
PORT_ENV_VARS = ("HEALTH_PORT", "METRICS_PORT", "HEALTHCHECK_PORT")
TOKEN_SECONDS = 24 * 3600

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LocalWorkload:
    """One Deployment of the chart, as a local process."""

    name: str
    namespace: str
    service_account: str
    module: str
    env: dict[str, str]


@dataclass(frozen=True)
class RunningWorkload:
    workload: LocalWorkload
    pid: int
    log: Path
    ports: dict[str, int]


class OperatorError(RuntimeError):
    """The chart could not be installed or a workload could not be started."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _resolve_env(
    entries: list[dict[str, Any]], pod_namespace: str, pod_name: str, sa: str
) -> dict[str, str]:
    """Container env as the kubelet would set it (the fieldRefs our chart uses)."""
    fields = {
        "metadata.namespace": pod_namespace,
        "metadata.name": pod_name,
        "spec.serviceAccountName": sa,
        "spec.nodeName": "",
    }
    env: dict[str, str] = {}
    for entry in entries or []:
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif "valueFrom" in entry and "fieldRef" in entry["valueFrom"]:
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise OperatorError(f"env {entry['name']}: unsupported fieldRef {path}")
            env[entry["name"]] = fields[path]
    return env


def workloads_from_manifest(manifest: str, namespace: str) -> list[LocalWorkload]:
    """The Deployments of ``manifest`` (``helm get manifest``) that run one of our services."""
    out = []
    for doc in yaml.safe_load_all(manifest):
        if not doc or doc.get("kind") != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        container = spec["containers"][0]
        repository = container["image"].rsplit("/", 1)[-1].split(":", 1)[0]
        module = SERVICE_MODULES.get(repository)
        if module is None:
            continue
        name = doc["metadata"]["name"]
        sa = spec.get("serviceAccountName", "default")
        out.append(
            LocalWorkload(
                name=name,
                namespace=doc["metadata"].get("namespace", namespace),
                service_account=sa,
                module=module,
                env=_resolve_env(container.get("env", []), namespace, f"{name}-local", sa),
            )
        )
    return out


class LocalOperator:
    """Install the chart and run its Deployments as local processes (see module docstring)."""

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
    ) -> None:
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.chart = chart
        self.namespace = namespace
        self.release = release
        self.dir = state_dir / "operator" / namespace
        self._say = progress or (lambda message: print(f"fgo: {message}", file=sys.stderr))

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

    async def install(
        self, values_files: list[Path] | None = None, set_values: list[str] | None = None
    ) -> list[LocalWorkload]:
        """``helm upgrade -i`` the chart; returns the workloads to run locally."""
        argv = [
            str(self.bin_dir / "helm"),
            "upgrade",
            "-i",
            self.release,
            str(self.chart),
            "--namespace",
            self.namespace,
            "--create-namespace",
        ]
        for path in values_files or []:
            argv += ["-f", str(path)]
        for item in set_values or []:
            argv += ["--set", item]
        self._say(f"helm upgrade -i {self.release} (namespace {self.namespace})")
        await self._run(*argv)
        manifest = await self._run(
            str(self.bin_dir / "helm"),
            "get",
            "manifest",
            self.release,
            "--namespace",
            self.namespace,
        )
        return workloads_from_manifest(manifest, self.namespace)

    async def uninstall(self) -> None:
        await self.stop()
        await self._run(
            str(self.bin_dir / "helm"),
            "uninstall",
            self.release,
            "--namespace",
            self.namespace,
            "--wait",
        )

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
        write_atomic(path, yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    async def start(
        self, workloads: list[LocalWorkload], extra_env: dict[str, dict[str, str]] | None = None
    ) -> list[RunningWorkload]:
        """Start each workload as a detached process (restarting ones already running)."""
        running = []
        for workload in workloads:
            await self.stop_one(workload.name)
            kubeconfig = await self._token_kubeconfig(workload)
            ports = {var: _free_port() for var in PORT_ENV_VARS}
            env = {
                **workload.env,
                **{k: str(v) for k, v in ports.items()},
                "KUBECONFIG": str(kubeconfig),
                **(extra_env or {}).get(workload.name, {}),
            }
            log = self.dir / "logs" / f"{workload.name}.log"
            record = await process.spawn(
                [sys.executable, "-m", workload.module],
                log,
                self.dir / f"{workload.name}.pid",
                env=env,
            )
            write_atomic(self.dir / f"{workload.name}.ports.json", json.dumps(ports))
            running.append(RunningWorkload(workload, record.pid, log, ports))
            self._say(
                f"started {workload.name} as {workload.service_account} (pid {record.pid}, "
                f"log {log})"
            )
        return running

    async def stop_one(self, name: str) -> str:
        record = process.PidRecord.read(self.dir / f"{name}.pid")
        return await process.terminate(record) if record else "not running"

    async def stop(self) -> None:
        for pid_file in sorted(self.dir.glob("*.pid")):
            await self.stop_one(pid_file.stem)

    def ports(self, name: str) -> dict[str, int]:
        try:
            return {
                k: int(v)
                for k, v in json.loads((self.dir / f"{name}.ports.json").read_text()).items()
            }
        except (OSError, ValueError):
            return {}
