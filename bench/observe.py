"""Background watches that stamp, with this process's clock, when each object reached a state.

Every latency the benchmark reports is the difference of two such stamps taken by the same
watch machinery (fgo_common's Reflector), so the watch delivery delay cancels out to first
order. The watches run as the cluster admin; their cost shows up as ``harness`` in footprint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from fgo_common.kube.watch import DELETED, SYNCED, Reflector

Obj = dict[str, Any]
Handler = Callable[[str, Obj, float], None]


class Watch:
    """A Reflector over one resource feeding ``handler(event_type, obj, monotonic_time)``."""

    def __init__(
        self, list_fn: Callable[..., Any], name: str, handler: Handler, **list_kwargs: Any
    ) -> None:
        self.reflector = Reflector(list_fn, name=name, **list_kwargs)
        self.handler = handler
        self.synced = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async for event in self.reflector.events(self._stop):
            if event.type == SYNCED:
                self.synced.set()
                continue
            self.handler(event.type, event.obj, time.monotonic())

    async def start(self, timeout_s: float = 60.0) -> Watch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        waiter = asyncio.ensure_future(self.synced.wait())
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            waiter.cancel()
            self._task.result()  # raises what killed the watch
        if waiter not in done:
            waiter.cancel()
            raise TimeoutError(f"watch {self.reflector.name} did not sync in {timeout_s:.0f}s")
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class FirstSeen:
    """``stamp(state, key, t)`` keeps the earliest time each key reached each state."""

    def __init__(self) -> None:
        self.times: dict[str, dict[str, float]] = {}

    def stamp(self, state: str, key: str, t: float) -> None:
        self.times.setdefault(state, {}).setdefault(key, t)

    def get(self, state: str) -> dict[str, float]:
        return self.times.get(state, {})

    def count(self, state: str, keys: set[str] | None = None) -> int:
        got = self.times.get(state, {})
        return len(got) if keys is None else len(keys & got.keys())

    def clear(self) -> None:
        self.times.clear()


def is_deleted(event_type: str) -> bool:
    return event_type == DELETED


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1
) -> bool:
    """Poll an in-memory ``predicate`` (fed by watches) until true or the deadline; no API calls."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)
    return True
