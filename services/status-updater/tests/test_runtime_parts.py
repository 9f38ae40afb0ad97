"""Work queue, watch bookkeeping, Knative parsing, Event naming, settings."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import pytest
from fgo_common.kube.watch import ADDED, DELETED, MODIFIED, WatchEvent
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_common.runtime.workqueue import WorkQueue
from fgo_status_updater.caches import Caches
from fgo_status_updater.events import event_name
from fgo_status_updater.findings import Finding, ObjectRef
from fgo_status_updater.knative import (
    QUERY,
    KnativePod,
    KnativePoller,
    PrometheusError,
    parse_rates,
    rate_to_percent,
)
from fgo_status_updater.metrics import Metrics
from fgo_status_updater.settings import Settings
from prometheus_client import CollectorRegistry
from su_helpers import claim, node, pod


async def test_queue_debounces_and_never_runs_a_node_twice_at_once() -> None:
    queue = WorkQueue("nodes")
    queue.add_after("a", 0.05)  # the controller's mark: add after DEBOUNCE_SECONDS
    queue.add_after("a", 0.05)
    queue.add_after("b", 0.05)
    started = time.monotonic()
    first = await queue.get()
    assert time.monotonic() - started >= 0.04  # waited for the debounce
    second = await queue.get()
    assert {first, second} == {"a", "b"}
    queue.add_after("a", 0.05)  # marked while busy: runs again after done(), not concurrently
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.1)
    queue.done("a")
    assert await asyncio.wait_for(queue.get(), 1) == "a"
    queue.done("a")
    queue.done("b")
    assert len(queue) == 0


def test_caches_ignore_noise_and_index_claims() -> None:
    caches = Caches("runai-reservation", "topology-")
    assert caches.on_node(WatchEvent(ADDED, node("n1"))) == {"n1"}
    heartbeat = node("n1")
    heartbeat["status"] = {"conditions": [{"type": "Ready"}]}
    assert caches.on_node(WatchEvent(MODIFIED, heartbeat)) == set()  # status noise
    assert caches.on_pod(WatchEvent(ADDED, pod("plain", node_name="n1"))) == set()  # not GPU
    gpu = pod("g", node_name="n1", gpus=1)
    assert caches.on_pod(WatchEvent(ADDED, gpu)) == {"n1"}
    gpu["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert caches.on_pod(WatchEvent(MODIFIED, gpu)) == set()
    gpu["status"]["phase"] = "Succeeded"
    assert caches.on_pod(WatchEvent(MODIFIED, gpu)) == {"n1"}
    user = pod("u", node_name="n1", claims=[("gpu", "c1")])
    caches.on_pod(WatchEvent(ADDED, user))
    assert caches.on_claim(WatchEvent(ADDED, claim("c1", ["gpu-0"], pool="n1"))) == {"n1"}
    assert caches.on_claim(WatchEvent(MODIFIED, claim("c1", ["gpu-0"], pool="n1"))) == set()
    assert caches.on_pod(WatchEvent(DELETED, user)) == {"n1"}
    assert caches.claim_users == {}
    assert [p["metadata"]["name"] for p in caches.pods_on("n1")] == ["g"]


def test_caches_skip_our_own_record_writes() -> None:
    caches = Caches("runai-reservation", "topology-")
    cm = {
        "metadata": {"name": "topology-n1", "resourceVersion": "10", "labels": {"node-name": "n1"}}
    }
    caches.store_record("n1", cm)
    assert caches.on_record(WatchEvent(MODIFIED, cm)) == set()
    newer = {"metadata": {**cm["metadata"], "resourceVersion": "11"}}
    assert caches.on_record(WatchEvent(MODIFIED, newer)) == {"n1"}
    other = {"metadata": {"name": "unrelated", "resourceVersion": "12"}}
    assert caches.on_record(WatchEvent(ADDED, other)) == set()


def test_prometheus_answers() -> None:
    ok = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"namespace": "ns", "pod": "a"}, "value": [1, "2.5"]},
                {"metric": {"namespace": "other", "pod": "a"}, "value": [1, "NaN"]},
                {"metric": {}, "value": [1, "1"]},
            ],
        },
    }
    rates = parse_rates(ok)
    assert rates[("ns", "a")] == 2.5 and rates[("", "")] == 1.0
    assert math.isnan(rates[("other", "a")])
    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    assert parse_rates(empty) == {}
    for bad in (
        {"status": "error"},
        {"status": "success", "data": {"result": []}},
        {"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "2"]}]}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
        {"status": "success", "data": {"resultType": "vector", "result": ["x"]}},
        "x",
    ):
        with pytest.raises(PrometheusError):
            parse_rates(bad)
    assert rate_to_percent(5, 10) == 50
    assert rate_to_percent(50, 10) == 100
    assert rate_to_percent(float("nan"), 10) == 0
    assert QUERY == "sum by (namespace, pod) (rate(revision_app_request_count[1m]))"


async def test_poller_keeps_last_value_and_reports_each_outage_once() -> None:
    up = True
    queries: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if not up:
            raise httpx.ConnectError("refused")
        queries.append(request.url.params["query"])
        body = {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    {"metric": {"namespace": "ns", "pod": "p"}, "value": [0, "3"]},
                    {"metric": {"namespace": "ns", "pod": "q"}, "value": [0, "7.4"]},
                    {"metric": {"namespace": "elsewhere", "pod": "r"}, "value": [0, "9"]},
                ],
            },
        }
        return httpx.Response(200, json=body)

    changed: list[str] = []
    outages: list[str] = []
    poller = KnativePoller(
        "http://prom",
        full_load_rps=10,
        timeout_seconds=1,
        metrics=Metrics(CollectorRegistry()),
        on_change=lambda p: changed.append(p.uid),
        on_outage=outages.append,
        transport=httpx.MockTransport(answer),
    )
    pods = [
        KnativePod("uid-1", "ns", "p", "n1"),
        KnativePod("uid-2", "ns", "q", "n1"),
        KnativePod("uid-3", "ns", "r", "n2"),  # no series: 0
    ]
    await poller.poll(pods)
    assert queries == [QUERY]  # one query for every pod
    assert poller.values == {"uid-1": 30, "uid-2": 74, "uid-3": 0}
    assert changed == ["uid-1", "uid-2", "uid-3"]
    client = poller._http
    await poller.poll(pods)
    assert poller._http is client and len(queries) == 2  # the same client, poll after poll
    assert changed == ["uid-1", "uid-2", "uid-3"]  # nothing changed
    up = False
    await poller.poll(pods)
    await poller.poll(pods)
    assert poller.values == {"uid-1": 30, "uid-2": 74, "uid-3": 0} and len(outages) == 1
    up = True
    await poller.poll(pods)
    up = False
    await poller.poll(pods)
    assert len(outages) == 2
    await poller.poll([])  # the pods are gone: their values are dropped, nothing is asked
    assert poller.values == {}
    await poller.aclose()
    assert poller._http is None


async def test_poller_query_has_a_deadline() -> None:
    class SlowTransport(httpx.AsyncBaseTransport):
        """Answers after 5 s; httpx applies no timeouts here, only the poll's deadline does."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(5)
            return httpx.Response(200)

    outages: list[str] = []
    poller = KnativePoller(
        "http://prom",
        full_load_rps=10,
        timeout_seconds=0.2,
        metrics=Metrics(CollectorRegistry()),
        on_change=lambda p: None,
        on_outage=outages.append,
        transport=SlowTransport(),
    )
    started = time.monotonic()
    await poller.poll([KnativePod("uid-1", "ns", "p", "n1")])
    assert time.monotonic() - started < 2
    assert outages == ["no answer within 0.2 s"] and poller.down
    await poller.aclose()


