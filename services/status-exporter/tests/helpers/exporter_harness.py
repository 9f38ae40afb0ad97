"""Real peers of the status-exporter integration tests: a Prometheus server and the exporter
process itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from fgo_localcluster.testing import eventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A real Prometheus server scraping the given targets every second."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, targets: list[str], *, http_sd: tuple[str, ...] = ()) -> None:
        """Scrape ``targets`` (one job each), and the targets each ``http_sd`` URL lists (one
        job each, http_sd_configs as docs/chart.md shows them)."""
        config = self.workdir / "prometheus.yml"
        jobs = "\n".join(
            [
                f"  - job_name: dcgm-{i}\n    static_configs: [{{targets: ['{t}']}}]"
                for i, t in enumerate(targets)
            ]
            + [
                f"  - job_name: dcgm-sd-{i}\n    honor_labels: true\n"
                f"    http_sd_configs: [{{url: '{url}', refresh_interval: 1s}}]"
                for i, url in enumerate(http_sd)
            ]
        )
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs:\n{jobs}\n"
        )
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
            stdout=log,
            stderr=log,
        )
        log.close()

        async def ready() -> bool:
            async with aiohttp.ClientSession() as s, s.get(f"{self.url}/-/ready") as r:
                return r.status == 200

        await eventually(ready, timeout_s=60, what="Prometheus ready")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/query", params={"query": promql}) as resp,
        ):
            body = await resp.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def targets_up(self) -> bool:
        return bool(await self.query("up == 1")) and not await self.query("up == 0")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class ExporterProcess:
    """``python -m fgo_status_exporter`` with the given settings, stopped with SIGTERM."""

    def __init__(self, kubeconfig: Path, env: dict[str, str], workdir: Path) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "METRICS_PORT": str(self.metrics_port),
            "HEALTH_PORT": str(self.health_port),
            "LOG_LEVEL": "DEBUG",
            "LABEL_RESYNC_SECONDS": "0",
            **env,
        }
        self.log_path = workdir / "exporter.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    async def start(self) -> None:
        log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fgo_status_exporter", env=self.env, stdout=log, stderr=log
        )
        log.close()

        async def ready() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log_tail()
            with contextlib.suppress(aiohttp.ClientError):
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{self.health_port}/readyz") as r,
                ):
                    return r.status == 200
            return False

        await eventually(ready, timeout_s=60, what="status-exporter ready")

    async def scrape(self) -> str:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://{self.target}/metrics") as r,
        ):
            assert r.status == 200
            return await r.text()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


StartExporter = Callable[[dict[str, str]], Awaitable[ExporterProcess]]
