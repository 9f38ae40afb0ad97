"""Which KWOK nodes get which slices (pure part of the controller)."""

from __future__ import annotations

import pytest
from fgo_common import dradevices, draslices
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_common.topology import TOPOLOGY_DATA_KEY, TopologyFormatError
from fgo_kwok_dra_plugin.controller import desired_pool, is_kwok_node
from fgo_kwok_dra_plugin.settings import Settings

OPTIONS = dradevices.DeviceOptions()


def node(name: str = "kwok-1", *, kwok: bool = True, deleting: bool = False) -> dict:
    meta: dict = {"name": name, "uid": f"uid-{name}", "annotations": {}}
    if kwok:
        meta["annotations"]["kwok.x-k8s.io/node"] = "fake"
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def configmap(name: str = "kwok-1", *, kwok: bool = True, count: int = 2) -> dict:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "Tesla K80", "count": count}]}}}
    )
    topology = build_node_topology(name, config.pools["p"], config, kwok=kwok)
    topology.generation = 5
    return {
        "metadata": {"name": f"topology-{name}", "labels": {"node-name": name}},
        "data": {TOPOLOGY_DATA_KEY: topology.to_yaml()},
    }


def test_kwok_node_with_a_record_gets_its_pool() -> None:
    desired = desired_pool("kwok-1", node(), configmap(), OPTIONS)
    assert desired is not None
    assert desired.target.base_name == "kwok-kwok-1-gpu"
    assert desired.target.node_uid == "uid-kwok-1"
    assert desired.target.topology_generation == 5
    assert [d["name"] for d in desired.devices] == ["gpu-0", "gpu-1"]
    slices = draslices.build_slices(desired.target, desired.devices, generation=1)
    assert "kwok" in slices[0]["metadata"]["name"]


def test_reference_naming_publishes_gpu_uuid_devices() -> None:
    """DEVICE_NAMING=reference (chart: draPlugin.deviceNaming): the reference's device names,
    with the reference's `model` attribute (present in both namings)."""
    options = dradevices.DeviceOptions(naming="reference")
    desired = desired_pool("kwok-1", node(), configmap(), options)
    assert desired is not None
    uuids = [d["attributes"]["uuid"]["string"] for d in desired.devices]
    assert [d["name"] for d in desired.devices] == [
        "gpu-" + u.lower().removeprefix("gpu-") for u in uuids
    ]
    assert all(d["attributes"]["model"] == {"string": "Tesla K80"} for d in desired.devices)


def test_device_naming_setting() -> None:
    assert load_settings(Settings, {}).naming == "nvidia"
    assert load_settings(Settings, {"DEVICE_NAMING": "reference"}).naming == "reference"
    with pytest.raises(SettingsError, match="DEVICE_NAMING"):
        load_settings(Settings, {"DEVICE_NAMING": "minor"})


def test_the_record_alone_can_mark_a_node_as_kwok() -> None:
    assert desired_pool("kwok-1", node(kwok=False), configmap(kwok=True), OPTIONS) is not None


@pytest.mark.parametrize(
    ("the_node", "the_cm"),
    [
        (None, configmap()),  # node deleted
        (node(), None),  # node left its GPU pool: the record is gone
        (node(deleting=True), configmap()),  # node being deleted
        (node(kwok=False), configmap(kwok=False)),  # a real node: the node plugin publishes
    ],
)
def test_nodes_that_must_not_have_kwok_slices(the_node: dict | None, the_cm: dict | None) -> None:
    assert desired_pool("kwok-1", the_node, the_cm, OPTIONS) is None


def test_unreadable_record_raises_instead_of_withdrawing() -> None:
    broken = configmap()
    broken["data"][TOPOLOGY_DATA_KEY] = "gpus: [ {"
    with pytest.raises(TopologyFormatError):
        desired_pool("kwok-1", node(), broken, OPTIONS)
    broken["data"] = {}
    with pytest.raises(TopologyFormatError):
        desired_pool("kwok-1", node(), broken, OPTIONS)


def test_is_kwok_node_needs_the_fake_value() -> None:
    assert is_kwok_node(node())
    other = node()
    other["metadata"]["annotations"]["kwok.x-k8s.io/node"] = "real"
    assert not is_kwok_node(other)
    assert not is_kwok_node({"metadata": {"name": "x"}})


def test_node_facts_ignore_status_heartbeats() -> None:
    from fgo_kwok_dra_plugin.controller import node_facts

    before = node()
    after = node()
    after["status"] = {
        "conditions": [{"type": "Ready", "lastHeartbeatTime": "2026-01-01T00:00:10Z"}]
    }
    after["metadata"]["resourceVersion"] = "99"
    assert node_facts(before) == node_facts(after)
    assert node_facts(before) != node_facts(node(deleting=True))
    assert node_facts(before) != node_facts(node(kwok=False))


def test_dynamic_mig_node_gets_counter_sets_in_their_own_slice() -> None:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "H100", "count": 2}], "mig": {"dynamic": True}}}}
    )
    topology = build_node_topology("kwok-1", config.pools["p"], config, kwok=True)
    cm = {
        "metadata": {"name": "topology-kwok-1", "labels": {"node-name": "kwok-1"}},
        "data": {TOPOLOGY_DATA_KEY: topology.to_yaml()},
    }
    desired = desired_pool("kwok-1", node(), cm, OPTIONS)
    assert desired is not None
    assert [c["name"] for c in desired.counter_sets] == ["gpu-0-counter-set", "gpu-1-counter-set"]
    assert len(desired.devices) == 2 * 26
    slices = draslices.build_slices(desired.target, desired.devices, 1, desired.counter_sets)
    assert [sorted(s["spec"]) for s in slices] == [
        ["driver", "nodeName", "pool", "sharedCounters"],
        ["devices", "driver", "nodeName", "pool"],
    ]
