"""A keyed work queue: each key is processed by one worker at a time, changes while it is being
processed make it run again afterwards, and a burst of events for one key collapses into one
pass (client-go's workqueue semantics, which is what makes level-based controllers cheap)."""

from __future__ import annotations

import asyncio
from collections import deque


class KeyQueue:
    def __init__(self) -> None:
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()  # changed while being processed
        self._has_items = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._processing

    def add(self, key: str) -> None:
        if not key:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._has_items.set()
            self._idle.clear()

    def add_after(self, key: str, delay_seconds: float) -> None:
        asyncio.get_running_loop().call_later(delay_seconds, self.add, key)

    async def get(self) -> str:
        while not self._queue:
            self._has_items.clear()
            await self._has_items.wait()
        key = self._queue.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)
        if self.idle:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()
