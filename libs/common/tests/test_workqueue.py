"""The shared work queue: properties over random add / add_after / fail / succeed sequences with
several workers, and the single behaviours (dedupe, dirty re-run, back-off, rate limit, metrics,
cancellation, shutdown) one by one."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import pytest
from fgo_common.kube.retry import Backoff
from fgo_common.runtime.workqueue import (
    QueueShutDown,
    WorkQueue,
    WorkQueueMetrics,
    run_worker,
)
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

TEST_BACKOFF = Backoff(initial_seconds=0.002, max_seconds=0.016)
TIMER_SLACK = 0.001  # a loop timer may fire up to the clock resolution early; be generous

KEYS = st.sampled_from(["a", "b", "c"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), KEYS, st.just(0)),
        st.tuples(st.just("add_after"), KEYS, st.integers(0, 6)),
        st.tuples(st.just("sleep"), st.just(""), st.integers(0, 4)),
        st.tuples(st.just("yield"), st.just(""), st.integers(1, 6)),
    ),
    min_size=1,
    max_size=40,
)
# What the handler does on its n-th call: (work, fail?), then succeed at once. Work below 10 is
# that many event-loop turns (interleavings independent of the machine's speed), above is
# (work - 10) ms of wall time.
OUTCOMES = st.lists(st.tuples(st.integers(0, 13), st.booleans()), max_size=40)


@dataclass
class Model:
    """What happened, in one global order (``seq``) plus loop times."""

    seq: int = 0
    in_flight: set[str] = field(default_factory=set)
    last_add: dict[str, int] = field(default_factory=dict)  # key -> seq of its last add
    last_start: dict[str, tuple[int, bool]] = field(default_factory=dict)  # seq, succeeded
    starts: list[tuple[str, int, float, str]] = field(default_factory=list)  # key, seq, t, worker
    failures: dict[str, int] = field(default_factory=dict)  # consecutive, across workers
    # key -> (seq of the failed run's start, when its back-off ends); an add since that start
    # is new work and may run the key at once (client-go does the same)
    retry_due: dict[str, tuple[int, float]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def tick(self) -> int:
        self.seq += 1
        return self.seq


async def _exercise(
    workers: int, ops: list[tuple[str, str, int]], outcomes: list[tuple[int, bool]]
):
    loop = asyncio.get_running_loop()
    queue = WorkQueue("prop", backoff=TEST_BACKOFF, retry_rate_per_second=0)
    model = Model()
    plan = iter(outcomes)

    def add(key: str, delay_ms: int) -> None:
        model.last_add[key] = model.tick()
        if delay_ms:
            queue.add_after(key, delay_ms / 1000)
        else:
            queue.add(key)

    async def handle(key: str) -> None:
        worker = asyncio.current_task().get_name()  # type: ignore[union-attr]
        seq, now = model.tick(), loop.time()
        if key in model.in_flight:
            model.violations.append(f"{key} on two workers at seq {seq}")
        pending = model.retry_due.pop(key, None)
        if pending is not None:
            failed_run, due = pending
            added_since = model.last_add.get(key, 0) > failed_run
            if not added_since and now < due - TIMER_SLACK:
                model.violations.append(f"{key} retried {due - now:.4f} s before its back-off")
        model.starts.append((key, seq, now, worker))
        model.in_flight.add(key)
        work, fail = next(plan, (0, False))
        try:
            if work < 10:
                for _ in range(work):
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep((work - 10) / 1000)
        finally:
            model.in_flight.discard(key)
        model.last_start[key] = (seq, not fail)
        if fail:
            model.failures[key] = model.failures.get(key, 0) + 1
            raise RuntimeError("planned failure")
        model.failures.pop(key, None)

    def on_failure(key: str, exc: Exception, delay: float | None) -> None:
        assert delay is not None
        n = model.failures[key]
        ceiling = min(TEST_BACKOFF.max_seconds, TEST_BACKOFF.initial_seconds * 2**n)
        if not ceiling / 2 - 1e-9 <= delay <= ceiling + 1e-9:
            model.violations.append(f"{key}: delay {delay} after {n} failures, not per key")
        started = model.last_start[key][0]
        model.retry_due[key] = (started, loop.time() + delay)

    tasks = [
        asyncio.create_task(run_worker(queue, handle, on_failure=on_failure), name=f"w{i}")
        for i in range(workers)
    ]
    for op, key, value in ops:
        if op == "sleep":
            await asyncio.sleep(value / 1000)
        elif op == "yield":
            for _ in range(value):
                await asyncio.sleep(0)
        else:
            add(key, value)
    async with asyncio.timeout(10):
        while len(queue) or queue.processing:
            await asyncio.sleep(0.002)
    queue.shut_down()
    await asyncio.gather(*tasks)
    return model


@hsettings(
    max_examples=60,
    deadline=None,
    database=None,  # leave no .hypothesis directory in the tree
    suppress_health_check=[HealthCheck.too_slow],
)
@given(workers=st.integers(1, 4), ops=OPS, outcomes=OUTCOMES)
def test_random_sequences_keep_the_queue_promises(
    workers: int, ops: list[tuple[str, str, int]], outcomes: list[tuple[int, bool]]
) -> None:
    model = asyncio.run(_exercise(workers, ops, outcomes))
    assert model.violations == []
    for key, added in model.last_add.items():
        # No lost wake-up, dirty re-run included: a start after the key's last add, and the
        # last start succeeded (failures were retried until they did).
        seq, succeeded = model.last_start.get(key, (0, False))
        assert seq > added, f"{key} last added at {added}, last started at {seq}"
        assert succeeded
    assert set(model.last_start) <= set(model.last_add)


async def test_back_off_follows_the_key_not_the_worker() -> None:
    """Two workers alternate on a key that keeps failing: the delay keeps doubling (a per-worker
    count would restart at the first step whenever the other worker took the key)."""
    queue = WorkQueue("q", backoff=Backoff(initial_seconds=0.004, max_seconds=1.0))
    delays: list[float] = []
    workers_seen: set[str] = set()

    async def fail(key: str) -> None:
        workers_seen.add(asyncio.current_task().get_name())  # type: ignore[union-attr]
        await asyncio.sleep(0)
        raise RuntimeError("down")

    def note(key: str, exc: Exception, delay: float | None) -> None:
        assert delay is not None
        delays.append(delay)
        if len(delays) == 6:
            queue.shut_down()

    tasks = [
        asyncio.create_task(run_worker(queue, fail, on_failure=note), name=f"w{i}")
        for i in range(2)
    ]
    queue.add("k")
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    for attempt, delay in enumerate(delays, start=1):
        ceiling = 0.004 * 2**attempt
        assert ceiling / 2 <= delay <= ceiling
    assert queue.failures("k") == 6


async def test_success_forgets_the_back_off() -> None:
    queue = WorkQueue("q")
    queue.add_rate_limited("k")
    queue.add_rate_limited("k")
    assert queue.failures("k") == 2
    queue.forget("k")
    assert queue.failures("k") == 0


async def test_duplicates_collapse_in_fifo_order() -> None:
    queue = WorkQueue("q")
    for key in ("a", "b", "a", "c", "b", ""):
        queue.add(key)
    assert len(queue) == 3
    assert [await queue.get() for _ in range(3)] == ["a", "b", "c"]


async def test_a_key_added_while_processing_runs_once_more_afterwards() -> None:
    queue = WorkQueue("q")
    queue.add("a")
    key = await queue.get()
    queue.add("a")
    queue.add("a")
    with pytest.raises(TimeoutError):  # not handed to a second worker
        await asyncio.wait_for(queue.get(), 0.05)
    queue.done(key)
    assert await asyncio.wait_for(queue.get(), 1) == "a"
    queue.done("a")
    assert len(queue) == 0
    assert queue.idle.is_set()


async def test_add_after_waits_and_the_earliest_time_wins() -> None:
    loop = asyncio.get_running_loop()
    queue = WorkQueue("q")
    started = loop.time()
    queue.add_after("late", 0.2)
    queue.add_after("late", 0.05)  # sooner: wins
    queue.add_after("late", 0.5)  # later than pending: joins it
    assert len(queue) == 1
    assert queue.idle.is_set()  # delayed keys do not hold up idleness
    assert await asyncio.wait_for(queue.get(), 1) == "late"
    assert 0.05 - 0.001 <= loop.time() - started < 0.2
    queue.done("late")
    with pytest.raises(TimeoutError):  # the later asks joined the run that happened
        await asyncio.wait_for(queue.get(), 0.6)


async def test_an_immediate_add_overtakes_a_delayed_one() -> None:
    queue = WorkQueue("q")
    queue.add_after("k", 5)
    queue.add("k")
    assert await asyncio.wait_for(queue.get(), 0.5) == "k"
    queue.done("k")
    assert len(queue) == 0


async def test_a_delayed_add_while_processing_keeps_its_delay() -> None:
    loop = asyncio.get_running_loop()
    queue = WorkQueue("q")
    queue.add("k")
    await queue.get()
    queue.add_after("k", 0.1)
    done_at = loop.time()
    queue.done("k")
    assert await asyncio.wait_for(queue.get(), 1) == "k"
    assert loop.time() - done_at >= 0.1 - 0.001


async def test_retries_share_one_rate_limit() -> None:
    queue = WorkQueue("q", backoff=Backoff(0.001, 0.001), retry_rate_per_second=10, retry_burst=2)
    delays = [queue.add_rate_limited(key) for key in ("a", "b", "c", "d")]
    assert delays[0] <= 0.001 and delays[1] <= 0.001  # the burst
    assert delays[2] == pytest.approx(0.1, abs=0.01)
    assert delays[3] == pytest.approx(0.2, abs=0.01)


async def test_a_cancelled_worker_releases_its_key_and_queues_it_again() -> None:
    """Leader election cancels the workers when the Lease is lost: the key must neither stay
    'processing' (it would never run again) nor be dropped."""
    queue = WorkQueue("q")
    entered = asyncio.Event()
    calls: list[str] = []

    async def block(key: str) -> None:
        calls.append(key)
        entered.set()
        await asyncio.Event().wait()

    queue.add("n1")
    worker = asyncio.create_task(run_worker(queue, block))
    await asyncio.wait_for(entered.wait(), 1)
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    assert queue.processing == frozenset()
    assert "n1" in queue
    entered.clear()
    again = asyncio.create_task(run_worker(queue, block))
    await asyncio.wait_for(entered.wait(), 1)
    again.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await again
    assert calls == ["n1", "n1"]


async def test_a_wake_up_is_not_lost_when_the_woken_worker_is_cancelled() -> None:
    queue = WorkQueue("q")
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.add("k")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: `second` must get the key
    assert await asyncio.wait_for(second, 1) == "k"
    with contextlib.suppress(asyncio.CancelledError):
        await first


async def test_not_retried_failures_are_forgotten() -> None:
    queue = WorkQueue("q")
    seen: list[tuple[str, float | None]] = []
    queue.add("bad")

    async def broken(key: str) -> None:
        raise ValueError("never fixable")

    def note(key: str, exc: Exception, delay: float | None) -> None:
        seen.append((key, delay))
        queue.shut_down()

    await asyncio.wait_for(run_worker(queue, broken, retry=lambda e: False, on_failure=note), 1)
    assert seen == [("bad", None)]
    assert queue.failures("bad") == 0
    assert "bad" not in queue


async def test_shutdown_stops_workers_and_drain_waits_for_the_one_working() -> None:
    queue = WorkQueue("q")
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(key: str) -> None:
        await release.wait()
        finished.append(key)

    workers = [asyncio.create_task(run_worker(queue, slow)) for _ in range(3)]
    queue.add("k")
    await asyncio.sleep(0.01)
    queue.shut_down()
    queue.add("ignored")
    drained = asyncio.create_task(queue.wait_drained())
    await asyncio.sleep(0.01)
    assert not drained.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(*workers, drained), 1)
    assert finished == ["k"]
    with pytest.raises(QueueShutDown):
        await queue.get()


async def test_metrics_depth_retries_and_durations() -> None:
    registry = CollectorRegistry()
    queue = WorkQueue("nodes", metrics=WorkQueueMetrics(registry, "fgo_test"))
    queue.add("a")
    queue.add_after("b", 10)

    def value(name: str) -> float:
        got = registry.get_sample_value(name, {"queue": "nodes"})
        return 0.0 if got is None else got

    assert value("fgo_test_workqueue_depth") == 2
    key = await queue.get()
    assert value("fgo_test_workqueue_depth") == 1  # "a" is being processed
    queue.add_rate_limited(key)
    queue.done(key)
    assert value("fgo_test_workqueue_retries_total") == 1
    assert value("fgo_test_workqueue_adds_total") == 3  # a, b, the retry of a
    assert value("fgo_test_workqueue_work_duration_seconds_count") == 1
    assert value("fgo_test_workqueue_queue_duration_seconds_count") == 1
    assert value("fgo_test_workqueue_depth") == 2
    queue.shut_down()
