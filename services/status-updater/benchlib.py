"""What the status-updater's two benchmark scripts (bench.py, bench_nrt.py) share: percentiles,
feeding a reflector into an observer, and waiting on the observer's change signal."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from fgo_common.kube.watch import DELETED, SYNCED, Reflector


class Observed(Protocol):
    changed: asyncio.Event


def pct(values: list[float], q: float, empty: float = float("nan")) -> float:
    """The ``q`` quantile of ``values`` (nearest rank); ``empty`` when there are none."""
    if not values:
        return empty
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def consume(reflector: Reflector, handle: Any, stop: asyncio.Event) -> None:
    """Hand every object event of ``reflector`` to ``handle(obj, deleted)`` until ``stop``."""
    async for event in reflector.events(stop):
        if event.type != SYNCED:
            handle(event.obj, event.type == DELETED)


async def wait_until(observer: Observed, done: Callable[[], bool], deadline: float) -> bool:
    """Wait (on the observer's change signal, not by polling) until ``done()`` (True) or
    ``deadline`` (False)."""
    while not done():
        observer.changed.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(observer.changed.wait(), remaining)
    return True
