"""The one keyed work queue every controller uses (client-go's ``workqueue`` semantics).

A key is in at most one of three places: ready (handed to the next free worker), delayed (due
at a time; ``add_after`` and back-off), or being processed. Adding a key that is ready or due
sooner does nothing (bursts collapse); adding one that is being processed marks it dirty, and it
runs once more after :meth:`WorkQueue.done` — never on a second worker at the same time.
Failures back off per key (jittered exponential, reset by :meth:`WorkQueue.forget`), whichever
worker takes the key, and retries across all keys share one token bucket so an outage does not
turn into a retry storm. docs/design.md ("Work queues") has the longer story.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fgo_common.kube.retry import Backoff

# Failed keys: first retry after 0.5-1 s, the ceiling doubling per failure up to 30 s (the
# status-updater's policy before the services shared this queue; the kwok-dra-plugin's was close).
DEFAULT_BACKOFF = Backoff(initial_seconds=0.5, max_seconds=30.0)
# All retries together (client-go's default controller limiter: 10/s, bursts of 100).
DEFAULT_RETRY_RATE_PER_SECOND = 10.0
DEFAULT_RETRY_BURST = 100
_MAX_EXPONENT = 30  # 2**30 * initial is far past any max_seconds; keeps the float finite


class QueueShutDown(Exception):
    """:meth:`WorkQueue.get` after :meth:`WorkQueue.shut_down`: the worker should return."""


class WorkQueueMetrics:
    """``<prefix>_workqueue_*`` series, one label ``queue``; one instance per registry."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.depth = Gauge(
            f"{prefix}_workqueue_depth",
            "Keys waiting to be processed (ready, delayed, or dirty while being processed).",
            ["queue"],
            registry=registry,
        )
        self.adds = Counter(
            f"{prefix}_workqueue_adds_total",
            "Keys added to the queue (a key already waiting is counted once more).",
            ["queue"],
            registry=registry,
        )
        self.retries = Counter(
            f"{prefix}_workqueue_retries_total",
            "Keys re-queued with back-off after a failure.",
            ["queue"],
            registry=registry,
        )
        self.queue_seconds = Histogram(
            f"{prefix}_workqueue_queue_duration_seconds",
            "Time a key waited between becoming ready and a worker taking it.",
            ["queue"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
            registry=registry,
        )
        self.work_seconds = Histogram(
            f"{prefix}_workqueue_work_duration_seconds",
            "Time a worker spent on one key (get to done).",
            ["queue"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )


@dataclass
class _TokenBucket:
    """Reservations against ``rate`` tokens per second with ``burst`` capacity: each call says
    how long its caller must wait (tokens may go negative, like Go's ``rate.Limiter.Reserve``)."""

    rate: float
    burst: int
    tokens: float = 0.0
    updated: float | None = None

    def reserve(self, now: float) -> float:
        if self.rate <= 0:
            return 0.0
        if self.updated is None:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class WorkQueue:
    """Keys (node names) to process, each by one worker at a time. Use from the event loop."""

    def __init__(
        self,
        name: str,
        *,
        metrics: WorkQueueMetrics | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        retry_rate_per_second: float = DEFAULT_RETRY_RATE_PER_SECOND,
        retry_burst: int = DEFAULT_RETRY_BURST,
    ) -> None:
        self.name = name
        self._metrics = metrics
        self._backoff = backoff
        self._bucket = _TokenBucket(retry_rate_per_second, retry_burst)
        self._ready: deque[str] = deque()
        self._ready_since: dict[str, float] = {}  # ready keys -> when they became ready
        self._delayed: dict[str, float] = {}  # key -> due (loop time)
        self._heap: list[tuple[float, int, str]] = []  # may hold superseded entries
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._processing: dict[str, float] = {}  # key -> when its worker took it
        self._dirty: dict[str, float] = {}  # added while processing -> earliest due
        self._failures: dict[str, int] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._shut_down = False
        self._drained = asyncio.Event()
        self._drained.set()
        # Nothing ready and nothing being processed (delayed keys do not count: a key backing
        # off after a failure must not hold up readiness).
        self.idle = asyncio.Event()
        self.idle.set()

    # -- adding ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ready) + len(self._delayed) + len(self._dirty)

    def __contains__(self, key: object) -> bool:
        return key in self._ready_since or key in self._delayed or key in self._dirty

    @property
    def processing(self) -> frozenset[str]:
        return frozenset(self._processing)

    @property
    def shutting_down(self) -> bool:
        return self._shut_down

    def add(self, key: str) -> None:
        """Process ``key`` as soon as a worker is free (once, however often it is added)."""
        self.add_after(key, 0.0)

    def add_after(self, key: str, delay_seconds: float) -> None:
        """Process ``key`` in ``delay_seconds``, or earlier if it is already due earlier."""
        if not key or self._shut_down:
            return
        if self._metrics is not None:
            self._metrics.adds.labels(self.name).inc()
        self._enqueue(key, self._now() + max(0.0, delay_seconds))

    def _enqueue(self, key: str, due: float) -> None:
        now = self._now()
        if key in self._processing:
            self._dirty[key] = min(due, self._dirty.get(key, due))
        elif key in self._ready_since:
            pass  # already next in line
        elif due <= now:
            self._delayed.pop(key, None)  # its heap entry goes stale
            self._make_ready(key, now)
        elif due < self._delayed.get(key, float("inf")):
            self._delayed[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._arm_timer()
        self._update_depth()

    def add_rate_limited(self, key: str) -> float:
        """Re-queue ``key`` after a failure: its own jittered exponential back-off (the number
        of failures since its last :meth:`forget`), and no sooner than the shared retry budget
        allows. Returns the delay chosen."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = max(
            self._backoff.delay(min(failures, _MAX_EXPONENT)), self._bucket.reserve(self._now())
        )
        if self._metrics is not None:
            self._metrics.retries.labels(self.name).inc()
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """``key`` succeeded (or will not be retried): its next failure starts the back-off
        over."""
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    # -- taking ------------------------------------------------------------------------------

    async def get(self) -> str:
        """The next ready key; it is then this caller's until :meth:`done` (raise
        :class:`QueueShutDown` once the queue is shut down)."""
        while True:
            if self._shut_down:
                raise QueueShutDown(self.name)
            if self._ready:
                key = self._ready.popleft()
                now = self._now()
                since = self._ready_since.pop(key)
                self._processing[key] = now
                self.idle.clear()
                self._drained.clear()
                if self._metrics is not None:
                    self._metrics.queue_seconds.labels(self.name).observe(now - since)
                self._update_depth()
                if self._ready:
                    self._wake_one()  # another worker may take the next key
                return key
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # Woken and cancelled in the same turn: pass the wake-up on, or a ready key
                # could sit there while other workers sleep.
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()

    def done(self, key: str) -> None:
        """The worker is finished with ``key``; if it was added meanwhile, it is queued again."""
        started = self._processing.pop(key, None)
        if started is None:
            return
        if self._metrics is not None:
            self._metrics.work_seconds.labels(self.name).observe(self._now() - started)
        due = self._dirty.pop(key, None)
        if due is not None and not self._shut_down:
            self._enqueue(key, due)
        if not self._processing:
            self._drained.set()
        self._update_depth()

    # -- stopping ----------------------------------------------------------------------------

    def shut_down(self) -> None:
        """Stop handing out keys: waiting and later :meth:`get` calls raise
        :class:`QueueShutDown`, adds are ignored. Keys being processed may still be done."""
        self._shut_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def wait_drained(self) -> None:
        """Until no key is being processed (after :meth:`shut_down`: every worker finished)."""
        await self._drained.wait()

    async def wait_idle(self) -> None:
        await self.idle.wait()

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _make_ready(self, key: str, now: float) -> None:
        self._ready.append(key)
        self._ready_since[key] = now
        self.idle.clear()
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _arm_timer(self) -> None:
        """One timer, at the earliest due key (a loop timer per add_after would pile up)."""
        while self._heap and self._delayed.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # superseded by an earlier add, or made ready since
        if not self._heap:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        due = self._heap[0][0]
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().call_at(due, self._promote_due)

    def _promote_due(self) -> None:
        self._timer = None
        now = self._now()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._delayed.get(key) == due:
                del self._delayed[key]
                self._make_ready(key, now)
        self._arm_timer()
        self._update_depth()

    def _update_depth(self) -> None:
        if not self._ready and not self._processing:
            self.idle.set()
        if self._metrics is not None:
            self._metrics.depth.labels(self.name).set(len(self))


Handler = Callable[[str], Awaitable[object]]
FailureHook = Callable[[str, Exception, "float | None"], None]


async def run_worker(
    queue: WorkQueue,
    handle: Handler,
    *,
    retry: Callable[[Exception], bool] = lambda _exc: True,
    on_failure: FailureHook | None = None,
) -> None:
    """Take keys from ``queue`` and ``handle`` them until the queue is shut down.

    Success forgets the key's back-off. A failure re-queues it with back-off if ``retry(exc)``
    (else forgets it) and calls ``on_failure(key, exc, delay or None)`` for logs and metrics.
    A worker cancelled mid-key (stopping, or leader election losing the Lease) releases the
    key and queues it again, so whoever runs the workers next redoes it.
    """
    while True:
        try:
            key = await queue.get()
        except QueueShutDown:
            return
        try:
            await handle(key)
        except asyncio.CancelledError:
            queue.done(key)
            queue.add(key)
            raise
        except Exception as exc:
            delay: float | None = None
            if retry(exc):
                delay = queue.add_rate_limited(key)
            else:
                queue.forget(key)
            if on_failure is not None:
                on_failure(key, exc, delay)
        else:
            queue.forget(key)
        queue.done(key)
