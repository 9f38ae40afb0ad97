"""The keyed work queue collapses bursts and never runs one key twice at a time."""

from __future__ import annotations

import asyncio

from fgo_kwok_dra_plugin.workqueue import KeyQueue


async def test_duplicates_collapse_and_order_is_fifo() -> None:
    queue = KeyQueue()
    for key in ("a", "b", "a", "c", "b", ""):
        queue.add(key)
    assert len(queue) == 3
    assert [await queue.get() for _ in range(3)] == ["a", "b", "c"]


async def test_a_key_changed_while_processing_runs_again_after() -> None:
    queue = KeyQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")  # event during processing
    assert len(queue) == 0  # not handed to a second worker
    queue.done(key)
    assert len(queue) == 1
    assert await queue.get() == "a"
    queue.done("a")
    assert queue.idle


async def test_wait_idle_returns_when_everything_is_done() -> None:
    queue = KeyQueue()
    queue.add("a")
    queue.add("b")
    processed: list[str] = []

    async def worker() -> None:
        while True:
            key = await queue.get()
            await asyncio.sleep(0.01)
            processed.append(key)
            queue.done(key)

    task = asyncio.create_task(worker())
    try:
        async with asyncio.timeout(2):
            await queue.wait_idle()
    finally:
        task.cancel()
    assert processed == ["a", "b"]


async def test_add_after_delays() -> None:
    queue = KeyQueue()
    queue.add_after("late", 0.05)
    assert len(queue) == 0
    async with asyncio.timeout(2):
        assert await queue.get() == "late"
