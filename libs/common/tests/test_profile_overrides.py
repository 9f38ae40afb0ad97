"""The profile form's ``gpu.overrides`` (the nvml-mock profile schema): what has a meaning here
is honoured (per-device bus ids and minor numbers, NUMA nodes from the PCIe topology, the CUDA
version from its parts), what has none is accepted with a warning naming the key, and an
unknown key or a bad value is refused with the field's path."""

from __future__ import annotations

from typing import Any

import pytest
from fgo_common.config import ClusterConfig, ConfigError, parse_cluster_config
from fgo_common.identity import gpu_uuid
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import GpuRecord

POOL = "nodePools.p.gpu.overrides"


def _parse(overrides: dict[str, Any], **pool: Any) -> ClusterConfig:
    return parse_cluster_config(
        {"nodePools": {"p": {"gpu": {"profile": "h100", "overrides": overrides}, **pool}}}
    )


def _gpus(config: ClusterConfig, node: str = "n1") -> list[GpuRecord]:
    return build_node_topology(node, config.pools["p"], config, kwok=True).gpus


def _refused(overrides: dict[str, Any], path: str, words: str, **pool: Any) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(overrides, **pool)
    assert info.value.path == path, str(info.value)
    assert words in str(info.value)


def test_the_reference_h100_profile_shape_is_honoured() -> None:
    """The reference's h100 profile: 8 devices on buses 1A, 1B, 4A, 4B (NUMA 0) and 8A, 8B,
    CA, CB (NUMA 1), with the same UUIDs on every node of the pool."""
    buses = ["1a", "1b", "4a", "4b", "8a", "8b", "ca", "cb"]
    overrides = {
        "version": "1.0",
        "devices": [
            {
                "index": i,
                "uuid": f"GPU-01000100-0000-0000-0000-00000000000{i}",
                "serial": f"15628210839{i:02d}",
                "pci": {"bus_id": f"0000:{bus}:00.0"},
                "minor_number": i,
            }
            for i, bus in enumerate(buses)
        ],
        "pcie_topology": {
            "root_complexes": [
                {"id": "rc0", "numa_node": 0, "devices": [f"0000:{b}:00.0" for b in buses[:4]]},
                {"id": "rc1", "numa_node": 1, "devices": [f"0000:{b}:00.0" for b in buses[4:]]},
            ]
        },
    }
    config = _parse(overrides)
    gpus = _gpus(config)
    assert [g.bus_id for g in gpus] == [f"00000000:{b.upper()}:00.0" for b in buses]
    assert [g.numa_node for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [g.minor for g in gpus] == list(range(8))
    # UUIDs stay per node: the profile's list would repeat on every node of the pool.
    assert [g.id for g in gpus] == [gpu_uuid("n1", i) for i in range(8)]
    assert {g.id for g in _gpus(config, "n2")}.isdisjoint({g.id for g in gpus})
    (warning,) = config.warnings
    assert warning.startswith(f"{POOL}.devices: ignored: serial, uuid")


def test_devices_set_the_count_and_only_the_gpus_they_name() -> None:
    config = _parse({"devices": [{"pci": {"bus_id": "3b:00.0"}}, {"minor_number": 7}]})
    gpus = _gpus(config)
    assert len(gpus) == 2  # len(devices) is the count without device_count
    assert (gpus[0].bus_id, gpus[1].minor) == ("00000000:3B:00.0", 7)
    config = _parse(
        {
            "device_count": 4,
            "devices": [{"index": 2, "minor_number": 9, "pci": {"bus_id": "3B:00.0"}}],
        }
    )
    gpus = _gpus(config)
    assert [g.minor for g in gpus] == [0, 1, 9, 3]
    assert gpus[2].bus_id == "00000000:3B:00.0"
    assert gpus[0].bus_id == "00000000:18:00.0"  # the default for index 0
    assert config.warnings == ()


def test_pcie_topology_alone_places_the_default_bus_ids() -> None:
    config = _parse(
        {
            "device_count": 2,
            "pcie_topology": {
                "root_complexes": [{"id": "rc", "numa_node": 3, "devices": ["0000:18:00.0"]}]
            },
        }
    )
    assert [g.numa_node for g in _gpus(config)] == [3, 0]
    assert config.warnings == ()


def test_a_pools_numa_block_wins_over_the_pcie_topology() -> None:
    topology = {"root_complexes": [{"numa_node": 1, "devices": ["0000:18:00.0"]}]}
    config = _parse({"device_count": 2, "pcie_topology": topology}, numa={"zones": 2})
    assert [g.numa_node for g in _gpus(config)] == [0, 1]
    (warning,) = config.warnings
    assert warning.startswith(f"{POOL}.pcie_topology: NUMA nodes ignored")


def test_a_pcie_topology_naming_no_gpu_is_a_warning() -> None:
    topology = {"root_complexes": [{"numa_node": 1, "devices": ["0000:e0:00.0"]}]}
    config = _parse({"device_count": 2, "pcie_topology": topology})
    (warning,) = config.warnings
    assert "no GPU of the pool has a bus id listed" in warning


def test_unsimulated_overrides_are_warnings_naming_the_key() -> None:
    config = _parse(
        {
            "version": "2.0",
            "nvlink": {"version": 4, "links": 18},
            "infiniband": {"adapters": 8},
            "device_defaults": {
                "name": "NVIDIA H100 80GB HBM3",
                "power": {"default_limit_mw": 700000},
                "fan": {"count": 0},
                "memory": {"total_bytes": 85899345920, "reserved_bytes": 1073741824},
            },
            "system": {"driver_version": "550.163.01", "nvml_version": "12.550.163.01"},
        }
    )
    keys = [w.split(":", 1)[0] for w in config.warnings]
    assert keys == [
        f"{POOL}.nvlink",
        f"{POOL}.infiniband",
        f"{POOL}.version",
        f"{POOL}.device_defaults",
        f"{POOL}.system.nvml_version",
    ]
    defaults = config.warnings[3]
    assert "power, fan, memory.reserved_bytes" in defaults
    (group,) = config.pools["p"].groups
    assert group.memory_mib == 81920  # what is used still applies
    assert config.pools["p"].driver_version == "550.163.01"
    assert "'2.0'" in config.warnings[2]


def test_version_one_zero_is_silent() -> None:
    assert _parse({"version": "1.0"}).warnings == ()
    assert _parse({"version": 1.0}).warnings == ()


def test_cuda_version_from_its_parts() -> None:
    pool = _parse({"system": {"cuda_version_major": 12, "cuda_version_minor": 4}}).pools["p"]
    assert pool.cuda_version == "12.4"
    agreeing = {"cuda_version": "12.4", "cuda_version_major": 12, "cuda_version_minor": 4}
    assert _parse({"system": agreeing}).warnings == ()
    config = _parse({"system": {**agreeing, "cuda_version": "13.0"}})
    assert config.pools["p"].cuda_version == "13.0"
    (warning,) = config.warnings
    assert warning.startswith(f"{POOL}.system.cuda_version_major: 12.4 disagrees")


@pytest.mark.parametrize(
    ("overrides", "path", "words"),
    [
        ({"device_defaults": {"colour": "red"}}, f"{POOL}.device_defaults.colour", "unknown key"),
        (
            {"device_defaults": {"memory": {"total": 1}}},
            f"{POOL}.device_defaults.memory.total",
            "allowed keys here: total_bytes",
        ),
        ({"system": {"driver": "1"}}, f"{POOL}.system.driver", "unknown key"),
        ({"system": {"driver_version": ["x"]}}, f"{POOL}.system.driver_version", "version"),
        (
            {"system": {"cuda_version_major": "twelve", "cuda_version_minor": 4}},
            f"{POOL}.system.cuda_version_major",
            "must both be integers",
        ),
        ({"version": {"x": 1}}, f"{POOL}.version", "version string"),
        ({"devices": {"index": 0}}, f"{POOL}.devices", "must be a list"),
        ({"devices": ["GPU-0"]}, f"{POOL}.devices[0]", "expected a mapping"),
        ({"devices": [{"idx": 0}]}, f"{POOL}.devices[0].idx", "unknown key"),
        ({"devices": [{"index": 5}]}, f"{POOL}.devices[0].index", "from 0 to 0"),
        ({"devices": [{"index": 0}, {"index": 0}]}, f"{POOL}.devices[1].index", "listed twice"),
        (
            {"devices": [{"pci": {"bus_id": "zz:00.0"}}]},
            f"{POOL}.devices[0].pci.bus_id",
            "must be a PCI bus id",
        ),
        (
            {"devices": [{"pci": {"bus_id": "18:00.0", "domain": 0}}]},
            f"{POOL}.devices[0].pci.domain",
            "unknown key",
        ),
        ({"devices": [{"minor_number": -1}]}, f"{POOL}.devices[0].minor_number", "0 to 255"),
        (
            {"device_count": 2, "devices": [{}, {}, {}]},
            f"{POOL}.devices",
            "lists 3 devices for a pool of 2",
        ),
        (
            # GPU 1's default bus id (2A): two GPUs of a node would share it.
            {"device_count": 2, "devices": [{"pci": {"bus_id": "0000:2a:00.0"}}]},
            f"{POOL}.devices",
            "GPUs 0 and 1 would share pci.bus_id",
        ),
        (
            {"device_count": 2, "devices": [{"minor_number": 1}]},
            f"{POOL}.devices",
            "would share minor_number 1",
        ),
        ({"pcie_topology": []}, f"{POOL}.pcie_topology", "expected a mapping"),
        ({"pcie_topology": {"roots": []}}, f"{POOL}.pcie_topology.roots", "unknown key"),
        (
            {"pcie_topology": {"root_complexes": [{"numa_node": 99}]}},
            f"{POOL}.pcie_topology.root_complexes[0].numa_node",
            "from 0 to 15",
        ),
        (
            {"pcie_topology": {"root_complexes": [{"devices": "0000:18:00.0"}]}},
            f"{POOL}.pcie_topology.root_complexes[0].devices",
            "list of PCI bus ids",
        ),
        (
            {
                "pcie_topology": {
                    "root_complexes": [{"devices": ["18:00.0"]}, {"devices": ["0000:18:00.0"]}]
                }
            },
            f"{POOL}.pcie_topology.root_complexes[1].devices[0]",
            "below two root complexes",
        ),
    ],
)
def test_bad_overrides_are_refused_with_the_path(
    overrides: dict[str, Any], path: str, words: str
) -> None:
    _refused(overrides, path, words)


def test_a_huge_value_is_not_echoed_in_a_warning() -> None:
    config = _parse({"version": "9" * 100_000})
    (warning,) = config.warnings
    assert len(warning) < 400
