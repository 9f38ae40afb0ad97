"""Helpers for the integration tests and the benchmark: run the status-updater as a real
subprocess (so a test can SIGKILL it mid-burst) and read the records it writes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from fgo_common.topology import TOPOLOGY_DATA_KEY, NodeTopology
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StatusUpdaterProcess:
    """``python -m fgo_status_updater`` with a kubeconfig and settings from ``env``."""

    def __init__(self, kubeconfig: str | Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HEALTH_PORT": str(self.port),
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, *, wait_ready: bool = True, timeout_s: float = 60.0) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts} ---\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fgo_status_updater",
                env=self.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        if wait_ready:
            await self.wait_ready(timeout_s)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                if self.proc is not None and self.proc.returncode is not None:
                    code = self.proc.returncode
                    raise AssertionError(f"status-updater exited with {code}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(self.url + "/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"status-updater not ready; log:\n{self.log_tail()}")
                await asyncio.sleep(0.2)

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=5.0) as http:
            return (await http.get(self.url + "/metrics")).text

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 25)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def read_record_cm(
    api: client.ApiClient, namespace: str, node: str, prefix: str = "topology"
) -> dict[str, Any] | None:
    core: Any = client.CoreV1Api(api)
    try:
        cm = await core.read_namespaced_config_map(
            f"{prefix}-{node}", namespace, _preload_content=False
        )
        try:
            body: dict[str, Any] = await cm.json()
        finally:
            cm.release()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    if cm.status == 404:
        return None
    return body


async def read_record(
    api: client.ApiClient, namespace: str, node: str, prefix: str = "topology"
) -> NodeTopology | None:
    cm = await read_record_cm(api, namespace, node, prefix)
    if cm is None or "data" not in cm:
        return None
    return NodeTopology.from_yaml(cm["data"][TOPOLOGY_DATA_KEY], node)


def holders_by_pod(record: NodeTopology) -> dict[str, list[int]]:
    """``{"<namespace>/<pod>": [GPU index, ...]}`` of every holder in ``record``."""
    out: dict[str, list[int]] = {}
    for gpu in record.gpus:
        for holder in gpu.status.holders:
            out.setdefault(f"{holder.namespace}/{holder.pod}", []).append(gpu.index)
    return out
