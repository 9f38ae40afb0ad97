"""Where a node agent gets its node's topology record from.

``ConfigMapTopologySource`` lists-then-watches the one ConfigMap ``<prefix>-<node>`` (field
selector on its name, so the agent on each of 1000 nodes receives only its own record).
``StaticTopologySource`` is the same interface fed in-process, for tests and benchmarks.

Both yield the newest record only: when records arrive faster than the consumer handles them,
the intermediate ones are skipped (every consumer is level-based). ``None`` means there is no
record (not created yet, or deleted: the node left every GPU pool).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

import structlog
from fgo_common.kube.watch import DELETED, SYNCED, Reflector
from fgo_common.topology import (
    TOPOLOGY_DATA_KEY,
    NodeTopology,
    TopologyFormatError,
    node_topology_configmap_name,
)
from kubernetes_asyncio import client

log = structlog.get_logger(__name__)

_MISSING = object()


class TopologySource(Protocol):
    def updates(self, stop: asyncio.Event) -> AsyncIterator[NodeTopology | None]:
        """The current record, then every change, until ``stop`` is set."""
        ...


class _Latest:
    """A single-slot mailbox: put() overwrites, get() waits for a value newer than the last."""

    def __init__(self) -> None:
        self._value: object = _MISSING
        self._version = 0
        self._taken = 0
        self._error: BaseException | None = None
        self._changed = asyncio.Condition()

    async def put(self, value: NodeTopology | None) -> None:
        async with self._changed:
            self._value = value
            self._version += 1
            self._changed.notify_all()

    async def fail(self, error: BaseException) -> None:
        """Make the reader raise ``error`` (the producer died)."""
        async with self._changed:
            self._error = error
            self._changed.notify_all()

    async def get(self, stop: asyncio.Event) -> tuple[bool, NodeTopology | None]:
        """(True, value) when there is a new value; (False, None) once ``stop`` is set."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: stop.is_set() or self._error is not None or self._version != self._taken
            )
            if self._error is not None:
                raise self._error
            if stop.is_set():
                return False, None
            self._taken = self._version
            value = self._value
        assert value is None or isinstance(value, NodeTopology)
        return True, value

    async def wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()


async def _drain(latest: _Latest, stop: asyncio.Event) -> AsyncIterator[NodeTopology | None]:
    async def wake_on_stop() -> None:
        await stop.wait()
        await latest.wake()

    waker = asyncio.create_task(wake_on_stop())
    try:
        while True:
            fresh, value = await latest.get(stop)
            if not fresh:
                return
            yield value
    finally:
        waker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waker


class StaticTopologySource:
    """In-process records: ``await source.set(record)``."""

    def __init__(self, initial: NodeTopology | object | None = _MISSING) -> None:
        self._latest = _Latest()
        self._initial = initial

    async def set(self, topology: NodeTopology | None) -> None:
        await self._latest.put(topology)

    async def updates(self, stop: asyncio.Event) -> AsyncIterator[NodeTopology | None]:
        if self._initial is not _MISSING:
            initial, self._initial = self._initial, _MISSING
            assert initial is None or isinstance(initial, NodeTopology)
            await self._latest.put(initial)
        async for value in _drain(self._latest, stop):
            yield value


def parse_topology_configmap(obj: dict[str, object], node_name: str = "") -> NodeTopology:
    """The record in a ConfigMap as the API returns it (a dict); TopologyFormatError if bad."""
    data = obj.get("data")
    text = data.get(TOPOLOGY_DATA_KEY) if isinstance(data, dict) else None
    if not isinstance(text, str):
        raise TopologyFormatError(f"no {TOPOLOGY_DATA_KEY} key")
    return NodeTopology.from_yaml(text, node_name)


class ConfigMapTopologySource:
    """The record of one node from ConfigMap ``<prefix>-<node>`` in ``namespace``."""

    def __init__(self, api: client.ApiClient, namespace: str, prefix: str, node_name: str) -> None:
        self.namespace = namespace
        self.name = node_topology_configmap_name(prefix, node_name)
        self.node_name = node_name
        self._reflector = Reflector(
            client.CoreV1Api(api).list_namespaced_config_map,
            name=f"configmap/{namespace}/{self.name}",
            namespace=namespace,
            field_selector=f"metadata.name={self.name}",
        )

    async def updates(self, stop: asyncio.Event) -> AsyncIterator[NodeTopology | None]:
        latest = _Latest()
        watcher = asyncio.create_task(self._watch(latest, stop), name=f"watch-{self.name}")
        try:
            async for value in _drain(latest, stop):
                yield value
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, latest: _Latest, stop: asyncio.Event) -> None:
        try:
            await self._follow(latest, stop)
        except Exception as exc:
            # A watch that cannot go on stops the service (Kubernetes restarts it).
            await latest.fail(exc)

    async def _follow(self, latest: _Latest, stop: asyncio.Event) -> None:
        bound = log.bind(namespace=self.namespace, name=self.name)
        async for event in self._reflector.events(stop):
            if event.type == SYNCED:
                if not self._reflector.cache:
                    bound.info("topology.absent")
                    await latest.put(None)
                continue
            if event.type == DELETED:
                bound.info("topology.deleted")
                await latest.put(None)
                continue
            try:
                topology = parse_topology_configmap(event.obj, self.node_name)
            except TopologyFormatError as exc:
                # Keep serving the last good record; the writer will fix it.
                bound.error("topology.invalid", error=str(exc))
                continue
            await latest.put(topology)
