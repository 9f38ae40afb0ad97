"""This node's record and what follows from it: devices, the node-local snapshot, the slices.

Three list-watches, each narrowed to this node by a field selector (so 1000 plugins do not each
receive 1000 nodes' worth of events): the topology ConfigMap ``<prefix>-<node>``, the Node (its
UID is the slices' owner; a re-registered node gets a new UID and our slices follow) and our own
ResourceSlices. Every change marks the node dirty; one loop then

* rebuilds the device map prepare validates against (``fgo_common.dradevices.node_devices``,
  the same devices the slices advertise),
* rewrites the node-local snapshot GPU containers mount (``fgo_common.nodestate``), and
* brings the node's pool of slices in line (``fgo_common.drapublish``), exactly as the
  kwok-dra-plugin does for KWOK nodes.

The real driver publishes once at start; we follow the record (GPU health, MIG layout, driver
version changes), with a new pool generation per change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import structlog
from fgo_common import dradevices, draslices
from fgo_common.drapublish import publish_pool, withdraw_pool
from fgo_common.kube.served import SliceApi
from fgo_common.kube.watch import DELETED, SYNCED, Reflector, WatchEvent
from fgo_common.nodestate import write_node_state
from fgo_common.nvmlnode import NvmlNodeSnapshot
from fgo_common.runtime.runner import ServiceContext
from fgo_common.topology import TOPOLOGY_DATA_KEY, NodeTopology, TopologyFormatError
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry, Counter

from fgo_dra_plugin.settings import Settings

log = structlog.get_logger(__name__)

Obj = dict[str, Any]
FIELD_MANAGER_PREFIX = "fake-gpu-operator/"
_DEBOUNCE_SECONDS = 0.05
_RETRY_SECONDS = 2.0


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.slice_writes = Counter(
            "fgo_dra_plugin_slice_writes", "ResourceSlice writes by operation.", ["operation"],
            registry=registry,
        )  # fmt: skip
        self.records = Counter(
            "fgo_dra_plugin_topology_records", "Topology records received, by outcome.",
            ["outcome"], registry=registry,
        )  # fmt: skip


class NodeAgent:
    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings,
        registry: CollectorRegistry,
        slice_api: SliceApi | None = None,
    ) -> None:
        self.settings = settings
        self.options = dradevices.DeviceOptions(
            names=settings.names, unhealthy=settings.unhealthy_policy, naming=settings.naming
        )
        self.core = client.CoreV1Api(api)
        # resource.k8s.io v1, or v1beta2 where v1 is not served (main.serve decides).
        self.resource = slice_api or SliceApi(api)
        node = settings.node_name
        self.configmaps = Reflector(
            self.core.list_namespaced_config_map,
            name="topology-configmap",
            namespace=settings.effective_topology_namespace,
            field_selector=f"metadata.name={settings.topology_configmap}",
        )
        self.nodes = Reflector(
            self.core.list_node, name="node", field_selector=f"metadata.name={node}"
        )
        self.slices = Reflector(
            self.resource.list_resource_slice,
            name="resourceslices",
            field_selector=f"spec.nodeName={node}",
            label_selector=f"{draslices.PUBLISHER_LABEL}={settings.instance}",
            transform=draslices.slice_index_view,
        )
        self.metrics = NodeMetrics(registry)
        self.field_manager = FIELD_MANAGER_PREFIX + settings.instance
        self.topology: NodeTopology | None = None
        self.record_known = False  # False until the ConfigMap watch has listed
        self._devices: dict[str, dradevices.PublishedDevice] | None = None
        self._node: Obj | None = None
        self._slices: dict[str, Obj] = {}
        self._dirty = asyncio.Event()
        self._snapshot_written: NodeTopology | None = None
        # nvml-node.snap next to topology.json: what the fake NVML library reads (docs/nvml.md).
        self.nvml = NvmlNodeSnapshot(self.settings.state_dir, self.settings.seed)
        self.synced = asyncio.Event()

    # -- what the driver asks ---------------------------------------------------------------

    def current_devices(self) -> Mapping[str, dradevices.PublishedDevice] | None:
        return self._devices

    # -- event intake -----------------------------------------------------------------------

    def _on_configmap(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            self.record_known = True
        elif event.type == DELETED:
            self.topology, self._devices = None, None
        else:
            text = (event.obj.get("data") or {}).get(TOPOLOGY_DATA_KEY)
            try:
                if text is None:
                    raise TopologyFormatError(f"no {TOPOLOGY_DATA_KEY} key")
                topology = NodeTopology.from_yaml(text, self.settings.node_name)
                devices = {d.name: d for d in dradevices.node_devices(topology, self.options)}
            except (TopologyFormatError, dradevices.DeviceBuildError) as exc:
                # Keep serving the last good record: dropping it would fail every prepare.
                self.metrics.records.labels("invalid").inc()
                log.warning("topology.invalid", error=str(exc)[:300])
                return
            self.metrics.records.labels("ok").inc()
            self.topology, self._devices = topology, devices
        self._dirty.set()

    def _on_node(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            return
        self._node = None if event.type == DELETED else event.obj
        self._dirty.set()

    def _on_slice(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            return
        name = event.obj["metadata"]["name"]
        if event.type == DELETED:
            self._slices.pop(name, None)
        else:
            current = self._slices.get(name)
            # A watch event older than what our own write returned must not roll us back.
            if current is None or _rv(event.obj) >= _rv(current):
                self._slices[name] = event.obj
        self._dirty.set()

    async def _pump(self, reflector: Reflector, handler: Any, stop: asyncio.Event) -> None:
        async for event in reflector.events(stop):
            handler(event)

    # -- the loop ---------------------------------------------------------------------------

    async def _sync(self) -> None:
        topology = self.topology
        if topology is not None and topology is not self._snapshot_written:
            await asyncio.to_thread(write_node_state, self.settings.state_dir, topology)
            self._snapshot_written = topology
            self.nvml.changed()
        if not self.settings.publish_slices:
            return
        existing = list(self._slices.values())
        if topology is None or self._devices is None:
            if existing and self.record_known:
                deleted = await withdraw_pool(self.resource, existing, node=self.settings.node_name)
                self.metrics.slice_writes.labels("delete").inc(len(deleted))
                for name in deleted:
                    self._slices.pop(name, None)
            return
        if self._node is None:
            return  # no owner to hang the slices on yet
        target = draslices.PoolTarget(
            node_name=self.settings.node_name,
            node_uid=str(self._node["metadata"].get("uid", "")),
            base_name=draslices.node_slice_base(self.settings.node_name, self.settings.driver),
            publisher=self.settings.instance,
            driver=self.settings.driver,
            topology_generation=topology.generation,
        )
        devices = [d.device for d in self._devices.values()]
        counter_sets = dradevices.node_counter_sets(topology, self.options)  # dynamic MIG only
        result = await publish_pool(
            self.resource, target, devices, existing, self.field_manager, counter_sets=counter_sets
        )
        for stored in result.stored:
            self.metrics.slice_writes.labels("apply").inc()
            self._slices[stored["metadata"]["name"]] = draslices.slice_index_view(stored)
        for name in result.deleted:
            self.metrics.slice_writes.labels("delete").inc()
            self._slices.pop(name, None)

    async def _all_synced(self) -> None:
        for reflector in (self.configmaps, self.nodes, self.slices):
            await reflector.synced.wait()

    async def run(self, ctx: ServiceContext) -> None:
        ctx.readiness.require("node-synced")
        stop = ctx.stop
        async with asyncio.TaskGroup() as group:
            tasks: list[asyncio.Task[Any]] = [
                group.create_task(self._pump(self.configmaps, self._on_configmap, stop)),
                group.create_task(self._pump(self.nodes, self._on_node, stop)),
                group.create_task(self._pump(self.slices, self._on_slice, stop)),
                group.create_task(self.nvml.run(stop)),
            ]
            synced = group.create_task(self._all_synced())
            stopped = group.create_task(stop.wait())
            tasks += [synced, stopped]
            await asyncio.wait({synced, stopped}, return_when=asyncio.FIRST_COMPLETED)
            self._dirty.set()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._dirty.wait()
                if not self._dirty.is_set():
                    continue
                await asyncio.sleep(_DEBOUNCE_SECONDS)  # collect a burst of events
                self._dirty.clear()
                try:
                    await self._sync()
                except Exception as exc:
                    log.warning("node.sync_failed", error=str(exc)[:300] or type(exc).__name__)
                    asyncio.get_running_loop().call_later(_RETRY_SECONDS, self._dirty.set)
                    continue
                if not self.synced.is_set():
                    self.synced.set()
                    ctx.readiness.set("node-synced")
                    log.info(
                        "node.synced",
                        record=self.topology is not None,
                        devices=len(self._devices or {}),
                    )
            # Watches block on the network for minutes; stopping must not wait for them.
            for task in tasks:
                task.cancel()
