"""The node status patch of KWOK mode (pure logic): only our keys, removals, no-ops."""

from __future__ import annotations

from typing import Any

from fgo_device_plugin.kwok import (
    MANAGED_RESOURCES_ANNOTATION,
    has_our_resources,
    is_kwok_node,
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


def test_removes_gone_nvidia_resources_but_not_foreign_ones() -> None:
    current = {**BASE, "nvidia.com/gpu": "2", "nvidia.com/mig-1g.10gb": "7", "acme.io/x": "1"}
    patch = status_patch(node(current), {"nvidia.com/gpu": (2, 2)})
    assert patch == {
        "status": {
            "capacity": {"nvidia.com/mig-1g.10gb": None},
            "allocatable": {"nvidia.com/mig-1g.10gb": None},
        }
    }


def test_removes_other_devices_listed_as_managed() -> None:
    current = {**BASE, "example.com/nic": "2", "acme.io/x": "1"}
    annotated = node(current, {MANAGED_RESOURCES_ANNOTATION: "example.com/nic"})
    patch = status_patch(annotated, {})
    assert patch == {
        "status": {"capacity": {"example.com/nic": None}, "allocatable": {"example.com/nic": None}}
    }
    assert status_patch(node(current), {}, extra_managed={"acme.io/x"}) == {
        "status": {"capacity": {"acme.io/x": None}, "allocatable": {"acme.io/x": None}}
    }


def test_node_classification() -> None:
    assert is_kwok_node(node(BASE, {"kwok.x-k8s.io/node": "fake"}))
    assert not is_kwok_node(node(BASE))
    assert has_our_resources(node({**BASE, "nvidia.com/gpu": "0"}))
    assert not has_our_resources(node({**BASE, "acme.io/x": "1"}))
