"""The node status patch of KWOK mode (pure logic): only our keys, removals, no-ops."""

from __future__ import annotations

from typing import Any

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
