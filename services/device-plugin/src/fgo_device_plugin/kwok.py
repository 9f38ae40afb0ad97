"""KWOK mode: GPU capacity in the status of KWOK nodes, which have no kubelet to publish it.

One central controller keeps ``status.capacity`` and ``status.allocatable`` of every KWOK GPU
node equal to what the kubelet would publish from our device plugin on a real node: per resource
of ``resources.node_resources`` (the same code as node mode), capacity = all devices and
allocatable = healthy devices. It follows record changes and removes resources that are gone.

Level-based: two list-then-watch caches (the topology ConfigMaps of one namespace, all Nodes)
feed a de-duplicating queue of node names; workers compare the cached node with the wanted
values and send a merge patch of only our keys to ``nodes/status`` when they differ (so cpu,
memory, pods and anyone else's resources are never touched). After our patch the node watch
delivers the new status and the comparison finds nothing to do. Records are parsed once per
ConfigMap change, not per node event, so KWOK's heartbeats cost a dict comparison each.

No write is sent twice: the shared work queue (``fgo_common.runtime.workqueue``) gives a node
to one worker at a time (an event meanwhile runs it again afterwards), and a node whose cached
copy is older than our own last write to it waits for the watch to deliver that write (its event
queues the node again) instead of being compared stale. With many workers against a slow
apiserver both used to happen: a 1000-node bring-up with 32 workers sent 2.1 annotation and 2.3
status writes per node (then separate requests). A failed patch is retried with per-node
back-off, and a periodic full pass (``KWOK_RESYNC_SECONDS``) repairs capacity edited by hand.

Which keys and nodes are "ours" must survive a restart (design principle 6) without touching
capacity someone else put on a KWOK node by hand: the names we publish on a node are listed in
its annotation ``fake-gpu-operator/managed-resources``, written in the same ``nodes/status``
merge patch as the capacity (that subresource persists metadata changes too), so the list and
the resources change together: one write per node, no orphan after a crash. A node with neither
a record nor that annotation is left alone; on a node with a record, ``nvidia.com/gpu`` and
``nvidia.com/mig-*`` are ours in any case.

Both paths on one node (``dra_shares_gpus``, chart: ``kwokDraPlugin.enabled``): the
kwok-dra-plugin publishes the same GPUs as DRA devices, and the scheduler counts extended
resources against ``allocatable`` and DRA claims against the ResourceSlices, each blind to the
other. A real node runs one path or the other; ours arbitrate through the record's holders: a
GPU (or MIG device) held through a DRA claim is subtracted from ``allocatable`` (capacity keeps
the total, as it does for an unhealthy device), and the kwok-dra-plugin taints devices held
through an extended resource. So neither path can hand out what the other holds. What is left
is the window between an allocation and the record showing it (one status-updater write plus
one of ours), in which both schedulers may still pick the same last GPU; the status-updater
then reports the loser (``InsufficientGpus``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from fgo_common import dpsharing
from fgo_common.annotations import KWOK_NODE, KWOK_NODE_VALUE
from fgo_common.kube.errors import is_not_found, raise_for_status
from fgo_common.kube.leader import LeaderElector
from fgo_common.kube.retry import retrying
from fgo_common.kube.watch import DELETED, SYNCED, Reflector, WatchEvent, slim_node
from fgo_common.names import RESOURCE_NAMES
from fgo_common.runtime.workqueue import WorkQueue, run_worker
from fgo_common.topology import HOLDER_DRA, NODE_NAME_LABEL, NodeTopology, TopologyFormatError
from kubernetes_asyncio import client

from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.resources import Resource, capacity_of, node_resources
from fgo_device_plugin.source import parse_topology_configmap

log = structlog.get_logger(__name__)

MANAGED_RESOURCES_ANNOTATION = "fake-gpu-operator/managed-resources"

Wanted = dict[str, tuple[int, int]]  # resource -> (capacity, allocatable)
Obj = dict[str, Any]


def is_ours_by_name(resource: str) -> bool:
    return resource in (
        RESOURCE_NAMES.gpu,
        RESOURCE_NAMES.gpu + dpsharing.SHARED_SUFFIX,
    ) or resource.startswith(RESOURCE_NAMES.mig_prefix)


def managed_names(node: Obj) -> set[str]:
    raw = (node.get("metadata", {}).get("annotations") or {}).get(MANAGED_RESOURCES_ANNOTATION)
    return {n for n in (raw or "").split(",") if n}


def is_kwok_node(node: Obj) -> bool:
    annotations = node.get("metadata", {}).get("annotations") or {}
    return annotations.get(KWOK_NODE) == KWOK_NODE_VALUE


def dra_held_devices(topology: NodeTopology) -> set[str]:
    """IDs (GPU and MIG UUIDs) of the devices the extended-resource path must not hand out
    because a DRA claim holds them or part of them: a GPU held through DRA, a GPU with a MIG
    device held through DRA (a whole-GPU pod would share it), and every MIG device of a GPU
    held through DRA as a whole."""
    taken: set[str] = set()
    for gpu in topology.gpus:
        whole = any(h.kind == HOLDER_DRA for h in gpu.status.holders)
        parts = [m for m in gpu.mig_devices if any(h.kind == HOLDER_DRA for h in m.holders)]
        if whole or parts:
            taken.add(gpu.id)
        taken.update(m.uuid for m in (gpu.mig_devices if whole else parts))
    return taken


def wanted_capacity(resources: Mapping[str, Resource], dra_held: Collection[str] = ()) -> Wanted:
    """``{name: (capacity, allocatable)}``: what the kubelet would publish, with GPU and MIG
    devices that DRA claims hold left out of ``allocatable`` (``dra_held``: see
    :func:`dra_held_devices`; empty when no DRA publisher shares the node's GPUs)."""
    wanted = capacity_of(dict(resources))
    if not dra_held:
        return wanted
    for name, resource in resources.items():
        if resource.reports_allocations:
            free = sum(
                1 for d in resource.devices if d.healthy and dpsharing.base_id(d.id) not in dra_held
            )
            wanted[name] = (resource.capacity, free)
    return wanted


def status_patch(node: Obj, wanted: Wanted, managed: Collection[str] = ()) -> Obj | None:
    """The merge patch making ``node``'s status show ``wanted`` (None if it already does).

    ``managed`` names resources of ours that may be on the node; those not wanted any more are
    deleted (``null`` in a merge patch). Nothing else is ever touched.
    """
    status = node.get("status") or {}
    capacity = status.get("capacity") or {}
    allocatable = status.get("allocatable") or {}
    cap_patch: dict[str, str | None] = {}
    alloc_patch: dict[str, str | None] = {}
    for name, (cap, alloc) in wanted.items():
        if capacity.get(name) != str(cap):
            cap_patch[name] = str(cap)
        if allocatable.get(name) != str(alloc):
            alloc_patch[name] = str(alloc)
    for name in set(managed) - set(wanted):
        if name in capacity:
            cap_patch[name] = None
        if name in allocatable:
            alloc_patch[name] = None
    if not cap_patch and not alloc_patch:
        return None
    body: dict[str, Any] = {}
    if cap_patch:
        body["capacity"] = cap_patch
    if alloc_patch:
        body["allocatable"] = alloc_patch
    return {"status": body}


def resource_version(obj: Obj) -> int:
    """An object's resourceVersion as a number (etcd's revision), 0 if it is not one."""
    raw = (obj.get("metadata") or {}).get("resourceVersion") or ""
    return int(raw) if str(raw).isdigit() else 0


def annotation_value(names: set[str]) -> str:
    return ",".join(sorted(names))


@dataclass
class _Record:
    kwok: bool
    wanted: Wanted


@dataclass
class KwokCapacityController:
    """Keeps the GPU capacity of KWOK nodes equal to their topology records."""

    api: client.ApiClient
    namespace: str
    prefix: str
    metrics: Metrics
    mig_strategy: str = ""
    workers: int = 32
    resync_seconds: float = 300.0  # a full pass over the nodes (0: none)
    # The kwok-dra-plugin publishes the same GPUs: leave DRA-held ones out of allocatable.
    dra_shares_gpus: bool = False
    records: dict[str, _Record] = field(default_factory=dict)  # node name -> record
    _record_of_cm: dict[str, str] = field(default_factory=dict)  # CM name -> node name
    # node -> resource names this process published there (covers an annotation lost by hand)
    _published: dict[str, set[str]] = field(default_factory=dict)
    # node -> resourceVersion our last successful write to it returned
    _written: dict[str, int] = field(default_factory=dict)
    patches: int = 0

    def __post_init__(self) -> None:
        core = client.CoreV1Api(self.api)
        self._core = core
        self._cms = Reflector(
            core.list_namespaced_config_map,
            name=f"configmaps/{self.namespace}",
            namespace=self.namespace,
        )
        self._nodes = Reflector(core.list_node, name="nodes", transform=slim_node)
        self.synced = asyncio.Event()
        self.queue = WorkQueue("kwok-capacity", metrics=self.metrics.workqueue)

    # -- event intake -------------------------------------------------------------------------

    def _enqueue(self, node_name: str) -> None:
        self.queue.add(node_name)

    def _node_of_configmap(self, obj: Obj) -> str | None:
        meta = obj.get("metadata", {})
        name = str(meta.get("name", ""))
        if not name.startswith(f"{self.prefix}-"):
            return None
        labelled = (meta.get("labels") or {}).get(NODE_NAME_LABEL)
        return str(labelled) if labelled else name.removeprefix(f"{self.prefix}-")

    def on_configmap(self, event: WatchEvent) -> None:
        name = str(event.obj.get("metadata", {}).get("name", ""))
        if event.type == DELETED:
            node_name = self._record_of_cm.pop(name, None)
            if node_name is not None:
                self.records.pop(node_name, None)
                self._enqueue(node_name)
            return
        node_name = self._node_of_configmap(event.obj)
        if node_name is None:
            return
        try:
            topology = parse_topology_configmap(event.obj, node_name)
        except TopologyFormatError as exc:
            # Not a record (or a broken one): keep the last good one.
            log.debug("configmap.skipped", name=name, error=str(exc))
            return
        resources = node_resources(topology, self.mig_strategy)
        held = dra_held_devices(topology) if self.dra_shares_gpus else set()
        record = _Record(kwok=topology.kwok, wanted=wanted_capacity(resources, held))
        self._record_of_cm[name] = node_name
        if self.records.get(node_name) != record:
            self.records[node_name] = record
            self._enqueue(node_name)

    def on_node(self, event: WatchEvent) -> None:
        name = str(event.obj.get("metadata", {}).get("name", ""))
        if event.type == DELETED:
            self._published.pop(name, None)
            self._written.pop(name, None)
            return
        if name in self.records or name in self._published or managed_names(event.obj):
            self._enqueue(name)

    # -- reconciliation -----------------------------------------------------------------------

    async def reconcile(self, node_name: str) -> None:
        node = self._nodes.cache.get(node_name)
        if node is None:
            return  # reconciled when the node appears
        if resource_version(node) < self._written.get(node_name, 0):
            return  # our own write is not in the cache yet; its watch event queues us again
        record = self.records.get(node_name)
        listed = managed_names(node)
        published = self._published.setdefault(node_name, set())
        if record is None and not listed and not published:
            return  # never ours: leave hand-made capacity alone
        if not (is_kwok_node(node) or (record is not None and record.kwok)):
            return  # a real node: its kubelet and our device plugin publish capacity there
        wanted = record.wanted if record is not None else {}
        names = set(wanted)
        managed = listed | published
        if record is not None:
            # A node in a GPU pool: NVIDIA resource names are ours even if never listed
            # (e.g. a MIG profile published before the annotation could be written).
            status = node.get("status") or {}
            present = {*(status.get("capacity") or {}), *(status.get("allocatable") or {})}
            managed |= {n for n in present if is_ours_by_name(n)}
        bound = log.bind(node=node_name)
        patch: Obj = status_patch(node, wanted, managed) or {}
        if listed != names:
            # The names we publish travel in the same write as the capacity (``nodes/status``
            # persists metadata changes too): one request per node instead of two, and atomic,
            # so a crash can neither orphan a resource nor list one that is not there.
            value = annotation_value(names) or None
            patch["metadata"] = {"annotations": {MANAGED_RESOURCES_ANNOTATION: value}}
        if patch and not await self._patch_status(node_name, patch, bound):
            return  # the node is gone
        published.clear()
        published.update(names)

    async def _remember_write(self, node_name: str, resp: Any) -> None:
        """Note the resourceVersion the apiserver gave the node for our write."""
        try:
            body = await resp.json()
        finally:
            resp.release()
        version = resource_version(body) if isinstance(body, dict) else 0
        if version:
            self._written[node_name] = max(version, self._written.get(node_name, 0))

    async def _patch_status(self, node_name: str, patch: Obj, bound: Any) -> bool:
        patch_status: Any = self._core.patch_node_status

        async def call() -> None:
            resp = await patch_status(
                node_name,
                patch,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
            await raise_for_status(resp)
            await self._remember_write(node_name, resp)

        started = time.perf_counter()
        try:
            await retrying(call, what=f"patch status of node {node_name}")
        except Exception as exc:
            if is_not_found(exc):
                self.metrics.kwok_patches.labels("gone").inc()
                return False
            self.metrics.kwok_patches.labels("error").inc()
            raise  # the queue retries the node with back-off
        self.patches += 1
        self.metrics.kwok_write_seconds.labels("status").observe(time.perf_counter() - started)
        self.metrics.kwok_patches.labels("ok").inc()
        bound.info("node.capacity_patched", patch=json.dumps(patch, sort_keys=True))
        return True

    # -- tasks --------------------------------------------------------------------------------

    async def _follow(self, reflector: Reflector, handler: Any, stop: asyncio.Event) -> None:
        async for event in reflector.events(stop):
            if event.type == SYNCED:
                if self._cms.synced.is_set() and self._nodes.synced.is_set():
                    if not self.synced.is_set():
                        # Cover nodes whose capacity is ours but whose record vanished meanwhile.
                        for name in self._nodes.cache:
                            self.on_node(WatchEvent("ADDED", self._nodes.cache[name]))
                    self.synced.set()
                continue
            handler(event)
            self.metrics.kwok_nodes.set(sum(1 for r in self.records.values() if r.kwok or r.wanted))

    async def _worker(self) -> None:
        # Decide only on complete caches (the initial sync queues every node). Waiting before
        # taking a key matters: a worker parked on ``synced`` while holding a node it had not
        # marked busy let a second worker take the same node (issue 20).
        await self.synced.wait()
        await run_worker(self.queue, self.reconcile, on_failure=_log_failure)

    async def _resync(self) -> None:
        """Every node once per ``resync_seconds``: cheap (a dict comparison per node), and it
        repairs capacity someone changed by hand without a record change we act on."""
        await self.synced.wait()
        while True:
            await asyncio.sleep(self.resync_seconds)
            for name in list(self._nodes.cache):
                self.on_node(WatchEvent("ADDED", self._nodes.cache[name]))

    async def run(self, stop: asyncio.Event, elector: LeaderElector | None = None) -> None:
        """Follow the watches until ``stop``; reconcile always (``elector`` None) or only while
        this replica holds the Lease (a standby's caches and queue stay warm for a takeover)."""
        tasks = [
            asyncio.create_task(self._follow(self._cms, self.on_configmap, stop), name="kwok-cms"),
            asyncio.create_task(self._follow(self._nodes, self.on_node, stop), name="kwok-nodes"),
        ]
        if elector is None:
            tasks += self._start_workers()
        else:
            tasks.append(asyncio.create_task(elector.lead(stop, self._lead), name="kwok-lead"))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopped:
                    task.result()  # a dead watch stops the service (Kubernetes restarts it)
        finally:
            stopped.cancel()
            await _cancel(tasks)

    def _start_workers(self) -> list[asyncio.Task[None]]:
        workers = [
            asyncio.create_task(self._worker(), name=f"kwok-worker-{i}")
            for i in range(self.workers)
        ]
        if self.resync_seconds <= 0:
            return workers  # (a task that returned would stop the service)
        return [*workers, asyncio.create_task(self._resync(), name="kwok-resync")]

    async def _lead(self, lost: asyncio.Event) -> None:
        """While leading: every node once (another leader may have written meanwhile, and a
        node being reconciled when we last lost the Lease left the queue), then the events."""
        await self.synced.wait()
        for name in list(self._nodes.cache):
            self.on_node(WatchEvent("ADDED", self._nodes.cache[name]))
        workers = self._start_workers()
        try:
            await lost.wait()
        finally:
            await _cancel(workers)

    def wanted_snapshot(self) -> Mapping[str, Wanted]:
        return {name: r.wanted for name, r in self.records.items()}


def _log_failure(node_name: str, exc: Exception, retry_in: float | None) -> None:
    log.warning(
        "node.reconcile_failed",
        node=node_name,
        error=str(exc)[:200] or type(exc).__name__,
        retry_in=None if retry_in is None else round(retry_in, 2),
    )


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
