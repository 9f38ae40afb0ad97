"""The kwok-dra-plugin controller: gpu.nvidia.com ResourceSlices for every KWOK GPU node.

KWOK nodes have no kubelet, so no node plugin publishes their devices; this one central
controller does, with the same builders the node plugin uses (fgo_common.dradevices and
.draslices). It is level-based: three list-watches (Nodes, per-node topology ConfigMaps, our own
ResourceSlices) feed a keyed work queue of node names, and reconciling a node compares the
slices it should have with the ones it has. So a restart, a missed event or a manual deletion
all converge the same way.

A node gets slices while it exists, is a KWOK node (its record says so, or the Node carries
``kwok.x-k8s.io/node: fake``) and has a topology record. Anything else loses them: the Node was
deleted (its slices are also owned by it, so the garbage collector would get there too), it left
its GPU pool (the status-updater deleted the record), or it turned into a real node.

Both paths on one node: on a KWOK node the KWOK capacity controller may also publish the same
GPUs as ``nvidia.com/gpu`` (and ``nvidia.com/mig-*``), and the scheduler counts those against
the node's allocatable without looking at our slices. A real node runs one path or the other;
here the record's holders arbitrate. A device held through an extended resource (holder kind
``device-plugin`` or ``reservation``) gets the device taint
``fake-gpu-operator/held-by-extended-resource`` with effect ``NoSchedule``, so the scheduler
allocates it to no new claim; the taint goes when the record no longer shows that holder. The
capacity controller does the converse (GPUs held through DRA leave ``allocatable``).
``NoSchedule`` and not ``NoExecute``: a claim that already holds the device (allocated in the
instant before the record showed the other holder) must not be evicted; the status-updater
reports that double booking. Under ``UNHEALTHY_DEVICES=omit`` (no DRADeviceTaints) held devices
are left out of the slice instead; ``publish`` does not arbitrate.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from fgo_common import dradevices, draslices
from fgo_common.dradevices import Obj
from fgo_common.drapublish import publish_pool, slice_pool_node, withdraw_pool
from fgo_common.kube.leader import LeaderElector
from fgo_common.kube.served import SliceApi
from fgo_common.kube.watch import DELETED, SYNCED, Reflector, WatchEvent, slim_node
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.workqueue import WorkQueue, WorkQueueMetrics, run_worker
from fgo_common.topology import (
    HOLDER_DRA,
    KWOK_NODE_ANNOTATION,
    NODE_NAME_LABEL,
    TOPOLOGY_DATA_KEY,
    NodeTopology,
    TopologyFormatError,
)
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fgo_kwok_dra_plugin.settings import Settings

log = structlog.get_logger(__name__)

FIELD_MANAGER_PREFIX = "fake-gpu-operator/"
KWOK_NODE_VALUE = "fake"
# Our own vocabulary (not the NVIDIA driver's): a device the extended-resource path holds.
HELD_TAINT_KEY = "fake-gpu-operator/held-by-extended-resource"


def is_kwok_node(node: Obj) -> bool:
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return annotations.get(KWOK_NODE_ANNOTATION) == KWOK_NODE_VALUE


def node_facts(node: Obj) -> tuple[str, bool, bool]:
    """What of a Node decides its slices: UID (owner), KWOK-ness, being deleted."""
    meta = node.get("metadata") or {}
    return (str(meta.get("uid", "")), is_kwok_node(node), bool(meta.get("deletionTimestamp")))


def configmap_node(cm: Obj) -> str:
    return str(((cm.get("metadata") or {}).get("labels") or {}).get(NODE_NAME_LABEL, ""))


def held_by_extended_resource(topology: NodeTopology) -> tuple[set[int], set[str]]:
    """What pods hold through the extended-resource path (any holder that is not a DRA
    claim): (indexes of GPUs held whole, UUIDs of MIG devices held)."""
    whole = {g.index for g in topology.gpus if any(h.kind != HOLDER_DRA for h in g.status.holders)}
    parts = {
        m.uuid
        for g in topology.gpus
        for m in g.mig_devices
        if any(h.kind != HOLDER_DRA for h in m.holders)
    }
    return whole, parts


def arbitrate(
    devices: list[dradevices.PublishedDevice],
    topology: NodeTopology,
    policy: dradevices.UnhealthyPolicy,
) -> list[Obj]:
    """The slice devices, with those the extended-resource path holds made unallocatable: every
    device of a GPU held whole, a held MIG device and its parent GPU's full-GPU device.
    ``policy`` as for unhealthy devices: ``taint`` adds :data:`HELD_TAINT_KEY` (NoSchedule),
    ``omit`` leaves them out, ``publish`` changes nothing."""
    whole, parts = held_by_extended_resource(topology)
    if policy == "publish" or not (whole or parts):
        return [d.device for d in devices]
    parents = {g.id for g in topology.gpus for m in g.mig_devices if m.uuid in parts}
    out: list[Obj] = []
    for entry in devices:
        held = entry.gpu_index in whole or entry.uuid in parts or entry.uuid in parents
        if not held:
            out.append(entry.device)
        elif policy == "taint":
            taint = {"key": HELD_TAINT_KEY, "effect": dradevices.TAINT_EFFECT_NO_SCHEDULE}
            out.append({**entry.device, "taints": [*entry.device.get("taints", []), taint]})
    return out


@dataclass(frozen=True, slots=True)
class DesiredPool:
    target: draslices.PoolTarget
    devices: list[Obj]
    counter_sets: list[Obj] = field(default_factory=list)  # dynamic MIG: shared counters


def desired_pool(
    node_name: str,
    node: Obj | None,
    configmap: Obj | None,
    options: dradevices.DeviceOptions,
    publisher: str = "kwok-dra-plugin",
) -> DesiredPool | None:
    """What ``node_name`` should publish, or None when it should publish nothing.

    Raises TopologyFormatError for a record that cannot be read: the caller keeps the current
    slices then, since withdrawing them would evict nothing but strand every pending claim.
    """
    if node is None or configmap is None:
        return None
    meta = node.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    text = (configmap.get("data") or {}).get(TOPOLOGY_DATA_KEY)
    if text is None:
        raise TopologyFormatError(f"ConfigMap has no {TOPOLOGY_DATA_KEY} key")
    topology = NodeTopology.from_yaml(text, node_name)
    if not (topology.kwok or is_kwok_node(node)):
        return None
    target = draslices.PoolTarget(
        node_name=node_name,
        node_uid=str(meta.get("uid", "")),
        base_name=draslices.kwok_slice_base(node_name),
        publisher=publisher,
        driver=options.names.driver,
        topology_generation=topology.generation,
    )
    return DesiredPool(
        target,
        arbitrate(dradevices.node_devices(topology, options), topology, options.unhealthy),
        dradevices.node_counter_sets(topology, options),
    )


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "fgo_kwok_dra_reconciles", "Node reconciliations by outcome.", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.slice_writes = Counter(
            "fgo_kwok_dra_slice_writes", "ResourceSlice writes by operation.", ["operation"],
            registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "fgo_kwok_dra_reconcile_duration_seconds", "Time to reconcile one node.",
            registry=registry, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )  # fmt: skip
        self.nodes = Gauge(
            "fgo_kwok_dra_nodes_published", "KWOK nodes whose slices we publish.",
            registry=registry,
        )  # fmt: skip
        self.workqueue = WorkQueueMetrics(registry, "fgo_kwok_dra")


class KwokSliceController:
    """Reflectors + work queue + reconcile. ``run`` is the service's eternal task."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings,
        registry: CollectorRegistry,
        slice_api: SliceApi | None = None,
        *,
        elector: LeaderElector | None = None,
    ):
        self.settings = settings
        self.elector = elector  # None: the only replica, always writing
        self.options = dradevices.DeviceOptions(
            names=settings.dra_names, unhealthy=settings.unhealthy_policy, naming=settings.naming
        )
        self.core = client.CoreV1Api(api)
        # resource.k8s.io v1, or v1beta2 where v1 is not served (main.serve decides).
        self.resource = slice_api or SliceApi(api)
        self.nodes = Reflector(self.core.list_node, name="nodes", transform=slim_node)
        self.configmaps = Reflector(
            self.core.list_namespaced_config_map,
            name="topology-configmaps",
            namespace=settings.topology_namespace,
            label_selector=NODE_NAME_LABEL,
        )
        self.slices = Reflector(
            self.resource.list_resource_slice,
            name="resourceslices",
            label_selector=f"{draslices.PUBLISHER_LABEL}={settings.instance}",
            transform=draslices.slice_index_view,
        )
        self.field_manager = FIELD_MANAGER_PREFIX + settings.instance
        self.metrics = Metrics(registry)
        self.queue = WorkQueue("kwok-slices", metrics=self.metrics.workqueue)
        self._cm_by_node: dict[str, Obj] = {}
        self._cm_node: dict[str, str] = {}  # ConfigMap "<ns>/<name>" -> node it describes
        self._slices_by_node: dict[str, dict[str, Obj]] = {}
        self._published: set[str] = set()
        # node -> (inputs key, stored pool signature) after a successful publish
        self._in_sync: dict[str, tuple[Any, frozenset[tuple[str, str, int]]]] = {}

    # -- event intake ---------------------------------------------------------------------

    def _on_node(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            return
        # Status heartbeats change nothing we publish; at thousands of nodes they would keep
        # the workers busy re-checking unchanged pools.
        if event.old is not None and node_facts(event.old) == node_facts(event.obj):
            return
        self.queue.add(str(event.obj["metadata"]["name"]))

    def _on_configmap(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            return
        key = f"{event.obj['metadata'].get('namespace', '')}/{event.obj['metadata']['name']}"
        old_node = self._cm_node.pop(key, "")
        if (
            old_node
            and self._cm_by_node.get(old_node, {}).get("metadata", {}).get("name")
            == (event.obj["metadata"]["name"])
        ):
            del self._cm_by_node[old_node]
        node = configmap_node(event.obj)
        if event.type != DELETED and node:
            self._cm_node[key] = node
            self._cm_by_node[node] = event.obj
        self.queue.add(old_node)
        self.queue.add(node)

    def _remember_slice(self, obj: Obj) -> None:
        node = slice_pool_node(obj)
        name = obj["metadata"]["name"]
        known = self._slices_by_node.setdefault(node, {})
        current = known.get(name)
        # A watch event older than what our own write returned must not roll the index back.
        if current is None or _rv(obj) >= _rv(current):
            known[name] = obj

    def _forget_slice(self, obj: Obj) -> None:
        node = slice_pool_node(obj)
        known = self._slices_by_node.get(node, {})
        known.pop(obj["metadata"]["name"], None)
        if not known:
            self._slices_by_node.pop(node, None)

    def _on_slice(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            return
        if event.type == DELETED:
            self._forget_slice(event.obj)
        else:
            if event.old is not None and slice_pool_node(event.old) != slice_pool_node(event.obj):
                self._forget_slice(event.old)
            self._remember_slice(event.obj)
        self.queue.add(slice_pool_node(event.obj))

    async def _pump(self, reflector: Reflector, handler: Any, stop: asyncio.Event) -> None:
        async for event in reflector.events(stop):
            handler(event)

    # -- reconcile --------------------------------------------------------------------------

    def known_nodes(self) -> set[str]:
        keys = {str(o["metadata"]["name"]) for o in self.nodes.cache.values()}
        return keys | set(self._cm_by_node) | set(self._slices_by_node)

    def _stored_signature(self, node_name: str) -> frozenset[tuple[str, str, int]]:
        return frozenset(
            (name, draslices.slice_hash(o), draslices.slice_generation(o))
            for name, o in self._slices_by_node.get(node_name, {}).items()
        )

    async def reconcile(self, node_name: str) -> None:
        node = self.nodes.cache.get(node_name)
        cm = self._cm_by_node.get(node_name)
        # The events of our own slice writes and the periodic resync re-check nodes whose
        # inputs did not change; parsing a record costs more than comparing a pool, and
        # keeping every node's desired devices would cost as much memory as the slices.
        key = None
        if node is not None and cm is not None:
            key = (str(cm["metadata"].get("resourceVersion", "")), node_facts(node))
            known = self._in_sync.get(node_name)
            if known is not None and known == (key, self._stored_signature(node_name)):
                return
        self._in_sync.pop(node_name, None)
        existing = list(self._slices_by_node.get(node_name, {}).values())
        desired = desired_pool(node_name, node, cm, self.options, self.settings.instance)
        if desired is None:
            self._published.discard(node_name)
            if existing:
                deleted = set(await withdraw_pool(self.resource, existing, node=node_name))
                self.metrics.slice_writes.labels("delete").inc(len(deleted))
                for obj in existing:
                    self._forget_slice(obj)
            return
        result = await publish_pool(
            self.resource,
            desired.target,
            desired.devices,
            existing,
            self.field_manager,
            counter_sets=desired.counter_sets,
        )
        self._published.add(node_name)
        for stored in result.stored:
            self.metrics.slice_writes.labels("apply").inc()
            self._remember_slice(draslices.slice_index_view(stored))
        for obj in existing:
            if obj["metadata"]["name"] in result.deleted:
                self.metrics.slice_writes.labels("delete").inc()
                self._forget_slice(obj)
        if key is not None:
            self._in_sync[node_name] = (key, self._stored_signature(node_name))

    async def _reconcile_counted(self, node_name: str) -> None:
        started = time.perf_counter()
        try:
            await self.reconcile(node_name)
        except TopologyFormatError:
            self.metrics.reconciles.labels("bad-topology").inc()
            raise
        except Exception:
            self.metrics.reconciles.labels("error").inc()
            raise
        else:
            self.metrics.reconciles.labels("ok").inc()
        finally:
            self.metrics.duration.observe(time.perf_counter() - started)
            self.metrics.nodes.set(len(self._published))

    async def _worker(self) -> None:
        # Back-off is the queue's, per node: it used to be per worker, so it started over
        # whenever another worker took the node.
        await run_worker(
            self.queue,
            self._reconcile_counted,
            # A broken record stays broken until it changes, and its change queues the node.
            retry=lambda exc: not isinstance(exc, TopologyFormatError),
            on_failure=_log_failure,
        )

    async def _resync(self, ctx: ServiceContext) -> None:
        """Periodic full pass: cheap (hash comparisons), and it repairs anything a bug or an
        operator's hand changed without an event we act on."""
        while not await ctx.sleep(self.settings.resync_seconds):
            for node_name in self.known_nodes():
                self.queue.add(node_name)

    async def run(self, ctx: ServiceContext) -> None:
        ctx.readiness.require("synced")
        stop = ctx.stop
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._pump(self.nodes, self._on_node, stop)),
                group.create_task(self._pump(self.configmaps, self._on_configmap, stop)),
                group.create_task(self._pump(self.slices, self._on_slice, stop)),
            ]
            reflectors = (self.nodes, self.configmaps, self.slices)
            if await _wait_until(stop, *(r.synced.wait() for r in reflectors)):
                if self.elector is None:
                    tasks.append(group.create_task(self._write(ctx, stop)))
                    await stop.wait()
                else:
                    # Every replica follows the watches (a takeover starts from warm caches
                    # and is Ready); only the leader runs the workers that write slices.
                    ctx.readiness.set("synced")
                    log.info("controller.standby_synced", nodes=len(self.known_nodes()))
                    await self.elector.lead(stop, lambda lost: self._write(ctx, lost))
            # Watches block on the network for minutes; stopping must not wait for them.
            for task in tasks:
                task.cancel()

    async def _write(self, ctx: ServiceContext, stop: asyncio.Event) -> None:
        """Reconcile every node, then follow changes until ``stop`` (the service stopping, or
        this replica losing its Lease)."""
        self._in_sync.clear()  # another leader may have written since we last did
        for node_name in self.known_nodes():
            self.queue.add(node_name)
        async with asyncio.TaskGroup() as group:
            workers = [
                group.create_task(self._worker(), name=f"worker-{i}")
                for i in range(self.settings.workers)
            ]
            if await _wait_until(stop, self.queue.wait_idle()):
                ctx.readiness.set("synced")
                log.info("controller.synced", nodes=len(self._published))
                workers.append(group.create_task(self._resync(ctx)))
                await stop.wait()
            for task in workers:
                task.cancel()


def _log_failure(node_name: str, exc: Exception, retry_in: float | None) -> None:
    if isinstance(exc, TopologyFormatError):
        log.warning("node.topology_invalid", node=node_name, error=str(exc)[:300])
        return
    log.warning(
        "node.reconcile_failed",
        node=node_name,
        error=str(exc)[:300] or type(exc).__name__,
        retry_in=None if retry_in is None else round(retry_in, 2),
    )


async def _wait_until(stop: asyncio.Event, *awaitables: Any) -> bool:
    """Wait for all ``awaitables`` unless ``stop`` is set first; True if they all finished."""
    waiter = asyncio.ensure_future(asyncio.gather(*awaitables))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (waiter, stopper):
            if not future.done():
                future.cancel()
    return waiter.done() and not waiter.cancelled() and not stop.is_set()