def test_event_names_are_stable_and_distinct() -> None:
    ref = ObjectRef("Pod", "p", "ns", "uid-1")
    a = Finding(ref, "InvalidUtilizationAnnotation", "bad 'abc'")
    assert event_name(a) == event_name(Finding(ref, a.reason, a.message))
    assert event_name(a) != event_name(Finding(ref, a.reason, "bad '101'"))
    assert event_name(a).startswith("p.fgo.")


def test_settings() -> None:
    s = load_settings(Settings, {"POD_NAMESPACE": "fgo"})
    assert s.namespace == "fgo"
    assert load_settings(Settings, {}).namespace == "gpu-operator"
    assert (
        load_settings(Settings, {"TOPOLOGY_CM_NAMESPACE": "x", "POD_NAMESPACE": "y"}).namespace
        == "x"
    )
    assert (
        load_settings(Settings, {"DEFAULT_GPU_UTILIZATION": "10-20"}).default_utilization.max == 20
    )
    for env in ({"DEFAULT_GPU_UTILIZATION": "90-10"}, {"WORKERS": "0"}, {"DEBOUNCE_SECONDS": "-1"}):
        with pytest.raises(SettingsError):
            load_settings(Settings, env)


def test_reconciled_record_round_trips_through_the_shared_codec() -> None:
    import yaml
    from fgo_common.topology import NodeTopology
    from fgo_status_updater.reconcile import NodeInputs, reconcile_node
    from su_helpers import config

    record = reconcile_node(
        NodeInputs("n1", node("n1"), config(), None, [pod("p", node_name="n1", gpus=2)], now=1.0)
    ).record
    assert record is not None
    text = record.to_yaml()
    pure = yaml.dump(
        record.to_dict(), Dumper=yaml.SafeDumper, sort_keys=False, default_flow_style=False
    )
    assert text == pure  # the libyaml writer's document is the pure-Python one's
    assert NodeTopology.from_yaml(text, "n1") == record
    with pytest.raises(ValueError, match="not valid YAML"):
        NodeTopology.from_yaml("gpus: [", "n1")


async def test_a_worker_cancelled_mid_reconcile_leaves_the_node_queued() -> None:
    """Leader election cancels the workers when the Lease is lost: the node being reconciled
    must not stay busy (it would never be reconciled again) and must be redone."""
    from fgo_common.runtime.runner import ServiceContext
    from fgo_status_updater.controller import Controller
    from kubernetes_asyncio import client

    settings = load_settings(Settings, {"DEBOUNCE_SECONDS": "0"})
    ctx = ServiceContext(name="status-updater")
    async with client.ApiClient() as api:  # never called: reconcile is replaced below
        controller = Controller(api, settings, ctx)
        entered = asyncio.Event()
        calls: list[str] = []

        async def blocking(name: str) -> str:
            calls.append(name)
            entered.set()
            await asyncio.Event().wait()
            return "written"

        controller.reconcile = blocking  # type: ignore[method-assign]
        controller.synced.set()
        controller._mark("n1")
        worker = asyncio.create_task(controller._worker(ctx))
        await asyncio.wait_for(entered.wait(), 5)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

        entered.clear()
        again = asyncio.create_task(controller._worker(ctx))
        await asyncio.wait_for(entered.wait(), 5)
        ctx.stop.set()
        await asyncio.wait_for(again, 5)
        assert calls == ["n1", "n1"]
