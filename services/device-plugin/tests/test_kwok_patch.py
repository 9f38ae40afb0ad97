"""The node status patch of KWOK mode (pure logic): only our keys, removals, no-ops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fgo_device_plugin.kwok import (
    MANAGED_RESOURCES_ANNOTATION,
    is_kwok_node,
    managed_names,
    status_patch,
)


def node(capacity: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "n1", "annotations": annotations or {}},
        "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
    }


BASE = {"cpu": "32", "memory": "256Gi", "pods": "110"}


def test_adds_capacity_and_allocatable_without_touching_others() -> None:
    patch = status_patch(node(BASE), {"nvidia.com/gpu": (8, 7)})
    assert patch == {
        "status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "7"}}
    }


def test_no_patch_when_already_equal() -> None:
    current = {**BASE, "nvidia.com/gpu": "8"}
    assert status_patch(node(current), {"nvidia.com/gpu": (8, 8)}) is None


def test_removes_gone_managed_resources_but_not_foreign_ones() -> None:
    current = {**BASE, "nvidia.com/gpu": "2", "nvidia.com/mig-1g.10gb": "7", "acme.io/x": "1"}
    managed = {"nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/mig-7g.80gb"}
    patch = status_patch(node(current), {"nvidia.com/gpu": (2, 2)}, managed)
    assert patch == {
        "status": {
            "capacity": {"nvidia.com/mig-1g.10gb": None},
            "allocatable": {"nvidia.com/mig-1g.10gb": None},
        }
    }


def test_unmanaged_nvidia_resources_are_left_alone() -> None:
    current = {**BASE, "nvidia.com/gpu": "4"}
    assert status_patch(node(current), {}) is None


def test_node_classification_and_managed_names() -> None:
    assert is_kwok_node(node(BASE, {"kwok.x-k8s.io/node": "fake"}))
    assert not is_kwok_node(node(BASE))
    annotated = node(BASE, {MANAGED_RESOURCES_ANNOTATION: "example.com/nic,nvidia.com/gpu"})
    assert managed_names(annotated) == {"example.com/nic", "nvidia.com/gpu"}
    assert managed_names(node(BASE)) == set()


def test_resource_version_is_numeric_or_zero() -> None:
    from fgo_device_plugin.kwok import resource_version

    assert resource_version({"metadata": {"resourceVersion": "4711"}}) == 4711
    assert resource_version({"metadata": {}}) == 0
    assert resource_version({"metadata": {"resourceVersion": "opaque-1"}}) == 0


async def test_one_worker_per_node_and_no_decision_on_a_copy_older_than_our_write() -> None:
    from fgo_device_plugin.kwok import KwokCapacityController, _Record
    from fgo_device_plugin.metrics import Metrics
    from kubernetes_asyncio.client import ApiClient

    calls: list[tuple[str, Any]] = []

    class Recorder:  # stands in for CoreV1Api's write call (pure logic: no API server)
        async def patch_node_status(self, name: str, body: Any, **_: Any) -> Any:
            calls.append((name, body))
            raise ValueError("not sent")

    async with ApiClient() as api:
        ctl = KwokCapacityController(api=api, namespace="ns", prefix="topology", metrics=Metrics())
        ctl._core = Recorder()  # type: ignore[assignment]
        # An event while a worker has the node: queued once more for afterwards, not in parallel.
        ctl._enqueue("n1")
        assert await ctl.queue.get() == "n1"
        ctl._enqueue("n1")
        ctl._enqueue("n1")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ctl.queue.get(), 0.05)
        ctl.queue.done("n1")
        assert await asyncio.wait_for(ctl.queue.get(), 1) == "n1"
        ctl.queue.done("n1")

        ctl.records["n1"] = _Record(kwok=True, wanted={"nvidia.com/gpu": (8, 8)})
        cached = node(BASE, {"kwok.x-k8s.io/node": "fake"})
        cached["metadata"]["resourceVersion"] = "9"
        ctl._nodes.cache["n1"] = cached
        # Our last write returned a newer version than the cached copy: nothing is decided.
        ctl._written["n1"] = 10
        await ctl.reconcile("n1")
        assert calls == []
        # Once the cache has caught up, the node is written (here: attempted), in one request
        # carrying both the capacity and the list of names we publish; the failure reaches
        # the queue, which retries the node with back-off.
        cached["metadata"]["resourceVersion"] = "10"
        with pytest.raises(ValueError, match="not sent"):
            await ctl.reconcile("n1")
        assert calls == [
            (
                "n1",
                {
                    "status": {
                        "capacity": {"nvidia.com/gpu": "8"},
                        "allocatable": {"nvidia.com/gpu": "8"},
                    },
                    "metadata": {"annotations": {MANAGED_RESOURCES_ANNOTATION: "nvidia.com/gpu"}},
                },
            )
        ]
