"""The compute-domain.nvidia.com kubelet driver: IMEX channels on real nodes (DRIVER_MODE=
compute-domain; docs/computedomains.md, "Real nodes").

The same Driver (claim locks, checkpoint, CDI store, idempotent prepare) and kubelet servers as
the GPU driver; what differs is plugged in here:

* the devices: the node publishes one ResourceSlice pool with ``channel-0`` (``type=channel``,
  ``id=0``: ``fgo_common.computedomain.channel_device``, the device the KWOK publisher builds),
  owned by the Node, written with ``fgo_common.drapublish``; no topology record is needed;
* prepare: each result must be ``channel-<n>`` of this node's pool; the claim's opaque
  ``ComputeDomainChannelConfig`` (driver compute-domain.nvidia.com) gives ``domainID`` and
  ``allocationMode``: ``All`` injects every channel (0..2047, NVIDIA's channel count), ``Single``
  (the default) the allocated one. The checkpoint keeps both in the device's ``sharing`` pairs,
  so a spec lost from a tmpfs CDI root is rebuilt without the API server;
* CDI edits: as NVIDIA's plugin, one device node per channel at
  ``/dev/nvidia-caps-imex-channels/channel<N>``; there is no IMEX driver, so the node is a
  stand-in: a character device with /dev/null's numbers (1:3), ``hostPath: /dev/null``. Env (the
  reference's, NVIDIA sets none for channels): ``COMPUTE_DOMAIN_DEVICE_<device>_RESOURCE_CLAIM=
  <claim UID>`` per device, and spec-wide ``KUBERNETES_NODE_NAME``, ``DRA_RESOURCE_DRIVER_NAME``
  plus ``COMPUTE_DOMAIN_UUID`` (the domain) and ``IMEX_CHANNELS`` (the injected channel ids,
  ``all`` or a list) so a script can see what it got without listing /dev.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

import structlog
from fgo_common import computedomain as cdn
from fgo_common import draslices
from fgo_common.drapublish import publish_pool
from fgo_common.kube.served import SliceApi
from fgo_common.kube.watch import DELETED, SYNCED, Reflector, WatchEvent
from fgo_common.runtime.runner import ServiceContext
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry, Counter

from fgo_dra_plugin.cdi import CDI_VERSION
from fgo_dra_plugin.checkpoint import PreparedDevice
from fgo_dra_plugin.driver import ClaimError, ClaimRef, Driver, Obj
from fgo_dra_plugin.settings import Settings

log = structlog.get_logger(__name__)

CHANNEL_DEVICE_DIR = "/dev/nvidia-caps-imex-channels"
# The stand-in device node: /dev/null's numbers, so opening the channel works and does nothing.
STAND_IN_HOST_PATH = "/dev/null"
STAND_IN_MAJOR, STAND_IN_MINOR = 1, 3
ALLOCATION_MODE_KEY = "allocationMode"
DOMAIN_ID_KEY = "domainID"
_CHANNEL_NAME = re.compile(r"^channel-(\d+)$")
_NOT_ENV_CHARS = re.compile(r"[^A-Za-z0-9_]")
_FIELD_MANAGER_PREFIX = "fake-gpu-operator/"
_RETRY_SECONDS = 2.0


def channel_path(channel_id: int) -> str:
    return f"{CHANNEL_DEVICE_DIR}/channel{channel_id}"


def published_channels() -> dict[str, Obj]:
    """Device name -> device of what this node publishes (NVIDIA: channel 0 only)."""
    device = cdn.channel_device(0)
    return {device["name"]: device}


def channel_config(allocation: Obj, request: str) -> tuple[str, str]:
    """(domainID, allocationMode) of ``request`` from the claim's opaque configs of our driver
    (class configs first, claim configs override, as the API orders them); ("", "Single")
    without one. An unknown kind or mode fails the claim."""
    domain, mode = "", "Single"
    for entry in (allocation.get("devices") or {}).get("config") or []:
        opaque = entry.get("opaque") or {}
        if opaque.get("driver") != cdn.DRIVER:
            continue
        requests = entry.get("requests") or []
        if requests and request not in requests:
            continue
        params = opaque.get("parameters") or {}
        kind = params.get("kind")
        if kind == cdn.DAEMON_CONFIG_KIND:
            raise ClaimError(
                "prepare devices failed: ComputeDomainDaemonConfig is not supported here "
                "(no IMEX daemons are simulated)"
            )
        if kind != cdn.CHANNEL_CONFIG_KIND:
            raise ClaimError(
                "prepare devices failed: error generating configResultsMap: unknown opaque "
                f"config kind {kind!r} for driver {cdn.DRIVER}"
            )
        domain = str(params.get(DOMAIN_ID_KEY) or domain)
        mode = str(params.get(ALLOCATION_MODE_KEY) or mode)
        if mode not in cdn.ALLOCATION_MODES:
            raise ClaimError(
                "prepare devices failed: error validating config: unknown allocationMode "
                f"{mode!r} (allowed: {', '.join(cdn.ALLOCATION_MODES)})"
            )
    return domain, mode


def channel_ids(device: PreparedDevice) -> list[int]:
    """The channels a prepared device injects: all of them in mode All, else its own."""
    pairs = dict(device.sharing)
    if pairs.get(ALLOCATION_MODE_KEY) == "All":
        return list(range(cdn.MAX_CHANNELS))
    match = _CHANNEL_NAME.match(device.device)
    return [int(match.group(1))] if match else []


def device_claim_env(device: str, claim_uid: str) -> str:
    return f"COMPUTE_DOMAIN_DEVICE_{_NOT_ENV_CHARS.sub('_', device)}_RESOURCE_CLAIM={claim_uid}"


def channel_claim_spec(
    kind: Any, claim_uid: str, node_name: str, devices: Sequence[PreparedDevice]
) -> dict[str, Any]:
    cdi_devices = []
    all_ids: set[int] = set()
    domains: set[str] = set()
    for device in devices:
        ids = channel_ids(device)
        all_ids.update(ids)
        if domain := dict(device.sharing).get(DOMAIN_ID_KEY):
            domains.add(domain)
        nodes = [
            {
                "path": channel_path(i),
                "hostPath": STAND_IN_HOST_PATH,
                "type": "c",
                "major": STAND_IN_MAJOR,
                "minor": STAND_IN_MINOR,
                "permissions": "rw",
            }
            for i in ids
        ]
        cdi_devices.append(
            {
                "name": kind.device_name(claim_uid, device.device),
                "containerEdits": {
                    "env": [device_claim_env(device.device, claim_uid)],
                    "deviceNodes": nodes,
                },
            }
        )
    channels = (
        "all" if len(all_ids) == cdn.MAX_CHANNELS else ",".join(str(i) for i in sorted(all_ids))
    )
    env = [
        f"KUBERNETES_NODE_NAME={node_name}",
        f"DRA_RESOURCE_DRIVER_NAME={cdn.DRIVER}",
        f"IMEX_CHANNELS={channels}",
    ]
    if len(domains) == 1:
        env.append(f"COMPUTE_DOMAIN_UUID={next(iter(domains))}")
    return {
        "cdiVersion": CDI_VERSION,
        "kind": str(kind),
        "devices": cdi_devices,
        "containerEdits": {"env": env},
    }


class ChannelDriver(Driver):
    """Driver with channel resolution and channel CDI edits plugged in."""

    async def _prepare_results(
        self, ref: ClaimRef, allocation: Obj, results: Sequence[Obj]
    ) -> tuple[PreparedDevice, ...]:
        published = published_channels()
        prepared: list[PreparedDevice] = []
        for result in results:
            pool, name = str(result.get("pool", "")), str(result.get("device", ""))
            if pool != self.node_name:
                raise ClaimError(
                    f"device {name} of claim {ref.namespace}/{ref.name} is allocated from pool "
                    f"{pool!r}, not from this node's pool {self.node_name!r}"
                )
            if name not in published:
                raise ClaimError(
                    f"device {name} of claim {ref.namespace}/{ref.name} is not a device of node "
                    f"{self.node_name} (it has: {', '.join(sorted(published))})"
                )
            request = str(result.get("request", ""))
            domain, mode = channel_config(allocation, request)
            prepared.append(
                PreparedDevice(
                    request=request,
                    pool=pool,
                    device=name,
                    cdi_device_ids=(self.cdi.kind.device_id(ref.uid, name),),
                    uuid="",
                    share_id=str(result.get("shareID") or ""),
                    sharing=tuple(
                        sorted({ALLOCATION_MODE_KEY: mode, DOMAIN_ID_KEY: domain}.items())
                    ),
                )
            )
        return tuple(prepared)

    def claim_spec(self, uid: str, devices: Sequence[PreparedDevice]) -> dict[str, Any]:
        return channel_claim_spec(self.cdi.kind, uid, self.node_name, devices)


class ChannelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.slice_writes = Counter(
            "fgo_dra_plugin_slice_writes", "ResourceSlice writes by operation.", ["operation"],
            registry=registry,
        )  # fmt: skip


class ChannelNode:
    """Publishes this node's channel pool (``<node>-compute-domain.nvidia.com`` slices, owned
    by the Node) and keeps it in line: a deleted or edited slice is re-applied, a re-created
    Node (new UID) gets it again."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings,
        registry: CollectorRegistry,
        slice_api: SliceApi | None = None,
    ) -> None:
        self.settings = settings
        self.resource = slice_api or SliceApi(api)
        node = settings.node_name
        self.nodes = Reflector(
            client.CoreV1Api(api).list_node, name="node", field_selector=f"metadata.name={node}"
        )
        self.slices = Reflector(
            self.resource.list_resource_slice,
            name="resourceslices",
            field_selector=f"spec.nodeName={node}",
            label_selector=f"{draslices.PUBLISHER_LABEL}={settings.instance}",
            transform=draslices.slice_index_view,
        )
        self.metrics = ChannelMetrics(registry)
        self.field_manager = _FIELD_MANAGER_PREFIX + settings.instance
        self._node: Obj | None = None
        self._slices: dict[str, Obj] = {}
        self._dirty = asyncio.Event()
        self.synced = asyncio.Event()

    def current_devices(self) -> None:
        return None  # the channel driver validates against published_channels()

    def _on_node(self, event: WatchEvent) -> None:
        if event.type != SYNCED:
            self._node = None if event.type == DELETED else event.obj
            self._dirty.set()

    def _on_slice(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            return
        name = event.obj["metadata"]["name"]
        if event.type == DELETED:
            self._slices.pop(name, None)
        else:
            self._slices[name] = event.obj
        self._dirty.set()

    async def _pump(self, reflector: Reflector, handler: Any, stop: asyncio.Event) -> None:
        async for event in reflector.events(stop):
            handler(event)

    async def _sync(self) -> None:
        if not self.settings.publish_slices or self._node is None:
            return
        target = draslices.PoolTarget(
            node_name=self.settings.node_name,
            node_uid=str(self._node["metadata"].get("uid", "")),
            base_name=draslices.node_slice_base(self.settings.node_name, cdn.DRIVER),
            publisher=self.settings.instance,
            driver=cdn.DRIVER,
        )
        result = await publish_pool(
            self.resource,
            target,
            list(published_channels().values()),
            list(self._slices.values()),
            self.field_manager,
        )
        for stored in result.stored:
            self.metrics.slice_writes.labels("apply").inc()
            self._slices[stored["metadata"]["name"]] = draslices.slice_index_view(stored)
        for name in result.deleted:
            self.metrics.slice_writes.labels("delete").inc()
            self._slices.pop(name, None)

    async def run(self, ctx: ServiceContext) -> None:
        ctx.readiness.require("node-synced")
        stop = ctx.stop
        async with asyncio.TaskGroup() as group:
            tasks: list[asyncio.Task[Any]] = [
                group.create_task(self._pump(self.nodes, self._on_node, stop)),
                group.create_task(self._pump(self.slices, self._on_slice, stop)),
            ]
            for reflector in (self.nodes, self.slices):
                waiter = group.create_task(reflector.synced.wait())
                stopped = group.create_task(stop.wait())
                await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
                tasks += [waiter, stopped]
            self._dirty.set()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._dirty.wait()
                if not self._dirty.is_set():
                    continue
                await asyncio.sleep(0.05)  # collect a burst of events
                self._dirty.clear()
                try:
                    await self._sync()
                except Exception as exc:
                    log.warning("node.sync_failed", error=str(exc)[:300] or type(exc).__name__)
                    asyncio.get_running_loop().call_later(_RETRY_SECONDS, self._dirty.set)
                    continue
                if not self.synced.is_set() and self._node is not None:
                    self.synced.set()
                    ctx.readiness.set("node-synced")
                    log.info("node.synced", driver=cdn.DRIVER, devices=len(published_channels()))
            for task in tasks:
                task.cancel()
