"""customProfiles (profiles.yml of the topology ConfigMap): parsing, and that the node record
built from a custom profile resolves to the same product everywhere else."""

from __future__ import annotations

import pytest
import yaml
from fgo_common.config import load_cluster_config
from fgo_common.dradevices import resolve_profile
from fgo_common.nodebuild import build_node_topology
from fgo_common.profiles import BUILTIN_CATALOG
from fgo_common.profiles.custom import (
    CustomProfileError,
    custom_catalog,
    parse_custom_profile,
)
from fgo_common.telemetry import profile_for
from fgo_common.topology import NodeTopology

GIB = 1024**3
PROFILES = {
    # A product we have no data for: generic physics under its own name and memory.
    "my-gpu": {
        "version": "1.0",
        "system": {"driver_version": "580.159.04", "cuda_version": "13.0"},
        "device_defaults": {
            "name": "Example Custom GPU",
            "memory": {"total_bytes": 24 * GIB},
            "pci": {"device_id": 1234},  # accepted, not used
        },
        "device_count": 4,
    },
    # A built-in product with less memory: the H100's physics, the custom memory.
    "small-h100": {
        "device_defaults": {"name": "NVIDIA H100 80GB HBM3", "memory": {"total_bytes": 40 * GIB}}
    },
}
TOPOLOGY = """
nodePools:
  custom:
    gpus: [{type: my-gpu, count: 2}]
  small:
    gpus: [{type: small-h100, count: 1}]
  plain:
    gpus: [{type: H100, count: 1}]
"""


def test_custom_product_gets_its_name_memory_and_driver() -> None:
    profile = parse_custom_profile("my-gpu", PROFILES["my-gpu"])
    assert (profile.key, profile.name, profile.memory_mib) == (
        "my-gpu",
        "Example Custom GPU",
        24576,
    )
    assert (profile.driver_version, profile.cuda_version) == ("580.159.04", "13.0")
    assert profile.memory_reserved_mib == 0 and not profile.mig_profiles


def test_builtin_product_keeps_its_physics() -> None:
    profile = parse_custom_profile("small-h100", PROFILES["small-h100"])
    h100 = BUILTIN_CATALOG.get("H100")
    assert profile.memory_mib == 40960 and profile.name == h100.name
    assert profile.power_default_limit_w == h100.power_default_limit_w
    assert profile.mig_profiles == h100.mig_profiles
    assert profile.driver_version == h100.driver_version


def test_catalog_finds_custom_profiles_by_name_only_and_leaves_builtins_alone() -> None:
    catalog = custom_catalog(yaml.safe_dump(PROFILES))
    assert catalog.get("my-gpu").name == "Example Custom GPU"
    # The H100's own names still find the built-in profile, not the custom one.
    assert catalog.get("NVIDIA H100 80GB HBM3").memory_mib == 81559
    assert catalog.get("H100").key == "h100-80gb-hbm3"
    assert custom_catalog(None) is BUILTIN_CATALOG
    assert custom_catalog("") is BUILTIN_CATALOG


@pytest.mark.parametrize(
    ("key", "body", "path"),
    [
        ("my-gpu", {"device_defaults": {"memory": {"total_bytes": GIB}}}, "device_defaults.name"),
        ("my-gpu", {"device_defaults": {"name": "Unknown"}}, "memory.total_bytes"),
        ("my-gpu", {"device_defaults": {"name": "X", "memory": {"total_bytes": -1}}}, "total_bytes"),
        ("my-gpu", {"device_defaults": {"name": "X", "memory": {"total_bytes": "24Gi"}}}, "total_bytes"),
        ("my-gpu", {"device_defaults": "X"}, "device_defaults"),
        ("my-gpu", {"system": {"driver_version": ["5"]}, "device_defaults": {"name": "T4"}}, "driver_version"),
        ("h100", {"device_defaults": {"name": "X", "memory": {"total_bytes": GIB}}}, "customProfiles.h100"),
        ("My_GPU", {"device_defaults": {"name": "T4"}}, "customProfiles.My_GPU"),
    ],
)  # fmt: skip
def test_bad_custom_profiles_name_the_key(key: str, body: object, path: str) -> None:
    with pytest.raises(CustomProfileError) as info:
        parse_custom_profile(key, body)
    assert path in info.value.path


def test_bad_yaml_is_reported() -> None:
    with pytest.raises(CustomProfileError, match=r"profiles\.yml"):
        custom_catalog("a: [")


def _records() -> dict[str, NodeTopology]:
    catalog = custom_catalog(yaml.safe_dump(PROFILES))
    config = load_cluster_config(TOPOLOGY, catalog)
    out = {}
    for pool in ("custom", "small", "plain"):
        built = build_node_topology(f"node-{pool}", config.pools[pool], config, kwok=True)
        # What the other services read: the record as YAML, parsed back.
        out[pool] = NodeTopology.from_yaml(built.to_yaml(), f"node-{pool}")
    return out


def test_record_carries_what_the_other_services_need() -> None:
    records = _records()
    custom = records["custom"]
    assert [(g.product, g.memory_mib, g.profile) for g in custom.gpus] == [
        ("Example Custom GPU", 24576, "my-gpu")
    ] * 2
    assert (custom.driver_version, custom.cuda_version) == ("580.159.04", "13.0")
    assert [(g.product, g.memory_mib) for g in records["small"].gpus] == [
        ("NVIDIA H100 80GB HBM3", 40960)
    ]


@pytest.mark.parametrize("pool", ["custom", "small", "plain"])
def test_services_without_the_custom_profiles_resolve_the_same_product(pool: str) -> None:
    """The exporter, nvidia-smi and the DRA plugins resolve profiles from the record with the
    built-in catalog only; they must end up where the status-updater's custom catalog did."""
    catalog = custom_catalog(yaml.safe_dump(PROFILES))
    config = load_cluster_config(TOPOLOGY, catalog)
    intended = config.pools[pool].groups[0].profile
    record = _records()[pool]
    for gpu in record.gpus:
        seen = profile_for(gpu)
        assert (seen.name, seen.memory_mib) == (intended.name, intended.memory_mib)
        assert seen.memory_reserved_mib == intended.memory_reserved_mib
        assert seen.power_default_limit_w == intended.power_default_limit_w
        assert seen.mig_profiles == intended.mig_profiles
        dra = resolve_profile(gpu, record)
        assert dra.name == intended.name
