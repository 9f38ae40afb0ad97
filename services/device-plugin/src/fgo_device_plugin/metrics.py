"""The service's own Prometheus series, registered in the service's registry (never the global)."""

from __future__ import annotations

from fgo_common.runtime.workqueue import WorkQueueMetrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.devices = Gauge(
            "fgo_device_plugin_devices",
            "Devices advertised, by resource and health.",
            ["resource", "health"],
            registry=registry,
        )
        self.registrations = Counter(
            "fgo_device_plugin_registrations",
            "Register calls to the kubelet, by resource and result.",
            ["resource", "result"],
            registry=registry,
        )
        self.allocations = Counter(
            "fgo_device_plugin_allocate_requests",
            "Allocate requests, by resource and result (ok, invalid).",
            ["resource", "result"],
            registry=registry,
        )
        self.allocate_seconds = Histogram(
            "fgo_device_plugin_allocate_duration_seconds",
            "Time to answer an Allocate request.",
            ["resource"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=registry,
        )
        self.list_updates = Counter(
            "fgo_device_plugin_list_and_watch_updates",
            "Device lists sent on ListAndWatch streams.",
            ["resource"],
            registry=registry,
        )
        self.annotations = Counter(
            "fgo_device_plugin_pod_annotations",
            "Pod allocated-devices annotation writes, by result.",
            ["result"],
            registry=registry,
        )
        self.kwok_patches = Counter(
            "fgo_device_plugin_kwok_node_patches",
            "Node status patches of KWOK nodes, by result.",
            ["result"],
            registry=registry,
        )
        self.kwok_write_seconds = Histogram(
            "fgo_device_plugin_kwok_write_duration_seconds",
            "API call time of one node write in kwok mode (status patch or annotation).",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.kwok_nodes = Gauge(
            "fgo_device_plugin_kwok_nodes",
            "KWOK nodes whose GPU capacity this controller manages.",
            registry=registry,
        )
        # kwok mode's node queue (fgo_device_plugin_workqueue_*{queue="kwok-capacity"})
        self.workqueue = WorkQueueMetrics(registry, "fgo_device_plugin")
