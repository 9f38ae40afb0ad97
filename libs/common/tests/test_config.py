"""Cluster topology config: the three accepted shapes and the errors users get."""

from __future__ import annotations

import pytest
from fgo_common import dradevices
from fgo_common.config import ConfigError, load_cluster_config, parse_cluster_config
from fgo_common.nodebuild import build_node_topology

SEED_EXAMPLE = """
topology:
  nodePools:
    default:
      gpus:
        - type: "Tesla K80"
          memory: "12GB"
          count: 2
"""

# The reference chart's default values (upstream-reference.md §4.1).
REFERENCE_DEFAULT = """
nodePools:
  default:
    gpuProduct: Tesla-K80
    gpuCount: 2
    gpuMemory: 11441
nodePoolLabelKey: run.ai/simulated-gpu-node-pool
migStrategy: mixed
"""

PROFILE_FORM = """
nodePoolLabelKey: example.com/pool
migStrategy: none
nodePools:
  hopper:
    gpu:
      backend: fake
      profile: h100
      overrides:
        device_count: 4
        system: {driver_version: 580.1.2, cuda_version: "13.0"}
    resources:
      - nvidia.com/gpu: 4
      - example.com/nic: 2
"""


def test_seed_example_with_values_wrapper() -> None:
    config = load_cluster_config(SEED_EXAMPLE)
    pool = config.pools["default"]
    assert config.node_pool_label_key == "run.ai/simulated-gpu-node-pool"
    assert config.mig_strategy == "none"
    assert pool.gpu_count == 2
    (group,) = pool.groups
    assert group.product == "Tesla K80"
    # 12 GB (decimal) = 12e9 bytes = 11444 MiB.
    assert group.memory_mib == 11444
    assert pool.effective_driver_version == group.profile.driver_version


def test_reference_default_values() -> None:
    config = load_cluster_config(REFERENCE_DEFAULT)
    pool = config.pools["default"]
    assert config.mig_strategy == "mixed"
    # gpuProduct is kept as written (the reference's record and metrics say "Tesla-K80"); the
    # K80 profile still supplies the physics.
    assert [p.name for p in pool.gpu_profiles()] == ["Tesla-K80", "Tesla-K80"]
    assert [p.key for p in pool.gpu_profiles()] == ["k80", "k80"]
    assert pool.groups[0].memory_mib == 11441
    assert config.warnings == ()


@pytest.mark.parametrize("written", ["Tesla-K80", "tesla k80", "NVIDIA-A100-SXM4-40GB"])
def test_legacy_gpu_product_stays_as_written_in_record_and_devices(written: str) -> None:
    config = parse_cluster_config({"nodePools": {"p": {"gpuProduct": written, "gpuCount": 2}}})
    assert config.warnings == ()  # a built-in product: matched, not "custom"
    record = build_node_topology("n1", config.pools["p"], config, kwok=True)
    assert record.gpu_product == written
    assert {g.product for g in record.gpus} == {written}
    attrs = dradevices.node_devices(record)[0].device["attributes"]
    assert attrs["productName"] == attrs["model"] == {"string": written}


def test_legacy_other_devices_sorted() -> None:
    config = load_cluster_config(
        """
nodePools:
  mig:
    gpuProduct: Tesla-K80
    gpuCount: 1
    otherDevices:
      - {name: nvidia.com/mig-3g.40gb, count: 2}
      - {name: nvidia.com/mig-1g.10gb, count: 7}
"""
    )
    names = [d.name for d in config.pools["mig"].other_devices]
    assert names == ["nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb"]


def test_legacy_unknown_product_is_kept_with_warning() -> None:
    config = load_cluster_config(
        "nodePools: {p: {gpuProduct: Quadro-Foo, gpuCount: 1, gpuMemory: 4096}}"
    )
    group = config.pools["p"].groups[0]
    assert (group.product, group.memory_mib) == ("Quadro-Foo", 4096)
    assert "Quadro-Foo" in config.warnings[0]


