"""ResourceSlice content and DeviceClasses compared with the NVIDIA DRA driver's (spec §3.5)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from fgo_common import draclasses, dradevices, draslices
from fgo_common.config import parse_cluster_config
from fgo_common.identity import gpu_uuid, mig_uuid
from fgo_common.names import DRA
from fgo_common.nodebuild import build_node_topology
from fgo_common.profiles import BUILTIN_CATALOG
from fgo_common.topology import UNHEALTHY, MigDevice, NodeTopology

NODE = "gpu-node-1"


def h100_node(count: int = 8, node: str = NODE) -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"default": {"gpus": [{"type": "h100", "count": count}]}}}
    )
    return build_node_topology(node, config.pools["default"], config, kwok=True)


def k80_node() -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"default": {"gpus": [{"type": "Tesla K80", "count": 2}]}}}
    )
    return build_node_topology(NODE, config.pools["default"], config, kwok=True)


def by_name(devices: list[dradevices.PublishedDevice]) -> dict[str, dict]:
    return {d.name: d.device for d in devices}


# --------------------------------------------------------------------------------------------
# value conversions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("580.159.04", "580.159.4"),  # leading zero dropped, as Masterminds semver prints it
        ("580.105.08", "580.105.8"),
        ("13.0", "13.0.0"),
        ("9.0", "9.0.0"),
        ("12", "12.0.0"),
        ("v1.2.3", "1.2.3"),
    ],
)
def test_semver_matches_the_drivers_spelling(raw: str, expected: str) -> None:
    assert dradevices.semver(raw) == expected


@pytest.mark.parametrize("raw", ["", "abc", "1.2.3.4", "1..2", "550.54.x"])
def test_semver_rejects_non_versions(raw: str) -> None:
    with pytest.raises(ValueError, match="not a version"):
        dradevices.semver(raw)


@pytest.mark.parametrize(
    ("nvml", "standard"),
    [
        ("00000000:18:00.0", "0000:18:00.0"),
        ("00000000:AB:00.0", "0000:ab:00.0"),
        ("0000:86:00.0", "0000:86:00.0"),
        ("86:00.0", "0000:86:00.0"),
        ("00000001:1E:1F.7", "0001:1e:1f.7"),
    ],
)
def test_pci_bus_id_uses_the_standard_bdf_form(nvml: str, standard: str) -> None:
    assert dradevices.pci_bus_id(nvml) == standard


@pytest.mark.parametrize(
    "bad", ["", "not-a-bus", "00000000:18:00", "100000000:18:00.0", "0:18:00.8"]
)
def test_pci_bus_id_of_garbage_is_none(bad: str) -> None:
    assert dradevices.pci_bus_id(bad) is None


def test_pcie_root_groups_buses_in_32_bus_windows() -> None:
    assert dradevices.pcie_root("0000:18:00.0") == "pci0000:00"
    assert (
        dradevices.pcie_root("0000:2a:00.0") == dradevices.pcie_root("0000:3a:00.0") == "pci0000:20"
    )
    assert dradevices.pcie_root("0001:db:00.0") == "pci0001:c0"


@pytest.mark.parametrize(
    ("n_bytes", "quantity"),
    [
        (81559 << 20, "81559Mi"),
        (80 << 30, "80Gi"),
        (9984 << 20, "9984Mi"),
        (1, "1"),
        (1536, "1536"),
        (2048, "2Ki"),
    ],
)
def test_binary_quantity_is_canonical(n_bytes: int, quantity: str) -> None:
    assert dradevices.binary_quantity(n_bytes) == quantity


@pytest.mark.parametrize(
    ("brand", "expected"),
    [
        ("NVIDIA", "Nvidia"),
        ("Tesla", "Tesla"),
        ("NVIDIA RTX", "NvidiaRTX"),
        ("Quadro RTX", "QuadroRTX"),
        ("Something New", "SomethingNew"),
    ],
)
def test_brand_names_are_go_nvlibs(brand: str, expected: str) -> None:
    assert dradevices.dra_brand(brand) == expected


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("hopper", "Hopper"),
        ("ada-lovelace", "Ada Lovelace"),
        ("Ada Lovelace", "Ada Lovelace"),
        ("kepler", "Kepler"),
        ("blackwell", "Blackwell"),
    ],
)
def test_architecture_names_are_go_nvlibs(arch: str, expected: str) -> None:
    assert dradevices.dra_architecture(arch) == expected


# --------------------------------------------------------------------------------------------
# full GPUs
# --------------------------------------------------------------------------------------------


def test_h100_device_has_exactly_the_drivers_attributes_plus_model(h100_known: None) -> None:
    topology = h100_node()
    devices = dradevices.node_devices(topology)
    assert [d.name for d in devices] == [f"gpu-{i}" for i in range(8)]
    gpu0 = devices[0].device
    profile = BUILTIN_CATALOG.get("h100")
    assert gpu0["attributes"] == {
        "type": {"string": "gpu"},
        "uuid": {"string": gpu_uuid(NODE, 0)},
        "productName": {"string": profile.name},
        "brand": {"string": "Nvidia"},
        "architecture": {"string": "Hopper"},
        "cudaComputeCapability": {"version": "9.0.0"},
        "driverVersion": {"version": dradevices.semver(profile.driver_version)},
        "cudaDriverVersion": {"version": dradevices.semver(profile.cuda_version)},
        "resource.kubernetes.io/pciBusID": {"string": "0000:18:00.0"},
        "resource.kubernetes.io/pcieRoot": {"string": "pci0000:00"},
        "resource.kubernetes.io/numaNode": {"int": 0},
        # run-ai/fake-gpu-operator's attribute, additive: the product name again.
        "model": {"string": profile.name},
    }
    assert gpu0["capacity"] == {"memory": {"value": f"{profile.memory_mib}Mi"}}
    assert "taints" not in gpu0
    assert devices[0].uuid == gpu_uuid(NODE, 0)
    # GPUs 4-7 are on the second socket.
    assert devices[7].device["attributes"]["resource.kubernetes.io/numaNode"] == {"int": 1}


def test_record_values_win_over_profile_values(h100_known: None) -> None:
    topology = h100_node(count=1)
    topology.driver_version = "550.54.15"
    topology.cuda_version = "12.4"
    topology.gpus[0].memory_mib = 40960
    topology.gpus[0].product = "NVIDIA H100 PCIe"
    attrs = dradevices.node_devices(topology)[0].device["attributes"]
    assert attrs["driverVersion"] == {"version": "550.54.15"}
    assert attrs["cudaDriverVersion"] == {"version": "12.4.0"}
    assert attrs["productName"] == {"string": "NVIDIA H100 PCIe"}
    assert dradevices.node_devices(topology)[0].device["capacity"]["memory"] == {"value": "40Gi"}


def test_k80_is_a_tesla_kepler() -> None:
    attrs = dradevices.node_devices(k80_node())[1].device["attributes"]
    assert attrs["brand"] == {"string": "Tesla"}
    assert attrs["architecture"] == {"string": "Kepler"}
    assert attrs["cudaComputeCapability"] == {"version": "3.7.0"}


def test_unknown_product_borrows_default_numbers_under_its_own_name() -> None:
    topology = k80_node()
    for gpu in topology.gpus:
        gpu.profile = "custom-xyz"
        gpu.product = "ACME Accelerator 9000"
        gpu.memory_mib = 1000
    topology.profile = topology.gpu_product = "ACME Accelerator 9000"
    device = dradevices.node_devices(topology)[0].device
    assert device["attributes"]["productName"] == {"string": "ACME Accelerator 9000"}
    assert device["capacity"]["memory"] == {"value": "1000Mi"}


def test_legacy_attribute_set_of_an_older_driver_version() -> None:
    old = dradevices.DeviceOptions(names=DRA["25.3"])
    attrs = dradevices.node_devices(k80_node(), old)[1].device["attributes"]
    assert attrs["index"] == {"int": 1}
    assert attrs["minor"] == {"int": 1}
    assert attrs["pcieBusID"] == attrs["resource.kubernetes.io/pciBusID"]
    assert "index" not in dradevices.node_devices(k80_node())[1].device["attributes"]


def test_gpus_without_id_are_skipped_and_duplicate_minors_keep_the_first() -> None:
    topology = k80_node()
    topology.gpus[1].minor = 0
    assert [d.uuid for d in dradevices.node_devices(topology)] == [topology.gpus[0].id]
    topology.gpus[0].id = ""
    assert [d.uuid for d in dradevices.node_devices(topology)] == [topology.gpus[1].id]


def test_reference_naming_names_full_gpus_by_uuid() -> None:
    """DEVICE_NAMING=reference: gpu-<lower-case uuid without GPU->, as run-ai/fake-gpu-operator
    names its devices; content is the same as in NVIDIA naming."""
    topology = k80_node()
    nvidia = dradevices.node_devices(topology)
    reference = dradevices.node_devices(topology, dradevices.DeviceOptions(naming="reference"))
    assert [d.name for d in nvidia] == ["gpu-0", "gpu-1"]
    assert [d.name for d in reference] == [
        "gpu-" + gpu_uuid(NODE, i).lower().removeprefix("gpu-") for i in range(2)
    ]
    assert [d.device["attributes"] for d in reference] == [d.device["attributes"] for d in nvidia]
    assert [d.uuid for d in reference] == [d.uuid for d in nvidia]


def test_model_attribute_carries_the_product_name_as_written() -> None:
    topology = k80_node()
    topology.gpus[0].product = "Tesla-K80"
    attrs = dradevices.node_devices(topology)[0].device["attributes"]
    assert attrs["model"] == attrs["productName"] == {"string": "Tesla-K80"}
    no_model = dradevices.DeviceOptions(names=dataclasses.replace(DRA["0.4"], attr_model=""))
    assert "model" not in dradevices.node_devices(topology, no_model)[0].device["attributes"]


def test_full_gpu_names_are_understood_in_either_naming() -> None:
    topology = k80_node()
    gpu1 = topology.gpus[1]
    by_uuid = dradevices.reference_device_name(gpu1.id)
    assert dradevices.full_gpu_key("gpu-3") == 3
    assert dradevices.full_gpu_key(by_uuid) == by_uuid
    assert dradevices.full_gpu_key("gpu-0-mig-1g10gb-19-0") is None
    assert dradevices.full_gpu_key("fpga-1") is None
    assert dradevices.full_gpu_key("gpu-not-a-uuid") is None
    assert dradevices.find_full_gpu("gpu-1", topology.gpus) == (True, gpu1)
    assert dradevices.find_full_gpu(by_uuid, topology.gpus) == (True, gpu1)
    assert dradevices.find_full_gpu("gpu-9", topology.gpus) == (True, None)
    assert dradevices.find_full_gpu("gpu-0-mig-1g10gb-19-0", topology.gpus) == (False, None)
    # An id without the GPU- prefix still gets a valid device name.
    assert dradevices.reference_device_name("ABC_1") == "gpu-abc-1"


def test_mig_devices_keep_nvidia_names_in_reference_naming(h100_known: None) -> None:
    topology = h100_node(count=1)
    options = dradevices.DeviceOptions(naming="reference")
    topology.mig_dynamic = True
    names = [d.name for d in dradevices.node_devices(topology, options)]
    assert names[0] == dradevices.reference_device_name(topology.gpus[0].id)
    assert all(n.startswith("gpu-0-mig-") for n in names[1:]) and len(names) > 1


# --------------------------------------------------------------------------------------------
# health
# --------------------------------------------------------------------------------------------


def test_unhealthy_gpu_is_tainted_like_the_driver_does() -> None:
    topology = k80_node()
    topology.gpus[0].health = UNHEALTHY
    topology.gpus[1].health = UNHEALTHY
    topology.gpus[1].faults = [{"xid": 48, "message": "Double Bit ECC Error"}]
    devices = by_name(dradevices.node_devices(topology))
    assert devices["gpu-0"]["taints"] == [
        {"key": "gpu.nvidia.com/gpu-lost", "value": "true", "effect": "NoSchedule"}
    ]
    assert devices["gpu-1"]["taints"] == [
        {"key": "gpu.nvidia.com/xid", "value": "48", "effect": "NoSchedule"}
    ]


def test_unhealthy_policies_omit_and_publish() -> None:
    topology = k80_node()
    topology.gpus[0].health = UNHEALTHY
    assert [
        d.name
        for d in dradevices.node_devices(topology, dradevices.DeviceOptions(unhealthy="omit"))
    ] == ["gpu-1"]
    published = dradevices.node_devices(topology, dradevices.DeviceOptions(unhealthy="publish"))
    assert [d.name for d in published] == ["gpu-0", "gpu-1"]
    assert not any(d.tainted for d in published)


# --------------------------------------------------------------------------------------------
# MIG
# --------------------------------------------------------------------------------------------


def with_mig(topology: NodeTopology, layout: list[tuple[str, int]]) -> NodeTopology:
    """Put ``layout`` ((profile, placement start), ...) on GPU 0."""
    gpu = topology.gpus[0]
    profile = BUILTIN_CATALOG.get(gpu.profile)
    gpu.mig_enabled = True
    for gi, (name, start) in enumerate(layout, start=1):
        table = profile.mig_profile(name)
        gpu.mig_devices.append(
            MigDevice(
                uuid=mig_uuid(gpu.id, gi, 0),
                profile=name,
                gi_id=gi,
                ci_id=0,
                gi_profile_id=table.gi_profile_id,
                ci_profile_id=table.ci_profile_id,
                placement_start=start,
                placement_size=table.memory_slices,
                memory_mib=table.memory_mib,
                sm_count=table.sm_count,
            )
        )
    return topology


def test_mig_gpu_publishes_its_mig_devices_not_itself(h100_known: None) -> None:
    topology = with_mig(h100_node(count=2), [("3g.40gb", 4), ("1g.10gb", 0), ("2g.20gb", 2)])
    devices = dradevices.node_devices(topology)
    names = [d.name for d in devices]
    assert "gpu-0" not in names
    assert names == [
        "gpu-0-mig-1g10gb-19-0",
        "gpu-0-mig-2g20gb-14-2",
        "gpu-0-mig-3g40gb-9-4",
        "gpu-1",
    ]
    mig = devices[0].device
    parent = topology.gpus[0]
    assert devices[0].uuid == parent.mig_devices[1].uuid
    assert mig["attributes"]["type"] == {"string": "mig"}
    assert mig["attributes"]["parentUUID"] == {"string": parent.id}
    assert mig["attributes"]["profile"] == {"string": "1g.10gb"}
    assert mig["attributes"]["productName"] == {"string": "NVIDIA H100 80GB HBM3"}
    assert "resource.kubernetes.io/numaNode" not in mig["attributes"]
    assert mig["capacity"] == {
        "multiprocessors": {"value": "16"},
        "copyEngines": {"value": "1"},
        "decoders": {"value": "1"},
        "encoders": {"value": "0"},
        "jpegEngines": {"value": "1"},
        "ofaEngines": {"value": "0"},
        "memory": {"value": "9984Mi"},
        "memorySlice0": {"value": "1"},
    }
    three_g = devices[2].device["capacity"]
    assert [k for k in three_g if k.startswith("memorySlice")] == [
        f"memorySlice{i}" for i in range(4, 8)
    ]


def test_every_device_stays_within_the_per_device_api_limits(h100_known: None) -> None:
    topology = with_mig(h100_node(), [("7g.80gb", 0)])
    topology = with_mig(topology, [])  # no-op, keeps GPU 0 in MIG mode
    for device in (
        d.device
        for d in dradevices.node_devices(topology, dradevices.DeviceOptions(names=DRA["25.3"]))
    ):
        assert (
            len(device["attributes"]) + len(device["capacity"])
            <= dradevices.MAX_ATTRIBUTES_AND_CAPACITIES_PER_DEVICE
        )
        for value in device["attributes"].values():
            text = next(iter(value.values()))
            assert len(str(text)) <= dradevices.MAX_ATTRIBUTE_VALUE_LENGTH


# --------------------------------------------------------------------------------------------
# slices and pools
# --------------------------------------------------------------------------------------------

TARGET = draslices.PoolTarget(
    node_name=NODE, node_uid="uid-1", base_name=draslices.kwok_slice_base(NODE), publisher="test"
)


def fake_devices(count: int, *, tainted: int = 0) -> list[dict]:
    out = [{"name": f"gpu-{i}", "attributes": {"type": {"string": "gpu"}}} for i in range(count)]
    for device in out[:tainted]:
        device["taints"] = [
            {"key": "gpu.nvidia.com/gpu-lost", "value": "true", "effect": "NoSchedule"}
        ]
    return out


def test_one_slice_per_node_with_owner_pool_and_labels(h100_known: None) -> None:
    devices = [d.device for d in dradevices.node_devices(h100_node())]
    (slice_,) = draslices.build_slices(TARGET, devices, generation=3)
    assert slice_["apiVersion"] == "resource.k8s.io/v1"
    assert slice_["metadata"]["name"] == f"kwok-{NODE}-gpu"
    assert slice_["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "uid-1", "controller": True}
    ]
    assert slice_["metadata"]["labels"][draslices.PUBLISHER_LABEL] == "test"
    assert slice_["spec"]["driver"] == "gpu.nvidia.com"
    assert slice_["spec"]["nodeName"] == NODE
    assert slice_["spec"]["pool"] == {"name": NODE, "resourceSliceCount": 1, "generation": 3}
    assert len(slice_["spec"]["devices"]) == 8


@pytest.mark.parametrize(
    ("count", "tainted", "sizes"),
    [
        (0, 0, [0]),
        (128, 0, [128]),
        (129, 0, [128, 1]),
        (300, 0, [128, 128, 44]),
        (129, 1, [64, 64, 1]),
    ],
)
def test_devices_are_split_at_the_api_limits(count: int, tainted: int, sizes: list[int]) -> None:
    slices = draslices.build_slices(TARGET, fake_devices(count, tainted=tainted), generation=1)
    assert [len(s["spec"]["devices"]) for s in slices] == sizes
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {len(sizes)}
    assert [s["metadata"]["name"] for s in slices][1:] == [
        f"kwok-{NODE}-gpu-{i}" for i in range(1, len(sizes))
    ]
    names = [d["name"] for s in slices for d in s["spec"]["devices"]]
    assert len(names) == len(set(names)) == count


def test_long_node_names_give_valid_slice_names() -> None:
    base = draslices.kwok_slice_base("n" * 250)
    names = {draslices.slice_name(base, i) for i in range(3)}
    assert len(names) == 3
    assert all(len(n) <= 253 for n in names)


def stored(objs: list[dict]) -> list[dict]:
    """What the API server hands back: our objects plus fields it adds."""
    out = copy.deepcopy(objs)
    for obj in out:
        obj["metadata"]["resourceVersion"] = "42"
        for device in obj["spec"]["devices"]:
            for taint in device.get("taints", []):
                taint["timeAdded"] = "2026-01-01T00:00:00Z"
    return out


def test_plan_creates_a_new_pool_at_generation_one() -> None:
    plan = draslices.plan_pool(TARGET, fake_devices(3), [])
    assert plan.generation == 1
    assert [o["spec"]["pool"]["generation"] for o in plan.apply] == [1]
    assert plan.delete == []


def test_plan_writes_nothing_when_content_is_unchanged() -> None:
    devices = fake_devices(3, tainted=1)
    first = draslices.plan_pool(TARGET, devices, [])
    again = draslices.plan_pool(TARGET, copy.deepcopy(devices), stored(first.apply))
    assert again.unchanged
    assert again.generation == 1


def test_plan_bumps_the_generation_of_the_whole_pool_on_change() -> None:
    first = draslices.plan_pool(TARGET, fake_devices(200), [])
    assert len(first.apply) == 2
    grown = draslices.plan_pool(TARGET, fake_devices(201), stored(first.apply))
    assert grown.generation == 2
    assert [o["spec"]["pool"]["generation"] for o in grown.apply] == [2, 2]
    shrunk = draslices.plan_pool(TARGET, fake_devices(5), stored(grown.apply))
    assert shrunk.generation == 3
    assert [o["metadata"]["name"] for o in shrunk.apply] == [f"kwok-{NODE}-gpu"]
    assert shrunk.delete == [f"kwok-{NODE}-gpu-1"]


def test_plan_rewrites_after_a_new_node_uid_or_a_foreign_edit() -> None:
    first = draslices.plan_pool(TARGET, fake_devices(2), [])
    recreated = dataclasses.replace(TARGET, node_uid="uid-2")
    assert not draslices.plan_pool(recreated, fake_devices(2), stored(first.apply)).unchanged
    edited = stored(first.apply)
    edited[0]["metadata"]["annotations"].pop(draslices.CONTENT_HASH_ANNOTATION)
    assert draslices.plan_pool(TARGET, fake_devices(2), edited).generation == 2


def test_plan_repairs_a_pool_with_mixed_generations() -> None:
    first = stored(draslices.plan_pool(TARGET, fake_devices(200), []).apply)
    first[1]["spec"]["pool"]["generation"] = 7
    plan = draslices.plan_pool(TARGET, fake_devices(200), first)
    assert plan.generation == 8
    assert len(plan.apply) == 2


# --------------------------------------------------------------------------------------------
# DeviceClasses
# --------------------------------------------------------------------------------------------


def test_device_classes_are_the_upstream_ones() -> None:
    gpu, mig = draclasses.device_classes()
    assert gpu == {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": "gpu.nvidia.com"},
        "spec": {
            "selectors": [
                {
                    "cel": {
                        "expression": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"
                    }
                }
            ],
            "extendedResourceName": "nvidia.com/gpu",
        },
    }
    assert mig["metadata"]["name"] == "mig.nvidia.com"
    assert mig["spec"] == {
        "selectors": [
            {
                "cel": {
                    "expression": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'mig'"
                }
            }
        ]
    }
    assert (
        "extendedResourceName" not in draclasses.device_classes(extended_resource=False)[0]["spec"]
    )


def test_device_classes_yaml_round_trips() -> None:
    import yaml

    assert list(yaml.safe_load_all(draclasses.device_classes_yaml())) == draclasses.device_classes()


def test_media_extension_profiles_are_named_like_the_driver(h100_known: None) -> None:
    topology = with_mig(h100_node(count=1), [("1g.10gb+me", 0)])
    assert [d.name for d in dradevices.node_devices(topology)] == ["gpu-0-mig-1g10gb-me-20-0"]


def test_slice_index_view_keeps_what_planning_reads_and_drops_the_devices() -> None:
    (full,) = stored(draslices.plan_pool(TARGET, fake_devices(4), []).apply)
    full["metadata"]["managedFields"] = [{"manager": "fgo", "operation": "Apply"}]
    full["spec"]["sharedCounters"] = [{"name": "gpu-0-counter-set", "counters": {}}]
    view = draslices.slice_index_view(full)
    assert "devices" not in view["spec"] and "sharedCounters" not in view["spec"]
    assert "managedFields" not in view["metadata"]
    assert draslices.slice_hash(view) == draslices.slice_hash(full) != ""
    assert draslices.slice_generation(view) == draslices.slice_generation(full) == 1
    assert view["spec"]["nodeName"] == NODE
    assert view["metadata"]["resourceVersion"] == "42"
    assert full["spec"]["devices"], "the stored object itself is not changed"


@pytest.mark.parametrize(("before", "after"), [(3, 3), (200, 201), (201, 5), (0, 2)])
def test_plans_from_index_views_equal_plans_from_full_slices(before: int, after: int) -> None:
    """The publishers cache only index views; planning must not notice."""
    full = stored(draslices.plan_pool(TARGET, fake_devices(before), []).apply)
    views = [draslices.slice_index_view(o) for o in full]
    for target in (TARGET, dataclasses.replace(TARGET, node_uid="uid-2")):
        assert draslices.plan_pool(target, fake_devices(after), views) == draslices.plan_pool(
            target, fake_devices(after), full
        )
