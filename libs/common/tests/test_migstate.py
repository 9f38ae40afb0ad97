"""MIG config names -> per-GPU layouts -> record entries; config validation of pool layouts."""

from __future__ import annotations

import pytest
import yaml
from fgo_common import migstate
from fgo_common.config import ConfigError, parse_cluster_config
from fgo_common.identity import mig_uuid
from fgo_common.nodebuild import build_node_topology
from fgo_common.profiles import BUILTIN_CATALOG
from fgo_common.profiles.mig_layout import MigLayoutError
from fgo_common.topology import Holder, NodeTopology

H100 = BUILTIN_CATALOG.get("h100-80gb-hbm3")
T4 = BUILTIN_CATALOG.get("t4")


def _pool_config(mig: str, extra: str = "", gpu: str = "h100-80gb-hbm3") -> str:
    return (
        f"migStrategy: mixed\n{extra}"
        f"nodePools:\n  p:\n    gpus: [{{type: {gpu}, count: 2}}]\n    mig: {{config: {mig}}}\n"
    )


def test_named_layout_becomes_mig_devices_with_deterministic_uuids() -> None:
    config = parse_cluster_config(yaml.safe_load(_pool_config("all-1g.10gb")))
    record = build_node_topology("n1", config.pools["p"], config, kwok=True)
    for gpu in record.gpus:
        assert gpu.mig_enabled
        assert [d.profile for d in gpu.mig_devices] == ["1g.10gb"] * 7
        assert sorted(d.placement_start for d in gpu.mig_devices) == list(range(7))
        for device in gpu.mig_devices:
            assert device.uuid == mig_uuid(gpu.id, device.gi_id, device.ci_id)
            assert device.memory_mib == H100.mig_profile("1g.10gb").memory_mib
            assert device.sm_count == H100.mig_profile("1g.10gb").sm_count
    # Every MIG UUID is unique across the node, and survives a YAML round trip.
    uuids = [d.uuid for g in record.gpus for d in g.mig_devices]
    assert len(set(uuids)) == 14
    again = NodeTopology.from_yaml(record.to_yaml())
    assert [d.uuid for g in again.gpus for d in g.mig_devices] == uuids


def test_balanced_and_disabled() -> None:
    layouts = migstate.layouts_for("all-balanced", [H100])
    assert sorted(i.name for i in layouts[0].instances) == [
        "1g.10gb",
        "1g.10gb",
        "2g.20gb",
        "3g.40gb",
    ]
    assert migstate.layouts_for("all-disabled", [H100, T4]) == [
        migstate.layouts_for("all-disabled", [H100])[0],
        migstate.layouts_for("all-disabled", [T4])[0],
    ]
    assert not migstate.layouts_for("all-disabled", [H100])[0].mig_enabled


def test_custom_config_selects_devices_and_pins_positions() -> None:
    custom = migstate.parse_mig_parted(
        {
            "version": "v1",
            "mig-configs": {
                "split": [
                    {"devices": [0], "mig-enabled": True, "mig-devices": {"3g.40gb": 2}},
                    {
                        "devices": ["1"],
                        "mig-enabled": True,
                        "mig-devices": [{"name": "1g.10gb", "position": 2, "size": 1}],
                    },
                ]
            },
        }
    )
    layouts = migstate.layouts_for("split", [H100, H100, H100], custom)
    assert [i.name for i in layouts[0].instances] == ["3g.40gb", "3g.40gb"]
    assert [(i.name, i.placement.start) for i in layouts[1].instances] == [("1g.10gb", 2)]
    assert not layouts[2].mig_enabled  # selected by no entry


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"x": [{"devices": "some"}]}, "x[0].devices"),
        ({"x": [{"mig-enabled": "yes"}]}, "x[0].mig-enabled"),
        ({"x": [{"mig-enabled": False, "mig-devices": {"1g.10gb": 1}}]}, "mig-enabled is false"),
        ({"x": []}, "non-empty list"),
        ({"x": [{"colour": 1}]}, "unknown keys"),
    ],
)
def test_bad_custom_configs_name_the_field(raw: object, fragment: str) -> None:
    with pytest.raises(MigLayoutError) as info:
        migstate.parse_mig_parted(raw)
    assert fragment in str(info.value)
    assert info.value.reason == "invalid-config"


@pytest.mark.parametrize(
    ("mig", "gpu", "fragment"),
    [
        ("all-2g.10gb", "h100-80gb-hbm3", "unknown MIG layout"),
        ("all-1g.10gb", "Tesla T4", "not MIG-capable"),
        ("too-big", "h100-80gb-hbm3", "slices"),
        ("overlap", "h100-80gb-hbm3", "overlaps"),
    ],
)
def test_impossible_pool_layouts_are_config_errors(mig: str, gpu: str, fragment: str) -> None:
    extra = (
        "migConfigs:\n"
        "  too-big: [{devices: all, mig-enabled: true, mig-devices: {3g.40gb: 2, 2g.20gb: 1}}]\n"
        "  overlap:\n"
        "    - devices: all\n"
        "      mig-enabled: true\n"
        "      mig-devices: [{name: 3g.40gb, position: 0}, {name: 2g.20gb, position: 2}]\n"
    )

    with pytest.raises(ConfigError) as info:
        parse_cluster_config(yaml.safe_load(_pool_config(mig, extra, gpu)))
    assert info.value.path == "nodePools.p.mig.config"
    assert fragment in str(info.value)


def test_custom_pool_config_from_mig_configs() -> None:

    extra = (
        "migConfigs:\n  halves: [{devices: all, mig-enabled: true, mig-devices: {3g.40gb: 2}}]\n"
    )
    config = parse_cluster_config(yaml.safe_load(_pool_config("halves", extra)))
    record = build_node_topology("n1", config.pools["p"], config, kwok=True)
    assert [d.profile for d in record.gpus[1].mig_devices] == ["3g.40gb", "3g.40gb"]


def test_gpu_in_use_counts_mig_holders() -> None:
    layouts = migstate.layouts_for("all-1g.10gb", [H100])
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "h100-80gb-hbm3", "count": 1}]}}}
    )
    record = build_node_topology("n1", config.pools["p"], config, kwok=True)
    gpu = record.gpus[0]
    migstate.apply_layouts([gpu], layouts)
    assert not migstate.gpu_in_use(gpu)
    gpu.mig_devices[3].holders.append(Holder("ns", "pod"))
    assert migstate.gpu_in_use(gpu)
