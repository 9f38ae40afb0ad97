"""Work queue, watch bookkeeping, Knative parsing, Event naming, settings."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fgo_common.kube.watch import ADDED, DELETED, MODIFIED, WatchEvent
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_status_updater.caches import Caches
from fgo_status_updater.events import event_name
from fgo_status_updater.findings import Finding, ObjectRef
from fgo_status_updater.knative import (
    KnativePod,
    KnativePoller,
    PrometheusError,
    parse_instant_value,
    rate_to_percent,
    request_rate_query,
)
from fgo_status_updater.metrics import Metrics
from fgo_status_updater.settings import Settings
from fgo_status_updater.workqueue import NodeQueue
from prometheus_client import CollectorRegistry
from su_helpers import claim, node, pod


async def test_queue_debounces_and_never_runs_a_node_twice_at_once() -> None:
    queue = NodeQueue(0.05)
    queue.mark("a")
    queue.mark("a")
    queue.mark("b")
    started = time.monotonic()
    first = await queue.get()
    assert time.monotonic() - started >= 0.04  # waited for the debounce
    second = await queue.get()
    assert {first, second} == {"a", "b"}
    queue.mark("a")  # marked while busy: runs again after done(), not concurrently
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
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "2.5"]}]},
    }
    assert parse_instant_value(ok) == 2.5
    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    assert parse_instant_value(empty) == 0.0
    for bad in (
        {"status": "error"},
        {"status": "success", "data": {"result": [{"value": []}]}},
        "x",
    ):
        with pytest.raises(PrometheusError):
            parse_instant_value(bad)
    assert rate_to_percent(5, 10) == 50
    assert rate_to_percent(50, 10) == 100
    assert rate_to_percent(float("nan"), 10) == 0
    assert request_rate_query("ns", 'p"x') == (
        'sum(rate(revision_app_request_count{namespace="ns",pod="p\\"x"}[1m]))'
    )


async def test_poller_keeps_last_value_and_reports_each_outage_once() -> None:
    up = True

    def answer(request: httpx.Request) -> httpx.Response:
        if not up:
            raise httpx.ConnectError("refused")
        assert "kube_pod_info" not in request.url.params["query"]
        body = {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"value": [0, "3"]}]},
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
    pods = [KnativePod("uid-1", "ns", "p", "n1")]
    await poller.poll(pods)
    assert poller.values == {"uid-1": 30} and changed == ["uid-1"]
    up = False
    await poller.poll(pods)
    await poller.poll(pods)
    assert poller.values == {"uid-1": 30} and len(outages) == 1
    up = True
    await poller.poll(pods)
    up = False
    await poller.poll(pods)
    assert len(outages) == 2
    await poller.poll([])  # the pod is gone: its value is dropped
    assert poller.values == {}


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