def test_profile_form(h100_known: None) -> None:
    config = load_cluster_config(PROFILE_FORM)
    pool = config.pools["hopper"]
    assert config.node_pool_label_key == "example.com/pool"
    assert pool.gpu_count == 4
    assert pool.groups[0].product == "NVIDIA H100 80GB HBM3"
    assert pool.driver_version == "580.1.2"
    assert pool.cuda_version == "13.0"
    assert [(d.name, d.count) for d in pool.other_devices] == [("example.com/nic", 2)]


def test_several_types_in_one_pool(h100_known: None) -> None:
    config = load_cluster_config(
        """
nodePools:
  mixed:
    gpus:
      - {type: "Tesla K80", count: 1}
      - {type: H100, memory: 81559MiB, count: 2}
"""
    )
    products = [p.name for p in config.pools["mixed"].gpu_profiles()]
    assert products == ["Tesla K80", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]


@pytest.mark.parametrize(
    ("memory", "mib"),
    [("12GB", 11444), ("80Gi", 81920), ("81559MiB", 81559), (11441, 11441), ("16 GiB", 16384)],
)
def test_memory_units(memory: object, mib: int) -> None:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "Tesla K80", "memory": memory, "count": 1}]}}}
    )
    assert config.pools["p"].groups[0].memory_mib == mib


def test_mixed_legacy_and_seed_pools_both_keep_their_gpus() -> None:
    # The reference parsed such a file as "new" and silently gave the legacy pool 0 GPUs.
    config = load_cluster_config(
        """
nodePools:
  old: {gpuProduct: Tesla-K80, gpuCount: 2, gpuMemory: 11441}
  new: {gpus: [{type: Tesla K80, count: 3}]}
"""
    )
    assert config.pools["old"].gpu_count == 2
    assert config.pools["new"].gpu_count == 3


