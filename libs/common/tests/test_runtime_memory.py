"""Start-up heap release: works on this (glibc) machine and waits for readiness."""

from __future__ import annotations

import asyncio

import pytest
from fgo_common.runtime import memory
from fgo_common.runtime.health import Readiness


def test_release_is_available_on_glibc() -> None:
    assert memory.release_freed_heap() is True


async def test_trim_waits_until_every_condition_is_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[int] = []

    monkeypatch.setattr(memory, "release_freed_heap", lambda: trims.append(1) or True)
    readiness = Readiness()
    readiness.require("nodes")
    readiness.require("records")
    task = asyncio.create_task(trim_when_ready(readiness))
    readiness.set("nodes")
    await asyncio.sleep(0.05)
    assert trims == [] and not task.done()
    readiness.set("records")
    await asyncio.wait_for(task, 2)
    assert trims == [1]


async def trim_when_ready(readiness: Readiness) -> None:
    await memory.trim_when_ready(lambda: readiness.ready, readiness.changed)


def test_arena_limit_is_accepted_on_glibc() -> None:
    assert memory.limit_malloc_arenas(2) is True


async def test_periodic_trim_runs_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(memory, "release_freed_heap", lambda: trims.append(1) or True)
    stop = asyncio.Event()
    task = asyncio.create_task(memory.trim_periodically(0.01, stop))
    while len(trims) < 3:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2)
    count = len(trims)
    await asyncio.sleep(0.05)
    assert len(trims) == count  # no trim after stop
