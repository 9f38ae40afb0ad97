"""TCP forwarder from a real node's network namespace to the apiserver on the host's loopback.

The apiserver binds 127.0.0.1 only. This process runs in the host's network namespace but
creates its listening socket inside the node's (setns on the main thread, then back), on the
`kubernetes` Service's ClusterIP (10.96.0.1:443, an address on the node namespace's loopback).
So the kubelet, hostNetwork pods and ordinary pods all reach the apiserver at the address
in-cluster clients already use and the apiserver's certificate already names; TLS passes
through untouched. Nothing listens on the host side, and no iptables rule is needed anywhere.

Run as ``python -m fgo_localcluster.apiforward --netns PATH --listen IP:PORT --connect IP:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys

_CLONE_NEWNET = 0x40000000
_BUFFER = 256 * 1024


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in_netns(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket bound in the network namespace pinned at ``netns``."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.create_server((host, port), backlog=128)
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
    sock.setblocking(False)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def serve(
    sock: socket.socket, target: tuple[str, int], stop: asyncio.Event | None = None
) -> None:
    """Forward every connection on ``sock`` to ``target`` until ``stop`` (default: SIGTERM)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError as exc:
            print(f"apiforward: cannot reach {target[0]}:{target[1]}: {exc}", flush=True)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(handle, sock=sock)
    print(f"apiforward: serving {sock.getsockname()} -> {target[0]}:{target[1]}", flush=True)
    async with server:
        await stop.wait()
    print("apiforward: stopped", flush=True)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apiforward", description=__doc__)
    parser.add_argument("--netns", required=True, help="pinned network namespace to listen in")
    parser.add_argument("--listen", required=True, type=_addr, help="IP:PORT in that namespace")
    parser.add_argument("--connect", required=True, type=_addr, help="IP:PORT on the host")
    args = parser.parse_args(argv)
    try:
        sock = listen_in_netns(args.netns, *args.listen)
    except OSError as exc:
        print(f"apiforward: cannot listen on {args.listen} in {args.netns}: {exc}", flush=True)
        return 1
    asyncio.run(serve(sock, args.connect))
    return 0


if __name__ == "__main__":
    sys.exit(main())
