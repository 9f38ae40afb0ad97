"""A per-node work queue with debounce, no concurrent work on one node, and retry backoff.

Marking a node dirty schedules it ``debounce`` seconds later; further marks before then join the
same run (that is the batching: a burst of pod events on a node becomes one write). A node that
is marked while being processed runs again right after, so no change is lost and two workers
never write the same node.

A heap keeps marks O(log n), and a mark wakes one waiting worker, not all of them: with
hundreds of nodes and thousands of pod events per second, a wake-everyone design spends the
controller's CPU on workers scanning the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque


class NodeQueue:
    def __init__(self, debounce_seconds: float) -> None:
        self._debounce = debounce_seconds
        self._due: dict[str, float] = {}  # scheduled nodes -> when
        self._heap: list[tuple[float, int, str]] = []  # may hold stale entries
        self._seq = itertools.count()
        self._busy: set[str] = set()
        self._again: dict[str, float] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._due) + len(self._again)

    def mark(self, node: str, delay: float | None = None) -> None:
        due = time.monotonic() + (self._debounce if delay is None else delay)
        if node in self._busy:
            self._again[node] = min(due, self._again.get(node, due))
            return
        current = self._due.get(node)
        if current is None or due < current:
            self._schedule(node, due)

    def _schedule(self, node: str, due: float) -> None:
        self._due[node] = due
        heapq.heappush(self._heap, (due, next(self._seq), node))
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _pop_due(self, now: float) -> str | None:
        while self._heap:
            due, _, node = self._heap[0]
            if self._due.get(node) != due:
                heapq.heappop(self._heap)  # superseded by an earlier mark, or already taken
                continue
            if due > now:
                return None
            heapq.heappop(self._heap)
            del self._due[node]
            return node
        return None

    async def get(self) -> str:
        """The next node whose time has come (it is then busy until :meth:`done`)."""
        loop = asyncio.get_running_loop()
        while True:
            node = self._pop_due(time.monotonic())
            if node is not None:
                self._busy.add(node)
                if self._heap:
                    self._wake_one()  # someone else may take the next one
                return node
            timeout = max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), timeout)
            finally:
                if not waiter.done():
                    waiter.cancel()

    def done(self, node: str) -> None:
        self._busy.discard(node)
        due = self._again.pop(node, None)
        if due is not None:
            current = self._due.get(node)
            if current is None or due < current:
                self._schedule(node, due)
