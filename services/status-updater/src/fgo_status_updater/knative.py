"""Knative inference utilisation from Prometheus.

Every poll asks Prometheus one grouped question, the request rate of every pod,
``sum by (namespace, pod) (rate(revision_app_request_count[1m]))`` (per pod the same as the
reference's ``sum(rate(...{namespace,pod}[1m]))``, without the ``kube_pod_info`` it added), on one
long-lived HTTP client, maps each running inference pod's rate to percent with a configurable
scale (no series: 0), and hands changed values to the controller, which writes them into the
pod's usage (min = max = value). Consumers (exporter, nvidia-smi) read the record and need no
Prometheus.

Prometheus unreachable, slow or answering garbage: the last values stay (0 for a pod never
read), the outage is logged and reported with one Event, and nothing else waits for it: polling
runs in its own task, and a query has a deadline.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from fgo_status_updater.metrics import Metrics

if TYPE_CHECKING:
    import httpx  # imported when the first poll runs: most clusters poll no Prometheus

log = structlog.get_logger(__name__)

METRIC = "revision_app_request_count"
QUERY = f"sum by (namespace, pod) (rate({METRIC}[1m]))"
# One query per poll: one connection, kept between polls (the default poll is every 15 s;
# Prometheus keeps an idle connection for its read timeout, 5 min by default).
_KEEPALIVE_EXPIRY_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class KnativePod:
    uid: str
    namespace: str
    name: str
    node: str


def rate_to_percent(rate: float, full_load_rps: float) -> int:
    if math.isnan(rate) or rate <= 0:
        return 0
    return max(0, min(100, round(rate / full_load_rps * 100)))


class PrometheusError(RuntimeError):
    pass


def parse_rates(body: object) -> dict[tuple[str, str], float]:
    """(namespace, pod) -> value, from the answer to ``QUERY`` (an instant vector)."""
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusError(f"query failed: {str(body)[:200]}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") != "vector" or not isinstance(result, list):
        raise PrometheusError(f"unexpected answer: {str(body)[:200]}")
    rates: dict[tuple[str, str], float] = {}
    for sample in result:
        try:
            labels = sample["metric"]
            key = (str(labels.get("namespace", "")), str(labels.get("pod", "")))
            rates[key] = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise PrometheusError(f"unexpected sample: {str(sample)[:200]}") from exc
    return rates


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
        self._http: httpx.AsyncClient | None = None
        self.values: dict[str, int] = {}
        self.down = False

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx  # lazy: ~0.1 s of start-up for a feature most leave off

            self._http = httpx.AsyncClient(
                base_url=self._url,
                timeout=httpx.Timeout(self._timeout),
                limits=httpx.Limits(
                    max_connections=1,
                    max_keepalive_connections=1,
                    keepalive_expiry=_KEEPALIVE_EXPIRY_SECONDS,
                ),
                transport=self._transport,
            )
        return self._http

    async def aclose(self) -> None:
        """Close the connection (the next poll opens a new one)."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def _rates(self) -> dict[tuple[str, str], float]:
        # The deadline covers the whole query (httpx's timeouts are per connect/read/write).
        async with asyncio.timeout(self._timeout):
            resp = await self._client().get("/api/v1/query", params={"query": QUERY})
            resp.raise_for_status()
            return parse_rates(resp.json())

    async def poll(self, pods: Iterable[KnativePod]) -> None:
        """One query for every pod; update ``values`` and report changes."""
        wanted = list(pods)
        alive = {p.uid for p in wanted}
        for uid in list(self.values):
            if uid not in alive:
                del self.values[uid]
        if not wanted:
            return
        import httpx  # already loaded by the client (see _client)

        try:
            rates = await self._rates()
        except TimeoutError:
            self._failed(f"no answer within {self._timeout:g} s")
            return
        except (httpx.HTTPError, PrometheusError, ValueError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}"[:300])
            return
        self._metrics.knative_queries.labels("ok").inc()
        for pod in wanted:
            value = rate_to_percent(rates.get((pod.namespace, pod.name), 0.0), self._full)
            if self.values.get(pod.uid) != value:
                self.values[pod.uid] = value
                self._on_change(pod)
        if self.down:
            self.down = False
            log.info("knative.prometheus_recovered", url=self._url)

    def _failed(self, error: str) -> None:
        self._metrics.knative_queries.labels("error").inc()
        if not self.down:
            self.down = True
            log.warning("knative.prometheus_down", url=self._url, error=error)
            self._on_outage(error)
