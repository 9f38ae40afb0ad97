"""Reflector cache transforms (the list-watch protocol itself is tested against the real
apiserver in tests/integration/test_watch.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fgo_common.kube.watch import ADDED, MODIFIED, SYNCED, Reflector, WatchEvent


def _obj(name: str, rv: str, **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "resourceVersion": rv,
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:data": {}}}],
        },
        **extra,
    }


class _Content:
    def __init__(self, lines: list[bytes], stop: asyncio.Event) -> None:
        self._lines = lines
        self._stop = stop

    async def iter_any(self) -> AsyncIterator[bytes]:
        for line in self._lines:
            yield line
        self._stop.set()  # the stream ends; the test is over


class _Response:
    status = 200
    reason = "OK"

    def __init__(self, body: Any = None, content: _Content | None = None) -> None:
        self._body = body
        self.content = content

    async def json(self) -> Any:
        return self._body

    def release(self) -> None:
        pass


def _list_fn(stop: asyncio.Event) -> Any:
    async def list_fn(**kwargs: Any) -> _Response:
        if kwargs.get("watch"):
            event = {"type": "MODIFIED", "object": _obj("a", "3", data={"v": "2"})}
            return _Response(content=_Content([json.dumps(event).encode() + b"\n"], stop))
        items = [_obj("a", "1", data={"v": "1"}), _obj("b", "2", data={"v": "1"})]
        return _Response({"metadata": {"resourceVersion": "2"}, "items": items})

    return list_fn


async def _collect(reflector: Reflector, stop: asyncio.Event) -> list[WatchEvent]:
    events = []
    async with asyncio.timeout(10):
        async for event in reflector.events(stop):
            events.append(event)
    return events


async def test_managed_fields_are_dropped_by_default() -> None:
    stop = asyncio.Event()
    reflector = Reflector(_list_fn(stop), name="t")
    events = await _collect(reflector, stop)
    assert [e.type for e in events] == [ADDED, ADDED, SYNCED, MODIFIED]
    assert all("managedFields" not in o["metadata"] for o in reflector.cache.values())
    assert all("managedFields" not in e.obj.get("metadata", {}) for e in events)
    assert reflector.cache["a"]["data"] == {"v": "2"}
    modified = events[-1]
    assert modified.old is not None and modified.old["data"] == {"v": "1"}


async def test_a_custom_transform_decides_what_is_cached() -> None:
    stop = asyncio.Event()

    def names_only(obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return {"metadata": {"name": meta["name"], "resourceVersion": meta["resourceVersion"]}}

    reflector = Reflector(_list_fn(stop), name="t", transform=names_only)
    events = await _collect(reflector, stop)
    assert [e.type for e in events] == [ADDED, ADDED, SYNCED, MODIFIED]
    assert reflector.cache == {
        "a": {"metadata": {"name": "a", "resourceVersion": "3"}},
        "b": {"metadata": {"name": "b", "resourceVersion": "2"}},
    }


def test_slim_node_keeps_metadata_spec_and_resources_only() -> None:
    node = {
        "metadata": {"name": "n", "labels": {"a": "b"}, "managedFields": [{}]},
        "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
        "status": {
            "capacity": {"nvidia.com/gpu": "8"},
            "allocatable": {"nvidia.com/gpu": "7"},
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": "fake"},
            "images": [{"names": ["x"]}],
        },
    }
    from fgo_common.kube.watch import slim_node

    assert slim_node(node) == {
        "metadata": {"name": "n", "labels": {"a": "b"}},
        "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
        "status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "7"}},
    }


def test_identity_stub_keeps_what_a_reflector_needs() -> None:
    from fgo_common.kube.watch import identity_stub, object_key

    pod = _obj("p", "7", spec={"containers": [{"name": "c"}]})
    pod["metadata"].update(namespace="ns", uid="u-1", labels={"x": "y"})
    stub = identity_stub(pod)
    assert stub == {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "resourceVersion": "7"}
    }
    assert object_key(stub) == object_key(pod) == "ns/p"


def _heartbeats(stop: asyncio.Event, chunks: list[bytes]) -> Any:
    def node(rv: str, beat: str, capacity: str = "8") -> dict[str, Any]:
        return {
            "metadata": {"name": "n", "resourceVersion": rv, "labels": {"a": "b"}},
            "status": {
                "capacity": {"nvidia.com/gpu": capacity},
                "conditions": [{"type": "Ready", "lastHeartbeatTime": beat}],
            },
        }

    async def list_fn(**kwargs: Any) -> _Response:
        if kwargs.get("watch"):
            return _Response(content=_Content(chunks, stop))
        return _Response({"metadata": {"resourceVersion": "1"}, "items": [node("1", "t0")]})

    lines = [
        json.dumps({"type": "MODIFIED", "object": node(rv, beat, cap)}).encode() + b"\n"
        for rv, beat, cap in [
            ("2", "t1", "8"),
            ("3", "t2", "8"),
            ("4", "t2", "7"),
            ("5", "t3", "7"),
        ]
    ]
    # All events in one chunk, then one split across two chunks.
    chunks.extend([b"".join(lines[:3]), lines[3][:10], lines[3][10:]])
    return list_fn


async def test_heartbeats_of_slim_nodes_update_the_cache_without_an_event() -> None:
    from fgo_common.kube.watch import slim_node

    stop = asyncio.Event()
    reflector = Reflector(_heartbeats(stop, []), name="nodes", transform=slim_node)
    events = await _collect(reflector, stop)
    # Heartbeats (only conditions and resourceVersion move) are not delivered; a capacity
    # change is; the cache always has the newest resourceVersion.
    assert [e.type for e in events] == [ADDED, SYNCED, MODIFIED]
    assert events[-1].obj["status"]["capacity"] == {"nvidia.com/gpu": "7"}
    assert reflector.cache["n"]["metadata"]["resourceVersion"] == "5"
    assert reflector.skipped == 3


async def test_other_transforms_deliver_every_change_unless_asked() -> None:
    stop = asyncio.Event()
    reflector = Reflector(_heartbeats(stop, []), name="nodes")
    events = await _collect(reflector, stop)
    assert [e.type for e in events] == [ADDED, SYNCED, MODIFIED, MODIFIED, MODIFIED, MODIFIED]
    stop = asyncio.Event()

    def no_status(obj: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": obj["metadata"]}

    reflector = Reflector(_heartbeats(stop, []), name="n", transform=no_status, skip_unchanged=True)
    events = await _collect(reflector, stop)
    assert [e.type for e in events] == [ADDED, SYNCED]
    assert reflector.cache["n"]["metadata"]["resourceVersion"] == "5"