@pytest.mark.parametrize(
    ("document", "path", "fragment"),
    [
        (
            "nodePools: {a: {gpus: [{type: Tesla K80, count: -1}]}}",
            "nodePools.a.gpus[0].count",
            "between 1 and 64",
        ),
        (
            "nodePools: {a: {gpus: [{type: Tesla K80, count: 0}]}}",
            "nodePools.a.gpus[0].count",
            "between 1 and 64",
        ),
        (
            "nodePools: {a: {gpus: [{type: Tesla K80, count: two}]}}",
            "nodePools.a.gpus[0].count",
            "integer",
        ),
        (
            "nodePools: {a: {gpus: [{type: Tesla K80, count: 1, memory: 12XB}]}}",
            "nodePools.a.gpus[0].memory",
            "unknown memory unit",
        ),
        (
            "nodePools: {a: {gpus: [{type: Tesla K80, count: 1, memory: -4Gi}]}}",
            "nodePools.a.gpus[0].memory",
            "cannot parse",
        ),
        (
            "nodePools: {a: {gpus: [{type: Banana 9000, count: 1}]}}",
            "nodePools.a.gpus[0].type",
            "known:",
        ),
        ("nodePools: {a: {gpu: {profile: nope}}}", "nodePools.a.gpu.profile", "known:"),
        (
            "nodePools: {a: {gpu: {profile: k80, backend: nvml}}}",
            "nodePools.a.gpu.backend",
            "allowed: fake, mock",
        ),
        ("nodePools: {a: {}}", "nodePools.a", "a pool needs GPUs"),
        ("nodePools: {a: {gpus: []}}", "nodePools.a.gpus", "non-empty list"),
        ("nodePools: {}", "nodePools", "at least one pool"),
        ("nodePools: [a, b]", "nodePools", "expected a mapping"),
        (
            "nodePools: {a: {gpus: [{type: Tesla K80, count: 1, colour: red}]}}",
            "nodePools.a.gpus[0].colour",
            "allowed keys here: type, memory, count, profile",
        ),
        (
            "nodePools: {a: {gpuProduct: Tesla-K80, gpuCount: 1, gpuCores: 3}}",
            "nodePools.a.gpuCores",
            "allowed keys here",
        ),
        ("nodePool: {a: {gpus: [{type: Tesla K80}]}}", "nodePool", "allowed keys here"),
        (
            "migStrategy: half\nnodePools: {a: {gpus: [{type: Tesla K80}]}}",
            "migStrategy",
            "allowed: none, single, mixed",
        ),
        (
            "nodePools: {a: {gpuProduct: Tesla-K80, gpuCount: 1000}}",
            "nodePools.a.gpuCount",
            "between 1 and 64",
        ),
        (
            "nodePools: {a: {gpuProduct: Tesla-K80, gpuCount: true}}",
            "nodePools.a.gpuCount",
            "integer",
        ),
        (
            "nodePools: {a: {gpus: [{type: Tesla K80, count: 40}, {type: Tesla K80, count: 40}]}}",
            "nodePools.a.gpus",
            "at most 64",
        ),
        (
            "nodePools: {a: {gpuProduct: Tesla-K80, gpuCount: 2, numa: {zones: 2, gpusPerZone: [1]}}}",
            "nodePools.a.numa.gpusPerZone",
            "must list 2",
        ),
    ],
)
def test_bad_input_names_field_and_allowed_values(document: str, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cluster_config(document)
    assert info.value.path == path
    assert fragment in str(info.value)


@pytest.mark.parametrize("document", ["", "[1, 2", "just a string", "42"])
def test_malformed_documents(document: str) -> None:
    with pytest.raises(ConfigError):
        load_cluster_config(document)


def test_reference_gb300_profile_pool_is_accepted() -> None:
    """The reference ships a gb300 profile; a pool naming it used to refuse the whole config."""
    config = parse_cluster_config(
        {"nodePools": {"ultra": {"gpu": {"backend": "fake", "profile": "gb300"}}}}
    )
    (group,) = config.pools["ultra"].groups
    assert group.profile.key == "gb300"
    assert group.product == "NVIDIA GB300"  # what nvidia-smi prints on a real GB300
    assert group.memory_mib == 284208
    assert group.count == 8
    assert group.profile.compute_capability == (10, 3)
    assert group.profile.mig_capable
    # The reference's own name for it selects the same profile.
    seed = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "NVIDIA GB300 NVL"}]}}})
    assert seed.pools["p"].groups[0].profile.key == "gb300"


def test_a_mock_pool_runs_as_fake_with_a_warning_and_the_others_keep_working() -> None:
    """The reference's `backend: mock` (NVIDIA's nvml-mock per pool) is refused per pool only:
    that pool runs with the fake backend and the config carries a warning naming it (the
    status-updater turns it into a TopologyConfigWarning Event); the other pools are intact."""
    config = parse_cluster_config(
        {
            "nodePools": {
                "training": {"gpu": {"backend": "fake", "profile": "h100"}},
                "legacy": {"gpuProduct": "Tesla-K80", "gpuCount": 2},
                "mocked": {"gpu": {"backend": "mock", "profile": "gb300"}},
            }
        }
    )
    assert set(config.pools) == {"training", "legacy", "mocked"}
    assert config.pools["training"].groups[0].profile.key == "h100-80gb-hbm3"
    assert config.pools["legacy"].gpu_count == 2
    assert config.pools["mocked"].groups[0].profile.key == "gb300"
    (warning,) = config.warnings
    assert warning.startswith("nodePools.mocked.gpu.backend: mock")
    assert "runs with the fake backend" in warning
    record = build_node_topology("n1", config.pools["mocked"], config, kwok=True)
    assert len(record.gpus) == 8 and record.gpu_product == "NVIDIA GB300"


def test_an_unknown_backend_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="unsupported backend 'nvml'; allowed: fake, mock"):
        parse_cluster_config({"nodePools": {"a": {"gpu": {"backend": "nvml", "profile": "h100"}}}})
