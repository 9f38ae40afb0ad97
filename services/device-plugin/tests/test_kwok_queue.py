"""The KWOK capacity controller's queue: one worker per node, failed patches retried."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from fgo_common.kube.watch import MODIFIED, WatchEvent
from fgo_device_plugin.kwok import KwokCapacityController, _Record
from fgo_device_plugin.metrics import Metrics
from kubernetes_asyncio.client import ApiClient


def kwok_node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "status": {"capacity": {}, "allocatable": {}},
    }


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_node_queued_again_before_the_caches_sync_is_not_reconciled_twice_at_once() -> None:
    """Regression: a worker used to take a node off the queue and then park on ``synced``
    without marking it busy, so an event meanwhile queued it again for a second worker, and
    both reconciled (and patched) the same node at once when the caches synced."""
    async with ApiClient() as api:
        ctl = KwokCapacityController(
            api=api, namespace="ns", prefix="topology", metrics=Metrics(), workers=2
        )
        ctl.records["n1"] = _Record(kwok=True, wanted={"nvidia.com/gpu": (8, 8)})
        active = peak = calls = 0

        async def reconcile(name: str) -> None:
            nonlocal active, peak, calls
            calls += 1
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.05)  # a patch in flight
            active -= 1

        ctl.reconcile = reconcile  # type: ignore[method-assign]
        workers = ctl._start_workers()
        try:
            ctl.on_node(WatchEvent(MODIFIED, kwok_node("n1")))
            await _settle()  # a worker has the node, waiting for the caches
            ctl.on_node(WatchEvent(MODIFIED, kwok_node("n1")))
            await _settle()
            ctl.synced.set()
            await asyncio.sleep(0.3)
        finally:
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert calls >= 1
        assert peak == 1


async def test_a_failed_patch_is_retried_with_back_off_not_left_for_the_next_heartbeat() -> None:
    attempts: list[float] = []

    class FlakyApi:  # stands in for CoreV1Api's write call: two failures, then the write lands
        async def patch_node_status(self, name: str, body: Any, **_: Any) -> Any:
            attempts.append(asyncio.get_running_loop().time())
            if len(attempts) <= 2:
                raise ValueError("apiserver said no")  # not transient: no in-call retry
            raise _Landed

    class _Landed(Exception):
        pass

    async with ApiClient() as api:
        ctl = KwokCapacityController(
            api=api, namespace="ns", prefix="topology", metrics=Metrics(), workers=2
        )
        ctl._core = FlakyApi()  # type: ignore[assignment]
        ctl.records["n1"] = _Record(kwok=True, wanted={"nvidia.com/gpu": (8, 8)})
        ctl._nodes.cache["n1"] = kwok_node("n1")
        ctl.synced.set()
        workers = ctl._start_workers()
        try:
            ctl.on_node(WatchEvent(MODIFIED, kwok_node("n1")))
            async with asyncio.timeout(10):
                while len(attempts) < 3:
                    await asyncio.sleep(0.02)
        finally:
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.1  # backed off, and no event was needed to try again
        assert gaps[1] >= gaps[0] * 0.9  # roughly doubling, with jitter


async def test_the_periodic_resync_requeues_every_node_and_can_be_turned_off() -> None:
    async with ApiClient() as api:
        ctl = KwokCapacityController(
            api=api, namespace="ns", prefix="topology", metrics=Metrics(), resync_seconds=0.05
        )
        ctl.records["n1"] = _Record(kwok=True, wanted={"nvidia.com/gpu": (8, 8)})
        ctl._nodes.cache["n1"] = kwok_node("n1")
        seen: list[str] = []

        async def reconcile(name: str) -> None:
            seen.append(name)

        ctl.reconcile = reconcile  # type: ignore[method-assign]
        ctl.synced.set()
        tasks = ctl._start_workers()
        try:
            async with asyncio.timeout(5):
                while len(seen) < 2:  # no event at all: the resync queued it, twice
                    await asyncio.sleep(0.01)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert set(seen) == {"n1"}
        ctl.resync_seconds = 0
        off = ctl._start_workers()
        assert len(off) == ctl.workers  # no resync task (one that ended would stop the service)
        for task in off:
            task.cancel()
        await asyncio.gather(*off, return_exceptions=True)
