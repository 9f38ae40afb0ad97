"""apiforward's piping (the network-namespace part needs root and is covered by
tests/integration/test_real_node.py, where the kubelet and pods reach the apiserver through it)."""

from __future__ import annotations

import asyncio
import socket

from fgo_localcluster.apiforward import serve


async def test_forwards_both_directions_and_half_close() -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's EOF reaches us through the forwarder
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    target = await asyncio.start_server(upstream, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(listener, ("127.0.0.1", target_port), stop))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 300_000)
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 10)
        assert reply == b"echo:" + b"x" * 300_000
        writer.close()
        await writer.wait_closed()
    finally:
        stop.set()
        await task
        target.close()
        await target.wait_closed()


async def test_unreachable_target_closes_the_client() -> None:
    spare = socket.create_server(("127.0.0.1", 0))
    dead_port = spare.getsockname()[1]
    spare.close()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(listener, ("127.0.0.1", dead_port), stop))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    finally:
        stop.set()
        await task
