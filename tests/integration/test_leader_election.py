"""Leader election (fgo_common.kube.leader) against the real apiserver.

Two or three candidates for one Lease, each with its own client through its own TCP proxy, so a
test can cut one off as a crash or a partition would. What must hold: one leader at a time, and
an old leader's write fence closes before any other candidate starts leading (sampled every
10 ms over the whole test); a crashed leader is replaced after the lease duration; a released
Lease is taken within about one retry period; a partitioned leader steps down and, healed, does
not write again while another holds the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fgo_common.kube.leader import LeaderElector, LeaseConfig
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodes import api_client
from fgo_localcluster.tcpproxy import TcpProxy, proxied_kubeconfig
from fgo_localcluster.testing import create_namespace, delete_namespace, unique_name

pytestmark = pytest.mark.integration

LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.3


@dataclass
class Candidate:
    name: str
    proxy: TcpProxy
    elector: LeaderElector
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self.stop), name=self.name)

    async def crash(self) -> None:
        """As kill -9: no release reaches the apiserver."""
        self.proxy.partition(3600)
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


@dataclass
class Referee:
    """Samples every candidate's fence and leading flag; remembers every overlap."""

    candidates: list[Candidate]
    overlaps: list[str] = field(default_factory=list)
    history: list[tuple[float, str]] = field(default_factory=list)  # (t, who leads)

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            writers = [c.name for c in self.candidates if c.elector.may_write()]
            if len(writers) > 1:
                self.overlaps.append(f"{time.monotonic():.2f}: {writers}")
            leader = ",".join(c.name for c in self.candidates if c.elector.leading.is_set())
            if not self.history or self.history[-1][1] != leader:
                self.history.append((time.monotonic(), leader))
            await asyncio.sleep(0.01)

    def first_time(self, who: str, after: float) -> float:
        return next(t for t, leader in self.history if leader == who and t >= after)


@pytest.fixture
async def lease_world(
    local_cluster: LocalCluster, tmp_path: Path
) -> AsyncIterator[tuple[list[Candidate], Referee]]:
    namespace = unique_name("lease")
    async with api_client(local_cluster.kubeconfig) as admin:
        await create_namespace(admin, namespace)
        async with contextlib.AsyncExitStack() as stack:
            candidates = []
            for name in ("a", "b", "c"):
                proxy = TcpProxy("127.0.0.1", local_cluster.ports.apiserver)
                await proxy.start()
                stack.push_async_callback(proxy.stop)
                config = proxied_kubeconfig(
                    local_cluster.kubeconfig, tmp_path / f"{name}.yaml", proxy.port
                )
                api = await stack.enter_async_context(api_client(config))
                elector = LeaderElector(
                    api,
                    LeaseConfig(
                        namespace, "fgo-test", f"replica-{name}", LEASE_S, RENEW_S, RETRY_S
                    ),
                )
                candidates.append(Candidate(name, proxy, elector))
            referee = Referee(candidates)
            done = asyncio.Event()
            watcher = asyncio.create_task(referee.watch(done))
            try:
                yield candidates, referee
            finally:
                for candidate in candidates:
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(candidate.shutdown(), 10)
                done.set()
                await watcher
        await delete_namespace(admin, namespace)


async def _leader(candidates: list[Candidate], timeout_s: float = 30.0) -> Candidate:
    async with asyncio.timeout(timeout_s):
        while True:
            leading = [c for c in candidates if c.elector.leading.is_set()]
            if len(leading) == 1:
                return leading[0]
            await asyncio.sleep(0.05)


async def test_crashed_leader_is_replaced_after_the_lease_duration(
    lease_world: tuple[list[Candidate], Referee],
) -> None:
    candidates, referee = lease_world
    for c in candidates:
        c.start()
    first = await _leader(candidates)
    await asyncio.sleep(4 * RETRY_S)  # a few renewals; the others stay standbys
    assert [c.name for c in candidates if c.elector.leading.is_set()] == [first.name]
    assert first.elector.renewals >= 3

    crashed_at = time.monotonic()
    await first.crash()
    rest = [c for c in candidates if c is not first]
    second = await _leader(rest, timeout_s=LEASE_S + 10)
    took = referee.first_time(second.name, crashed_at) - crashed_at
    print(f"failover after a crash: {took:.2f} s (lease {LEASE_S:g} s)")
    # Not before the Lease could have expired: the standby waited it out on its own clock.
    assert took >= LEASE_S - RENEW_S
    assert referee.overlaps == []
    assert not first.elector.leading.is_set()


async def test_released_lease_is_taken_within_a_retry_period(
    lease_world: tuple[list[Candidate], Referee],
) -> None:
    candidates, referee = lease_world
    a, b, _ = candidates
    a.start()
    await _leader([a])
    b.start()
    await asyncio.sleep(3 * RETRY_S)
    assert not b.elector.leading.is_set()
    released_at = time.monotonic()
    await a.shutdown()  # graceful: releases the Lease
    await _leader([b], timeout_s=LEASE_S + 10)
    took = referee.first_time(b.name, released_at) - released_at
    print(f"failover after a release: {took:.2f} s")
    assert took < LEASE_S, "the standby waited the lease out: the release did not reach it"
    assert referee.overlaps == []


async def test_partitioned_leader_steps_down_and_stays_down(
    lease_world: tuple[list[Candidate], Referee],
) -> None:
    candidates, referee = lease_world
    a, b, _ = candidates
    ran: list[str] = []

    async def work(lost: asyncio.Event) -> None:
        ran.append("started")
        try:
            await lost.wait()
        finally:
            ran.append("stopped")

    a.start()
    await _leader([a])
    b.task = asyncio.create_task(b.elector.lead(b.stop, work))  # B: election + leader-only work
    await asyncio.sleep(3 * RETRY_S)
    assert ran == [], "leader-only work ran on the standby"
    cut_at = time.monotonic()
    a.proxy.partition(LEASE_S * 3)
    await _leader([b], timeout_s=LEASE_S + 10)
    stepped_down = next(t for t, leader in referee.history if t >= cut_at and "a" not in leader)
    print(f"partitioned leader's fence closed after {stepped_down - cut_at:.2f} s")
    assert stepped_down - cut_at <= RENEW_S + 1.5
    assert referee.overlaps == []
    async with asyncio.timeout(5):
        while ran != ["started"]:
            await asyncio.sleep(0.05)

    writes_before_heal = a.elector.renewals
    a.proxy.heal()
    await asyncio.sleep(LEASE_S + 2 * RETRY_S)  # A reads the Lease again and stays a standby
    assert a.elector.renewals == writes_before_heal, "the healed old leader wrote again"
    assert a.elector.holder == "replica-b"
    assert not a.elector.leading.is_set()
    assert referee.overlaps == []

    await b.shutdown()
    assert ran == ["started", "stopped"]
