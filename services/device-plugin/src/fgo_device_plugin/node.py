"""Node mode: the kubelet device plugin of one real node, driven by the node's topology record.

Every record change: write the node-local snapshot GPU containers read (fgo_common.nodestate),
recompute the advertised resources and hand them to the plugin manager, which pushes changed
device lists down the ListAndWatch streams. Readiness is "registered with the kubelet".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from fgo_common.nodestate import nvml_host_library, write_node_state
from fgo_common.nvmlnode import NvmlNodeSnapshot
from fgo_common.topology import NodeTopology

from fgo_device_plugin.allocate import ContainerSetup
from fgo_device_plugin.manager import DevicePluginManager
from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.reporter import AllocationReporter, PatchPod
from fgo_device_plugin.resources import Resource, node_resources
from fgo_device_plugin.settings import Settings
from fgo_device_plugin.source import TopologySource

log = structlog.get_logger(__name__)


def container_setup(settings: Settings) -> ContainerSetup:
    return ContainerSetup(
        node_name=settings.node_name,
        visible_devices_env=settings.visible_devices_env_name,
        nvidia_smi_host_path=settings.nvidia_smi_host_path,
        nvidia_smi_container_path=settings.nvidia_smi_container_path,
        bundle_host_dir=settings.nvidia_smi_bundle_host_dir,
        bundle_container_dir=settings.nvidia_smi_bundle_container_dir,
        state_host_dir=settings.effective_state_host_dir,
        state_container_dir=settings.state_container_dir,
        seed=settings.seed,
        nvml_host_path=nvml_host_library(settings.nvidia_smi_bundle_host_dir),
    )


@dataclass
class NodeAgent:
    """Everything node mode runs: record -> snapshot + device plugins (+ allocation reports)."""

    settings: Settings
    source: TopologySource
    metrics: Metrics
    patch_pod: PatchPod | None = None
    manager: DevicePluginManager = field(init=False)
    reporter: AllocationReporter | None = field(init=False, default=None)
    resources: dict[str, Resource] = field(init=False, default_factory=dict)
    topology: NodeTopology | None = field(init=False, default=None)
    records_seen: int = field(init=False, default=0)
    # nvml-node.snap next to topology.json: what the fake NVML library reads (docs/nvml.md).
    nvml: NvmlNodeSnapshot = field(init=False)

    def __post_init__(self) -> None:
        self.nvml = NvmlNodeSnapshot(self.settings.state_dir, self.settings.seed)
        if self.patch_pod is not None and self.settings.pod_resources_socket:
            self.reporter = AllocationReporter(
                Path(self.settings.pod_resources_socket),
                self.patch_pod,
                self.metrics,
                resources=self._reported_resources,
                interval_seconds=self.settings.pod_resources_interval_seconds,
            )
        self.manager = DevicePluginManager(
            self.settings.plugin_dir,
            container_setup(self.settings),
            self.metrics,
            poll_interval_seconds=self.settings.kubelet_poll_interval_seconds,
            on_allocate=self.reporter.allocated if self.reporter else None,
        )
        self.records = asyncio.Condition()

    def _reported_resources(self) -> set[str]:
        return {name for name, r in self.resources.items() if r.reports_allocations}

    async def follow_topology(self, stop: asyncio.Event) -> None:
        """Apply every record the source yields until ``stop``."""
        self.manager.remove_stale_sockets()
        async for topology in self.source.updates(stop):
            await self.apply(topology)

    async def apply(self, topology: NodeTopology | None) -> None:
        if topology is not None:
            # Small file, but still disk I/O: keep it off the event loop.
            await asyncio.to_thread(write_node_state, self.settings.state_dir, topology)
            self.nvml.changed()
            resources = node_resources(topology, self.settings.mig_strategy)
        else:
            resources = {}
        self.topology = topology
        self.resources = resources
        await self.manager.apply(resources)
        async with self.records:
            self.records_seen += 1
            self.records.notify_all()
        log.debug(
            "topology.applied",
            present=topology is not None,
            resources={n: r.capacity for n, r in resources.items()},
        )

    async def wait_records(self, count: int, timeout_seconds: float = 10.0) -> None:
        """Wait until ``count`` records have been applied (tests and benchmarks)."""
        async with asyncio.timeout(timeout_seconds), self.records:
            await self.records.wait_for(lambda: self.records_seen >= count)
