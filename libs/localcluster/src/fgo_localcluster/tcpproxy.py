"""A TCP proxy in front of the kube-apiserver, so tests can cut a client off from it.

Our services reach the apiserver through it (their kubeconfigs name the proxy's port; TLS goes
through untouched, the certificate is for 127.0.0.1). ``drop()`` resets every open connection —
watches, keep-alive pools, requests in flight — the way a load balancer failover or a NAT
timeout does; ``partition()`` also refuses new connections for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import yaml


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.dropped = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._blocked_until = 0.0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.drop()
            await self._server.wait_closed()

    def drop(self) -> int:
        """Reset every open connection (both sides); returns how many client connections."""
        count = 0
        for writer in list(self._open):
            writer.transport.abort()
            count += 1
        self._open.clear()
        self.dropped += count // 2
        return count // 2

    def partition(self, seconds: float) -> int:
        """Drop everything and refuse new connections for ``seconds``."""
        self._blocked_until = time.monotonic() + seconds
        return self.drop()

    def heal(self) -> None:
        """End a partition early (new connections are accepted again)."""
        self._blocked_until = 0.0

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._blocked_until:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        try:
            # Either side closing ends the connection (HTTP clients never half-close).
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._open -= {writer, up_writer}
            for w in (writer, up_writer):
                w.transport.abort()


def proxied_kubeconfig(source: Path, target: Path, port: int) -> Path:
    """A copy of the kubeconfig ``source`` whose clusters are reached through ``port``."""
    config = yaml.safe_load(source.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o600)
    return target
