"""A per-node work queue with debounce, no concurrent work on one node, and retry backoff.

Marking a node dirty schedules it ``debounce`` seconds later; further marks before then join the
same run (that is the batching: a burst of pod events on a node becomes one write). A node that
is marked while being processed runs again right after, so no change is lost and two workers
never write the same node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class NodeQueue:
    def __init__(self, debounce_seconds: float) -> None:
        self._debounce = debounce_seconds
        self._due: dict[str, float] = {}
        self._busy: set[str] = set()
        self._again: dict[str, float] = {}
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due) + len(self._again)

    def mark(self, node: str, delay: float | None = None) -> None:
        due = time.monotonic() + (self._debounce if delay is None else delay)
        if node in self._busy:
            self._again[node] = min(due, self._again.get(node, due))
            return
        current = self._due.get(node)
        if current is None or due < current:
            self._due[node] = due
            self._wakeup.set()

    async def get(self) -> str:
        """The next node whose time has come (it is then busy until :meth:`done`)."""
        while True:
            now = time.monotonic()
            if self._due:
                node, due = min(self._due.items(), key=lambda item: item[1])
                if due <= now:
                    del self._due[node]
                    self._busy.add(node)
                    return node
                timeout: float | None = due - now
            else:
                timeout = None
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def done(self, node: str) -> None:
        self._busy.discard(node)
        due = self._again.pop(node, None)
        if due is not None:
            self._due[node] = due
            self._wakeup.set()
