"""Knative inference utilisation through a real Prometheus (Debian package ``prometheus``).

A tiny HTTP target exposes ``revision_app_request_count{namespace, pod}`` growing at a rate the
test sets; Prometheus scrapes it every second; the status-updater turns
``sum(rate(...[1m]))`` into the pod's utilisation. Prometheus starts down, comes up, goes down
and comes up again: the value starts at 0, follows the rate, is kept while Prometheus is away,
and each outage is reported by exactly one Event. With many inference pods, each poll is one
query on one kept-alive connection (counted by Prometheus itself).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from fgo_common.topology import NodeTopology
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.knative import KnativeRequestCounters
from fgo_localcluster.testing import KwokNodeFactory, eventually
from fgo_testkit.status_updater import StatusUpdaterProcess, free_port, read_record
from kubernetes_asyncio import client
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

FULL_LOAD_RPS = 10.0


class Prometheus:
    def __init__(self, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "knative",
                            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                        }
                    ],
                }
            )
        )
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed (make host-deps)"
        log = (self.workdir / "prometheus.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        log.close()

        async def ready() -> bool | None:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(self.url + "/-/ready")).status_code == 200 or None

        await eventually(ready, timeout_s=60, what="Prometheus ready")

    async def own_counters(self) -> tuple[float, float]:
        """(instant queries answered, HTTP connections accepted) from Prometheus's own
        /metrics; reading them costs one connection, no query."""
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(self.url + "/metrics")).text
        queries = connections = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "prometheus_http_requests_total"
                    and sample.labels.get("handler") == "/api/v1/query"
                ):
                    queries += sample.value
                elif (
                    sample.name == "net_conntrack_listener_conn_accepted_total"
                    and sample.labels.get("listener_name") == "http"
                ):
                    connections += sample.value
        return queries, connections

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest_asyncio.fixture
async def counter(namespace: str) -> AsyncIterator[KnativeRequestCounters]:
    target = KnativeRequestCounters(namespace, {"inference": 0.0})
    await target.start()
    yield target
    await target.stop()


@pytest_asyncio.fixture
async def prometheus(tmp_path: Path, counter: KnativeRequestCounters) -> AsyncIterator[Prometheus]:
    server = Prometheus(tmp_path, counter.port)
    yield server
    await server.stop()


async def test_knative_utilisation_survives_prometheus_outages(
    kube: client.ApiClient,
    local_cluster: LocalCluster,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
    counter: KnativeRequestCounters,
    prometheus: Prometheus,
) -> None:
    core: Any = client.CoreV1Api(kube)
    pool_key = f"fgo.test/pool-{namespace[-6:]}"
    config = {"nodePoolLabelKey": pool_key, "nodePools": {"p": {"gpus": [{"type": "L4"}]}}}
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
    )
    updater = StatusUpdaterProcess(
        local_cluster.kubeconfig,
        tmp_path / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=namespace,
        PROMETHEUS_URL=prometheus.url,  # not started yet
        KNATIVE_POLL_INTERVAL_SECONDS="1",
        PROMETHEUS_TIMEOUT_SECONDS="2",
        KNATIVE_FULL_UTILIZATION_REQUESTS_PER_SECOND=str(FULL_LOAD_RPS),
        DEBOUNCE_SECONDS="0.1",
    )
    await updater.start()
    try:
        (node,) = await kwok_nodes(
            1, labels={pool_key: "p"}, extra_capacity={"nvidia.com/gpu": "1"}
        )
        await core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "inference", "labels": {"workloadKind": "InferenceWorkload"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "server",
                            "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        )
        counter.set_rate(5.0)  # 5 req/s of 10 at full load: 50 %

        async def usage() -> tuple[bool, int] | None:
            rec: NodeTopology | None = await read_record(kube, namespace, node)
            if rec is None or not rec.gpus[0].status.usage:
                return None
            (entry,) = rec.gpus[0].status.usage.values()
            assert entry.utilization.min == entry.utilization.max
            return entry.use_knative, entry.utilization.max

        async def outages() -> int:
            found = await core.list_namespaced_event(
                namespace, field_selector="reason=PrometheusUnavailable"
            )
            return len(found.items)

        async def value_in(low: int, high: int, what: str, timeout_s: float = 90) -> int:
            async def probe() -> int | None:
                got = await usage()
                return got[1] if got and got[0] and low <= got[1] <= high else None

            try:
                return await eventually(probe, timeout_s=timeout_s, what=what)
            except AssertionError:
                raise AssertionError(
                    f"{what}; last {await usage()}\n{updater.log_tail()}"
                ) from None

        # Prometheus down from the start: the pod shows 0 and one Event says why.
        await value_in(0, 0, "Knative pod at 0 while Prometheus is down")
        await eventually(lambda: _at_least(outages(), 1), timeout_s=30, what="outage Event")

        await prometheus.start()
        await value_in(45, 55, "utilisation follows 5 req/s once Prometheus is up")

        # Down again: the last value stays, one more Event (not one per poll).
        await prometheus.stop()
        await eventually(lambda: _at_least(outages(), 2), timeout_s=30, what="second outage Event")
        await asyncio.sleep(4)  # several polls fail meanwhile
        kept = await usage()
        assert kept is not None and kept[0] and 45 <= kept[1] <= 55
        assert await outages() == 2

        # Up again with twice the traffic: the value moves on.
        counter.set_rate(10.0)
        await prometheus.start()
        await value_in(60, 100, "utilisation rises with the new request rate")
        assert updater.proc is not None and updater.proc.returncode is None
    finally:
        await updater.stop()


async def _at_least(count: Any, wanted: int) -> bool | None:
    return True if await count >= wanted else None


async def test_one_query_per_poll_for_many_pods(
    kube: client.ApiClient,
    local_cluster: LocalCluster,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> None:
    pods = 8
    # 1..8 req/s of 10 at full load: 10 %, 20 %, ... 80 %.
    target = KnativeRequestCounters(
        namespace, {f"inference-{i}": float(i + 1) for i in range(pods)}
    )
    await target.start()
    prometheus = Prometheus(tmp_path, target.port)
    core: Any = client.CoreV1Api(kube)
    pool_key = f"fgo.test/pool-{namespace[-6:]}"
    config = {
        "nodePoolLabelKey": pool_key,
        "nodePools": {"p": {"gpus": [{"type": "L4", "count": pods}]}},
    }
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
    )
    updater = StatusUpdaterProcess(
        local_cluster.kubeconfig,
        tmp_path / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=namespace,
        PROMETHEUS_URL=prometheus.url,
        KNATIVE_POLL_INTERVAL_SECONDS="1",
        PROMETHEUS_TIMEOUT_SECONDS="2",
        KNATIVE_FULL_UTILIZATION_REQUESTS_PER_SECOND=str(FULL_LOAD_RPS),
        DEBOUNCE_SECONDS="0.1",
    )
    try:
        await prometheus.start()
        await updater.start()
        (node,) = await kwok_nodes(
            1, labels={pool_key: "p"}, extra_capacity={"nvidia.com/gpu": str(pods)}
        )
        for pod in target.rates:
            await core.create_namespaced_pod(
                namespace,
                {
                    "metadata": {"name": pod, "labels": {"workloadKind": "InferenceWorkload"}},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                        "terminationGracePeriodSeconds": 0,
                        "containers": [
                            {
                                "name": "server",
                                "image": "registry.k8s.io/pause:3.10",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            }
                        ],
                    },
                },
            )

        async def values() -> dict[str, int]:
            rec: NodeTopology | None = await read_record(kube, namespace, node)
            return {
                u.pod: u.utilization.max
                for gpu in (rec.gpus if rec else [])
                for u in gpu.status.usage.values()
                if u.use_knative
            }

        async def every_pod_follows_its_rate() -> dict[str, int] | None:
            got = await values()
            close = len(got) == pods and all(
                abs(got[pod] - rate / FULL_LOAD_RPS * 100) <= 5
                for pod, rate in target.rates.items()
            )
            return got if close else None

        try:
            await eventually(every_pod_follows_its_rate, timeout_s=90, what="every pod's rate")
        except AssertionError:
            raise AssertionError(f"last {await values()}\n{updater.log_tail()}") from None

        window_s = 6.0
        queries0, connections0 = await prometheus.own_counters()
        await asyncio.sleep(window_s)
        queries1, connections1 = await prometheus.own_counters()
        queries = queries1 - queries0
        # One query per poll (a poll every 1 s plus its own time), not one per pod (8 per poll).
        assert 3 <= queries <= window_s + 2, f"{queries} queries in {window_s} s"
        # One connection kept between polls: the only new ones are our second read's and at
        # most one of the poller's.
        assert connections1 - connections0 <= 2, f"{connections1 - connections0} connections"
        assert updater.proc is not None and updater.proc.returncode is None
    finally:
        await updater.stop()
        await prometheus.stop()
        await target.stop()
