"""Knative inference utilisation from Prometheus.

For each running inference pod that holds a GPU, the poller asks Prometheus for the pod's request
rate, ``sum(rate(revision_app_request_count{namespace="<ns>",pod="<pod>"}[1m]))`` (the reference
added ``kube_pod_info``'s value 1 to it), maps it to percent with a configurable scale, and hands
the value to the controller, which writes it into the pod's usage (min = max = value). Consumers
(exporter, nvidia-smi) read the record and need no Prometheus.

Prometheus unreachable, slow or answering garbage: the last value stays (0 for a pod never read),
the outage is logged and reported with one Event, and nothing else waits for it: polling runs in
its own task with a per-query timeout.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
import structlog

from fgo_status_updater.metrics import Metrics

log = structlog.get_logger(__name__)

METRIC = "revision_app_request_count"
_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class KnativePod:
    uid: str
    namespace: str
    name: str
    node: str


def request_rate_query(namespace: str, pod: str) -> str:
    def quote(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"')

    return f'sum(rate({METRIC}{{namespace="{quote(namespace)}",pod="{quote(pod)}"}}[1m]))'


def rate_to_percent(rate: float, full_load_rps: float) -> int:
    if math.isnan(rate) or rate <= 0:
        return 0
    return max(0, min(100, round(rate / full_load_rps * 100)))


class PrometheusError(RuntimeError):
    pass


def parse_instant_value(body: object) -> float:
    """The scalar of an instant-query answer (an empty vector means no requests: 0)."""
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusError(f"query failed: {str(body)[:200]}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list):
        return float(result[1])
    if not isinstance(result, list):
        raise PrometheusError(f"unexpected answer: {str(body)[:200]}")
    if not result:
        return 0.0
    try:
        return float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PrometheusError(f"unexpected sample: {str(result[0])[:200]}") from exc


class KnativePoller:
    def __init__(
        self,
        url: str,
        *,
        full_load_rps: float,
        timeout_seconds: float,
        metrics: Metrics,
        on_change: Callable[[KnativePod], None],
        on_outage: Callable[[str], None],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        self._full = full_load_rps
        self._timeout = timeout_seconds
        self._metrics = metrics
        self._on_change = on_change
        self._on_outage = on_outage
        self._transport = transport
        self.values: dict[str, int] = {}
        self.down = False

    async def poll(self, pods: Iterable[KnativePod]) -> None:
        """Query every pod once; update ``values`` and report changes."""
        wanted = list(pods)
        alive = {p.uid for p in wanted}
        for uid in list(self.values):
            if uid not in alive:
                del self.values[uid]
        if not wanted:
            return
        limiter = asyncio.Semaphore(_CONCURRENCY)
        errors: list[str] = []
        async with httpx.AsyncClient(
            base_url=self._url, timeout=self._timeout, transport=self._transport
        ) as http:

            async def one(pod: KnativePod) -> None:
                async with limiter:
                    try:
                        resp = await http.get(
                            "/api/v1/query",
                            params={"query": request_rate_query(pod.namespace, pod.name)},
                        )
                        resp.raise_for_status()
                        rate = parse_instant_value(resp.json())
                    except (httpx.HTTPError, PrometheusError, ValueError) as exc:
                        self._metrics.knative_queries.labels("error").inc()
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
                        return
                self._metrics.knative_queries.labels("ok").inc()
                value = rate_to_percent(rate, self._full)
                if self.values.get(pod.uid) != value:
                    self.values[pod.uid] = value
                    self._on_change(pod)

            await asyncio.gather(*(one(p) for p in wanted))
        if errors and not self.down:
            self.down = True
            log.warning("knative.prometheus_down", url=self._url, error=errors[0])
            self._on_outage(errors[0])
        elif not errors and self.down:
            self.down = False
            log.info("knative.prometheus_recovered", url=self._url)
