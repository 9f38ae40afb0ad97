"""Pure logic of the Lease elector: timings that cannot fence, the fence itself, the Lease
record a takeover writes, and /readyz?verbose naming a standby. The election against a real
apiserver is tests/integration/test_leader_election.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fgo_common.kube.leader import LeaderElector, LeaseConfig, LeaseSettingsError, micro_time
from fgo_common.runtime.health import Readiness, build_health_app
from prometheus_client import CollectorRegistry


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def elector(clock: FakeClock, readiness: Readiness | None = None) -> LeaderElector:
    """No request is sent in these tests: the client is never used (nor opened)."""
    config = LeaseConfig("ns", "lease", "me", 15.0, 10.0, 2.0)
    return LeaderElector(
        object(),  # type: ignore[arg-type]
        config,
        registry=CollectorRegistry(),
        readiness=readiness,
        clock=clock,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lease_duration_s": 10, "renew_deadline_s": 10}, "lease duration"),
        ({"renew_deadline_s": 2, "retry_period_s": 2}, "retry period"),
        ({"retry_period_s": 0}, "retry period must be > 0"),
        ({"identity": ""}, "identity"),
    ],
)
def test_timings_that_cannot_fence_are_refused(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"namespace": "ns", "name": "l", "identity": "me"} | kwargs
    with pytest.raises(LeaseSettingsError, match=message):
        LeaseConfig(**fields).validate()  # type: ignore[arg-type]


def test_micro_time_is_what_the_apiserver_writes() -> None:
    moment = datetime(2026, 12, 7, 22, 1, 2, 345678, tzinfo=UTC)
    assert micro_time(moment) == "2026-12-07T22:01:02.345678Z"


async def test_the_fence_closes_at_the_renew_deadline_even_without_a_round() -> None:
    clock = FakeClock()
    e = elector(clock)
    assert not e.may_write()
    e._renewed_at = clock.now
    e._set_leading(True, "test")
    clock.now += 9.9
    assert e.may_write()
    clock.now += 0.2  # no renewal ran: the fence closes on its own
    assert not e.may_write()


async def test_takeover_counts_a_transition_and_renewal_keeps_acquire_time() -> None:
    e = elector(FakeClock())
    now = datetime(2026, 12, 7, tzinfo=UTC)
    taken = e._spec({"holderIdentity": "other", "leaseTransitions": 4, "acquireTime": "old"}, now)
    assert taken["holderIdentity"] == "me"
    assert taken["leaseTransitions"] == 5
    assert taken["acquireTime"] == taken["renewTime"] == micro_time(now)
    assert taken["leaseDurationSeconds"] == 15
    renewed = e._spec(taken | {"acquireTime": "kept"}, now)
    assert renewed["leaseTransitions"] == 5
    assert renewed["acquireTime"] == "kept"
    free = e._spec({"holderIdentity": None, "leaseTransitions": 5}, now)
    assert free["leaseTransitions"] == 5  # a released Lease: no one was displaced


async def test_readyz_verbose_names_a_standby_and_stays_ready() -> None:
    readiness = Readiness()
    readiness.require("synced")
    readiness.set("synced")
    e = elector(FakeClock(), readiness)
    app = build_health_app(readiness, CollectorRegistry())
    async with TestClient(TestServer(app)) as http:
        resp = await http.get("/readyz?verbose")
        assert resp.status == 200
        assert await resp.text() == "[+]synced ok\nleader=false\nreadyz check passed\n"
        e._renewed_at = e._clock()
        e._set_leading(True, "test")
        assert "leader=true" in await (await http.get("/readyz?verbose")).text()
        assert await (await http.get("/readyz")).text() == "ok\n"


async def test_a_slow_read_never_brings_a_takeover_forward() -> None:
    """The holder's record is dated when our read *returned*: a read that took 5 s must not
    let us take over 5 s early (the old leader's fence may still be open)."""
    clock = FakeClock()
    e = elector(clock)
    lease = {"metadata": {"resourceVersion": "7"}, "spec": {"holderIdentity": "other",
             "renewTime": "t1", "leaseDurationSeconds": 15, "leaseTransitions": 1}}  # fmt: skip
    written: list[dict[str, object]] = []

    reads = 0

    async def read() -> dict[str, object]:
        nonlocal reads
        reads += 1
        if reads == 1:
            clock.now += 5.0  # only the first read is slow
        return lease

    async def write(_: object, spec: dict[str, object]) -> bool:
        written.append(spec)
        return True

    e._read = read  # type: ignore[method-assign]
    e._write = write  # type: ignore[method-assign]
    assert not await e.try_acquire_or_renew()  # started at 100, saw the record at 105
    clock.now = 119.9  # 15 s after the round started, 14.9 s after we saw the record
    assert not await e.try_acquire_or_renew()
    assert written == []
    clock.now = 120.1
    assert await e.try_acquire_or_renew()
    assert written[0]["holderIdentity"] == "me"
    assert written[0]["leaseTransitions"] == 2
