"""The status-updater's own metrics (on its /metrics, from the service's registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "fgo_status_updater"


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            f"{PREFIX}_reconciles_total",
            "Node reconciles, by outcome (unchanged, written, created, deleted, kept, error).",
            ["result"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Time to reconcile one node, API calls included.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.writes = Counter(
            f"{PREFIX}_api_writes_total",
            "Writes sent to the apiserver, by object kind and verb.",
            ["kind", "verb"],
            registry=registry,
        )
        self.conflicts = Counter(
            f"{PREFIX}_write_conflicts_total",
            "Record writes refused with 409 Conflict (re-read and recomputed).",
            registry=registry,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Nodes waiting to be reconciled.",
            registry=registry,
        )
        self.last_sync = Gauge(
            f"{PREFIX}_last_sync_timestamp_seconds",
            "Unix time when all watched caches were last (re)listed and in sync.",
            registry=registry,
        )
        self.last_reconcile = Gauge(
            f"{PREFIX}_last_reconcile_timestamp_seconds",
            "Unix time of the last completed node reconcile.",
            registry=registry,
        )
        self.managed_nodes = Gauge(
            f"{PREFIX}_managed_nodes",
            "Nodes that have a topology record.",
            registry=registry,
        )
        self.events = Counter(
            f"{PREFIX}_events_total",
            "Kubernetes Events emitted, by reason.",
            ["reason"],
            registry=registry,
        )
        self.knative_queries = Counter(
            f"{PREFIX}_knative_queries_total",
            "Prometheus queries for Knative request rates, by result (ok, error).",
            ["result"],
            registry=registry,
        )
        self.config_errors = Counter(
            f"{PREFIX}_config_rejected_total",
            "Cluster topology configs rejected as invalid (the last good one stays in force).",
            registry=registry,
        )
