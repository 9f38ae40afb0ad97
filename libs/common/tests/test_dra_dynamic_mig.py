"""Dynamic MIG devices: every placement, shared counters, and slices within the API limits."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fgo_common import dradevices, draslices
from fgo_common.config import parse_cluster_config
from fgo_common.identity import mig_uuid
from fgo_common.names import DRA_NAMES
from fgo_common.nodebuild import build_node_topology
from fgo_common.profiles import BUILTIN_CATALOG
from fgo_common.profiles.mig_layout import (
    MigInstance,
    MigLayoutError,
    MigRequest,
    memory_slice_count,
    plan_layout,
    possible_instances,
)
from fgo_common.profiles.model import GpuProfile
from fgo_common.topology import NodeTopology

_KEYS = list(BUILTIN_CATALOG.keys())
MIG_PRODUCTS = [k for k in _KEYS if BUILTIN_CATALOG.get(k).mig_capable]


def dynamic_node(product: str, count: int = 1) -> NodeTopology:
    config = parse_cluster_config(
        {
            "nodePools": {
                "p": {"gpus": [{"type": product, "count": count}], "mig": {"dynamic": True}}
            }
        }
    )
    return build_node_topology("node-a", config.pools["p"], config, kwok=True)


def quantity(value: str) -> int:
    for suffix, factor in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if value.endswith(suffix):
            return int(value.removesuffix(suffix)) * factor
    return int(value)


def consumed(device: dict[str, Any]) -> dict[str, int]:
    (entry,) = device["consumesCounters"]
    return {k: quantity(v["value"]) for k, v in entry["counters"].items()}


@pytest.mark.parametrize(
    ("product", "migs", "sms", "memory"),
    [
        # 1g.5gb x7, +me x7, 1g.10gb x4, 2g x3, 3g x2, 4g x1, 7g x1 placements
        ("A100-SXM4-40GB", 25, 108, "40Gi"),
        ("H100", 25, 132, "81559Mi"),
    ],
)
def test_every_placement_is_published_with_the_gpu(
    product: str, migs: int, sms: int, memory: str
) -> None:
    topology = dynamic_node(product, 2)
    gpu = topology.gpus[1]
    devices = [d for d in dradevices.node_devices(topology) if d.gpu_index == 1]
    profile = dradevices.resolve_profile(gpu, topology)
    expected = sum(len(m.placements) for m in profile.mig_profiles)
    assert expected == migs
    assert len(devices) == 1 + migs
    assert devices[0].name == "gpu-1" and devices[0].uuid == gpu.id
    names = [d.name for d in devices[1:]]
    assert len(set(names)) == migs
    for instance in possible_instances(profile):
        name = DRA_NAMES.mig_device_name(
            1, instance.name, instance.gi_profile_id, instance.placement.start
        )
        assert name in names
    (counter_set,) = [
        s for s in dradevices.node_counter_sets(topology) if s["name"].startswith("gpu-1-")
    ]
    assert counter_set["name"] == "gpu-1-counter-set"
    counters = counter_set["counters"]
    assert counters["multiprocessors"] == {"value": str(sms)}
    assert counters["memory"] == {"value": memory}
    assert [k for k in counters if k.startswith("memory-slice-")] == [
        f"memory-slice-{i}" for i in range(8)
    ]
    assert len(counters) <= dradevices.MAX_COUNTERS_PER_SET


@pytest.mark.parametrize("key", MIG_PRODUCTS)
def test_counters_of_devices_fit_the_gpu_set(key: str) -> None:
    topology = dynamic_node(BUILTIN_CATALOG.get(key).name)
    (counter_set,) = dradevices.node_counter_sets(topology)
    totals = {k: quantity(v["value"]) for k, v in counter_set["counters"].items()}
    devices = dradevices.node_devices(topology)
    full = devices[0].device
    # The full GPU consumes exactly the whole set.
    assert consumed(full) == totals
    assert full["consumesCounters"][0]["counterSet"] == counter_set["name"]
    for entry in devices[1:]:
        device = entry.device
        used = consumed(device)
        assert set(used) <= set(totals), device["name"]
        assert all(v > 0 for v in used.values())
        assert used["memory"] <= totals["memory"]
        # A MIG device consumes the memory slices its capacities announce.
        slices = sorted(k for k in used if k.startswith("memory-slice-"))
        announced = sorted(
            "memory-slice-" + k.removeprefix("memorySlice")
            for k in device["capacity"]
            if k.startswith("memorySlice")
        )
        assert slices == announced
        assert len(device["attributes"]) + len(device["capacity"]) <= 32
        # The full GPU plus any MIG device of it overdraws some counter.
        assert any(used[k] + totals[k] > totals[k] for k in used)


def _fits(chosen: list[dict[str, int]], totals: dict[str, int]) -> bool:
    use: Counter[str] = Counter()
    for c in chosen:
        use.update(c)
    return all(use[k] <= totals[k] for k in use)


def _valid(profile: GpuProfile, chosen: list[MigInstance]) -> bool:
    try:
        plan_layout(profile, [MigRequest(i.name, i.placement.start) for i in chosen])
    except MigLayoutError:
        return False
    return True


@pytest.mark.parametrize("key", MIG_PRODUCTS)
def test_counters_admit_exactly_the_layouts_a_real_gpu_accepts(key: str) -> None:
    """Every combination of placements that does not share a memory slice: the scheduler's
    counter check and the layout planner (NVML's rules) agree on each one."""
    profile = BUILTIN_CATALOG.get(key)
    topology = dynamic_node(profile.name)
    (counter_set,) = dradevices.node_counter_sets(topology)
    totals = {k: quantity(v["value"]) for k, v in counter_set["counters"].items()}
    instances = possible_instances(profile)
    costs = [dradevices.instance_counters(i) for i in instances]
    checked = accepted = 0

    def walk(start: int, chosen: list[int], used_slices: set[int]) -> None:
        nonlocal checked, accepted
        picked = [instances[i] for i in chosen]
        fits = _fits([costs[i] for i in chosen], totals)
        assert fits == _valid(profile, picked), [(i.name, i.placement.start) for i in picked]
        checked += 1
        accepted += fits
        for j in range(start, len(instances)):
            slices = set(instances[j].memory_slices)
            if slices & used_slices:
                continue  # sharing a memory-slice counter of value 1: can never fit
            walk(j + 1, [*chosen, j], used_slices | slices)

    walk(0, [], set())
    assert checked > 100 and accepted > 50


def test_gi_ids_are_distinct_for_coexisting_placements_and_uuids_follow() -> None:
    for key in MIG_PRODUCTS:
        profile = BUILTIN_CATALOG.get(key)
        total = memory_slice_count(profile)
        instances = possible_instances(profile)
        for a in instances:
            for b in instances:
                if a is not b and not set(a.memory_slices) & set(b.memory_slices):
                    assert a.gi_id != b.gi_id, (a, b)
        assert {i.gi_id for i in instances if i.placement.size == total} == {0}
    topology = dynamic_node("H100")
    gpu = topology.gpus[0]
    device = {d.name: d for d in dradevices.node_devices(topology)}["gpu-0-mig-1g10gb-19-6"]
    assert device.uuid == mig_uuid(gpu.id, 13, 0)
    assert device.device["attributes"]["parentUUID"] == {"string": gpu.id}


@pytest.mark.parametrize(
    ("gpus", "counter_slices", "device_slices"), [(1, 1, 1), (8, 1, 4), (9, 2, 4)]
)
def test_slices_respect_the_api_limits(gpus: int, counter_slices: int, device_slices: int) -> None:
    topology = dynamic_node("H100", gpus)
    devices = [d.device for d in dradevices.node_devices(topology)]
    sets = dradevices.node_counter_sets(topology)
    assert len(devices) == 26 * gpus and len(sets) == gpus
    target = draslices.PoolTarget("node-a", "uid-a", draslices.kwok_slice_base("node-a"), "test")
    slices = draslices.build_slices(target, devices, 3, sets)
    with_sets = [s for s in slices if "sharedCounters" in s["spec"]]
    with_devices = [s for s in slices if "devices" in s["spec"]]
    assert (len(with_sets), len(with_devices)) == (counter_slices, device_slices)
    assert not [s for s in slices if "sharedCounters" in s["spec"] and "devices" in s["spec"]]
    assert all(len(s["spec"]["sharedCounters"]) <= 8 for s in with_sets)
    assert all(len(s["spec"]["devices"]) <= 64 for s in with_devices)
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {len(slices)}
    assert sum(len(s["spec"]["devices"]) for s in with_devices) == len(devices)
    names = [s["metadata"]["name"] for s in slices]
    assert len(set(names)) == len(names)
    plan = draslices.plan_pool(target, devices, slices, sets)
    assert plan.unchanged


def test_non_dynamic_pool_has_no_counters() -> None:
    config = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "H100", "count": 1}]}}})
    topology = build_node_topology("node-a", config.pools["p"], config, kwok=True)
    assert dradevices.node_counter_sets(topology) == []
    assert [d.name for d in dradevices.node_devices(topology)] == ["gpu-0"]
    assert "consumesCounters" not in dradevices.node_devices(topology)[0].device


