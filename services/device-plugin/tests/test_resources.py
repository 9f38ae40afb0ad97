"""What a node advertises for each MIG strategy, health and otherDevices (pure logic)."""

from __future__ import annotations

import pytest
from dp_helpers import topology
from fgo_device_plugin.resources import (
    capacity_of,
    node_resources,
    other_device_id,
    socket_name,
)

MIG_LAYOUT = {1: [("3g.40gb", 0), ("1g.10gb", 4), ("1g.10gb", 5)], 2: [("7g.80gb", 0)]}


def test_plain_gpus_are_nvidia_gpu_with_uuid_ids_numa_and_index_order() -> None:
    record = topology(8)
    resources = node_resources(record)
    assert list(resources) == ["nvidia.com/gpu"]
    gpu = resources["nvidia.com/gpu"]
    assert [d.id for d in gpu.devices] == [g.id for g in record.gpus]
    assert [d.numa_node for d in gpu.devices] == [g.numa_node for g in record.gpus]
    assert {d.numa_node for d in gpu.devices} == {0, 1}
    assert all(d.healthy for d in gpu.devices)


def test_unhealthy_gpu_stays_listed_but_not_allocatable() -> None:
    resources = node_resources(topology(4, unhealthy=[2]))
    gpu = resources["nvidia.com/gpu"]
    assert [d.healthy for d in gpu.devices] == [True, True, False, True]
    assert capacity_of(resources) == {"nvidia.com/gpu": (4, 3)}


def test_strategy_none_ignores_mig_layouts() -> None:
    record = topology(4, strategy="none", mig=MIG_LAYOUT)
    assert capacity_of(node_resources(record)) == {"nvidia.com/gpu": (4, 4)}


def test_strategy_single_advertises_mig_devices_as_nvidia_gpu() -> None:
    record = topology(4, strategy="single", mig=MIG_LAYOUT)
    gpu = node_resources(record)["nvidia.com/gpu"]
    mig_ids = [m.uuid for m in record.gpus[1].mig_devices] + [record.gpus[2].mig_devices[0].uuid]
    # GPUs 0 and 3 are not MIG-enabled: still advertised (lenient, see module docstring).
    expected = [record.gpus[0].id, *mig_ids, record.gpus[3].id]
    assert [d.id for d in gpu.devices] == expected
    assert all(i.startswith("MIG-") for i in mig_ids)


def test_strategy_mixed_one_resource_per_profile() -> None:
    record = topology(4, strategy="mixed", mig=MIG_LAYOUT)
    resources = node_resources(record)
    assert capacity_of(resources) == {
        "nvidia.com/gpu": (2, 2),
        "nvidia.com/mig-1g.10gb": (2, 2),
        "nvidia.com/mig-3g.40gb": (1, 1),
        "nvidia.com/mig-7g.80gb": (1, 1),
    }
    assert [d.id for d in resources["nvidia.com/mig-1g.10gb"].devices] == [
        m.uuid for m in record.gpus[1].mig_devices if m.profile == "1g.10gb"
    ]
    # MIG devices inherit their parent's NUMA node.
    assert resources["nvidia.com/mig-7g.80gb"].devices[0].numa_node == record.gpus[2].numa_node


def test_strategy_override_beats_the_record() -> None:
    record = topology(4, strategy="none", mig=MIG_LAYOUT)
    assert "nvidia.com/mig-7g.80gb" in node_resources(record, "mixed")


def test_mig_device_of_unhealthy_parent_is_unhealthy() -> None:
    record = topology(4, strategy="mixed", mig=MIG_LAYOUT, unhealthy=[2])
    assert capacity_of(node_resources(record))["nvidia.com/mig-7g.80gb"] == (1, 0)
    record.gpus[1].mig_devices[1].health = "Unhealthy"
    assert capacity_of(node_resources(record))["nvidia.com/mig-1g.10gb"] == (2, 1)


def test_media_extension_profile_name_uses_a_dot() -> None:
    record = topology(1, strategy="mixed", mig={0: [("1g.10gb", 0)]})
    record.gpus[0].mig_devices[0].profile = "1g.10gb+me"
    assert list(node_resources(record)) == ["nvidia.com/mig-1g.10gb.me"]


def test_other_devices_get_deterministic_ids_and_never_shadow_real_ones() -> None:
    record = topology(
        2,
        strategy="mixed",
        mig={1: [("7g.80gb", 0)]},
        other=[("example.com/nic", 3), ("nvidia.com/mig-7g.80gb", 7), ("example.com/none", 0)],
    )
    resources = node_resources(record)
    assert capacity_of(resources) == {
        "nvidia.com/gpu": (1, 1),
        "nvidia.com/mig-7g.80gb": (1, 1),
        "example.com/nic": (3, 3),
    }
    nic = resources["example.com/nic"]
    assert [d.id for d in nic.devices] == [other_device_id("example.com/nic", i) for i in range(3)]
    assert nic.devices == node_resources(record)["example.com/nic"].devices
    assert not nic.reports_allocations
    assert nic.devices[0].numa_node is None


def test_no_gpus_means_no_gpu_resource() -> None:
    assert node_resources(topology(0)) == {}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("nvidia.com/gpu", "fake-nvidia.com-gpu.sock"),
        ("nvidia.com/mig-1g.10gb", "fake-nvidia.com-mig-1g.10gb.sock"),
        ("example.com/a b", "fake-example.com-a-b.sock"),
    ],
)
def test_socket_names(resource: str, expected: str) -> None:
    assert socket_name(resource) == expected
