"""The DRA publishers' start-up gate: tasks wait for the served resource.k8s.io version while the
health server already answers; transient errors are retried for as long as it takes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from fgo_common import dragate
from fgo_common.dragate import READINESS, DraVersionGate
from fgo_common.kube.served import SliceApi
from fgo_common.runtime.runner import ServiceContext
from kubernetes_asyncio import client


class Discovery:
    """Stands in for API discovery: fails ``failures`` times, then answers ``version``."""

    def __init__(self, failures: int, version: str | None) -> None:
        self.failures = failures
        self.version = version
        self.calls = 0

    async def __call__(self, api: Any) -> str | None:
        self.calls += 1
        if self.calls <= self.failures:
            raise aiohttp.ClientConnectionError("connection refused")
        return self.version


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(self: ServiceContext, seconds: float) -> bool:
        await asyncio.sleep(0)
        return self.stop.is_set()

    monkeypatch.setattr(ServiceContext, "sleep", no_sleep)


async def run_gated(gate: DraVersionGate, ctx: ServiceContext) -> list[str]:
    ran: list[str] = []

    def task(name: str) -> Any:
        async def run(c: ServiceContext) -> None:
            ran.append(name)

        return run

    tasks = gate.wrap({"a": task("a"), "b": task("b")})
    await asyncio.gather(*(factory(ctx) for factory in tasks.values()))
    return sorted(ran)


@pytest.mark.usefixtures("fast_backoff")
async def test_tasks_start_once_discovery_answers_after_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    discovery = Discovery(failures=25, version="v1beta2")
    monkeypatch.setattr(dragate, "dra_version_of", discovery)
    ctx = ServiceContext(name="t")
    async with client.ApiClient() as api:
        slices = SliceApi(api)
        gate = DraVersionGate(api, slices, ctx)
        assert not ctx.readiness.ready  # /readyz 503 until the version is known
        assert await run_gated(gate, ctx) == ["a", "b"]
    assert discovery.calls == 26  # asked once for both tasks after the outage
    assert slices.version == "v1beta2"
    assert ctx.readiness.describe()[READINESS] is True
    assert not gate.not_served and not ctx.stop.is_set()


@pytest.mark.usefixtures("fast_backoff")
async def test_no_written_version_served_stops_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dragate, "dra_version_of", Discovery(failures=0, version=None))
    ctx = ServiceContext(name="t")
    async with client.ApiClient() as api:
        gate = DraVersionGate(api, SliceApi(api), ctx)
        assert await run_gated(gate, ctx) == []
    assert gate.not_served and ctx.stop.is_set()


async def test_stop_during_the_outage_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dragate, "dra_version_of", Discovery(failures=10**6, version="v1"))
    ctx = ServiceContext(name="t")
    async with client.ApiClient() as api:
        gate = DraVersionGate(api, SliceApi(api), ctx)
        asyncio.get_running_loop().call_later(0.2, ctx.stop.set)
        assert await run_gated(gate, ctx) == []
    assert not gate.not_served


async def test_other_errors_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(api: Any) -> str | None:
        raise ValueError("bad discovery document")

    monkeypatch.setattr(dragate, "dra_version_of", broken)
    ctx = ServiceContext(name="t")
    async with client.ApiClient() as api:
        gate = DraVersionGate(api, SliceApi(api), ctx)
        with pytest.raises(ValueError, match="bad discovery"):
            await run_gated(gate, ctx)
