"""Fixtures for the testkit tests: short socket directories and a leaked-task check."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107-byte unix socket path limit; /tmp/fgo-xxxx cannot.
    path = Path(tempfile.mkdtemp(prefix="fgo-tk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    # grpc.aio finishes a closed call's status handler a few loop turns after the channel
    # closes; give pending tasks up to a second to end. A real leak never ends and still fails.
    leaked: list[asyncio.Task[object]] = []
    for _ in range(50):
        await asyncio.sleep(0.02)
        leaked = [
            t
            for t in asyncio.all_tasks() - before
            if t is not asyncio.current_task() and not t.done()
        ]
        if not leaked:
            break
    assert not leaked, f"test leaked asyncio tasks: {leaked}"
