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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fgo_common.kube.retry import Backoff

# Failed keys: first retry after 0.5-1 s, the ceiling doubling per failure up to 30 s (the
# status-updater's policy before the services shared this queue; the kwok-dra-plugin's was close).
DEFAULT_BACKOFF = Backoff(initial_seconds=0.5, max_seconds=30.0)
# All retries together (client-go's default controller limiter: 10/s, bursts of 100).
DEFAULT_RETRY_RATE_PER_SECOND = 10.0
DEFAULT_RETRY_BURST = 100
_NEVER = float("inf")
_MAX_EXPONENT = 30  # 2**30 * initial is far past any max_seconds; keeps the float finite


class QueueShutDown(Exception):
    """:meth:`WorkQueue.get` after :meth:`WorkQueue.shut_down`: the worker should return."""


class WorkQueueMetrics(Collector):
    """``<prefix>_workqueue_*`` series, label ``queue``; one instance per registry.

    Depth, adds and retries are read from the queues at scrape time: an add is the hot path
    (the status-updater marks a node for every pod event) and a prometheus Counter's lock
    would cost more than the add itself. The two durations are histograms, observed once per
    key processed."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self._prefix = prefix
        self._queues: list[WorkQueue] = []
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
        registry.register(self)

    def attach(self, queue: WorkQueue) -> None:
        self._queues.append(queue)

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[Metric]:
        depth = GaugeMetricFamily(
            f"{self._prefix}_workqueue_depth",
            "Keys waiting to be processed (ready, delayed, or dirty while being processed).",
            labels=["queue"],
        )
        adds = CounterMetricFamily(
            f"{self._prefix}_workqueue_adds",
            "Keys added to the queue (a key already waiting is counted once more).",
            labels=["queue"],
        )
        retries = CounterMetricFamily(
            f"{self._prefix}_workqueue_retries",
            "Keys re-queued with back-off after a failure.",
            labels=["queue"],
        )
        for queue in self._queues:
            depth.add_metric([queue.name], len(queue))
            adds.add_metric([queue.name], queue.adds)
            retries.add_metric([queue.name], queue.retries)
        return [depth, adds, retries]


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
        self.adds = 0  # add calls (metrics read them at scrape time)
        self.retries = 0
        self._queue_seconds: Histogram | None = None
        self._work_seconds: Histogram | None = None
        if metrics is not None:
            metrics.attach(self)
            self._queue_seconds = metrics.queue_seconds.labels(name)
            self._work_seconds = metrics.work_seconds.labels(name)
        self._backoff = backoff
        self._bucket = _TokenBucket(retry_rate_per_second, retry_burst)
        self._ready: deque[str] = deque()
        self._ready_since: dict[str, float] = {}  # ready keys -> when they became ready
        self._delayed: dict[str, float] = {}  # key -> due (monotonic clock)
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
        self.adds += 1
        due = self._now() + max(0.0, delay_seconds)
        if key in self._ready_since or due >= self._delayed.get(key, _NEVER):
            return  # the common case of a burst: already due as soon or sooner
        self._enqueue(key, due)

    def _enqueue(self, key: str, due: float) -> None:
        now = self._now()
        if key in self._processing:
            self._dirty[key] = min(due, self._dirty.get(key, due))
        elif key in self._ready_since:
            pass  # already next in line
        elif due <= now:
            self._delayed.pop(key, None)  # its heap entry goes stale
            self._make_ready(key, now)
        elif due < self._delayed.get(key, _NEVER):
            self._delayed[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._arm_timer()
        self._update_idle()

    def add_rate_limited(self, key: str) -> float:
        """Re-queue ``key`` after a failure: its own jittered exponential back-off (the number
        of failures since its last :meth:`forget`), and no sooner than the shared retry budget
        allows. Returns the delay chosen."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = max(
            self._backoff.delay(min(failures, _MAX_EXPONENT)), self._bucket.reserve(self._now())
        )
        self.retries += 1
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
                self._drained.clear()
                if self._queue_seconds is not None:
                    self._queue_seconds.observe(now - since)
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
        if self._work_seconds is not None:
            self._work_seconds.observe(self._now() - started)
        due = self._dirty.pop(key, None)
        if due is not None and not self._shut_down:
            self._enqueue(key, due)
        if not self._processing:
            self._drained.set()
        self._update_idle()

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

    # The monotonic clock, not loop.time(): this runs on every add (thousands of pod events a
    # second at the status-updater) and the loop's method costs four times as much. Timers are
    # armed with call_later, so a loop with another clock only fires a little early or late,
    # and _promote_due re-arms for what is not due yet.
    _now = staticmethod(time.monotonic)

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
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, due - self._now()), self._promote_due
        )

    def _promote_due(self) -> None:
        self._timer = None
        now = self._now()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._delayed.get(key) == due:
                del self._delayed[key]
                self._make_ready(key, now)
        self._arm_timer()
        self._update_idle()

    def _update_idle(self) -> None:
        if not self._ready and not self._processing:
            self.idle.set()


Handler = Callable[[str], Awaitable[object]]
FailureHook = Callable[[str, Exception, float | None], None]


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