def test_dynamic_flag_survives_the_record_round_trip() -> None:
    topology = dynamic_node("H100")
    assert NodeTopology.from_yaml(topology.to_yaml()).mig_dynamic
    assert (
        "migDynamic"
        not in NodeTopology.from_yaml(
            build_node_topology(
                "n",
                (
                    c := parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "H100"}]}}})
                ).pools["p"],
                c,
                kwok=True,
            ).to_yaml()
        ).to_dict()
    )


@pytest.mark.parametrize(
    ("mig", "message"),
    [
        ({"dynamic": "yes"}, "nodePools.p.mig.dynamic: must be true or false"),
        ({"dynamic": True, "config": "all-1g.10gb"}, "nodePools.p.mig.config: not allowed"),
        ({"dynamic": True, "other": 1}, "nodePools.p.mig.other: unknown key"),
    ],
)
def test_dynamic_config_errors_name_the_field(mig: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "H100"}], "mig": mig}}})


def test_dynamic_needs_a_mig_capable_gpu() -> None:
    with pytest.raises(ValueError, match=r"nodePools\.p\.mig\.dynamic: needs a MIG-capable GPU"):
        parse_cluster_config(
            {"nodePools": {"p": {"gpus": [{"type": "Tesla T4"}], "mig": {"dynamic": True}}}}
        )
