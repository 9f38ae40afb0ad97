"""Device-plugin sharing configs (NVIDIA k8s-device-plugin's format): parsing, validation with the
field named, per-node selection, record round trip."""

from __future__ import annotations

from typing import Any

import pytest
from fgo_common import dpsharing
from fgo_common.config import ConfigError, load_cluster_config
from fgo_common.topology import NodeTopology

TS = {
    "version": "v1",
    "sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 4}]}},
}


def test_time_slicing_parsed() -> None:
    got = dpsharing.parse_config(TS, "ts4")
    assert got is not None
    assert got.strategy == "time-slicing"
    assert got.config == "ts4"
    assert not got.fail_requests_greater_than_one
    entry = got.resource("nvidia.com/gpu")
    assert entry is not None and (entry.replicas, entry.advertised) == (4, "nvidia.com/gpu")


def test_renamed_and_yaml_text() -> None:
    text = """
version: v1
sharing:
  timeSlicing:
    renameByDefault: true
    failRequestsGreaterThanOne: true
    resources:
      - name: nvidia.com/gpu
        replicas: 2
"""
    got = dpsharing.parse_config(text)
    assert got is not None and got.fail_requests_greater_than_one
    assert got.resources[0].advertised == "nvidia.com/gpu.shared"


def test_mps_defaults_fail_requests_greater_than_one() -> None:
    got = dpsharing.parse_config(
        {"sharing": {"mps": {"resources": [{"name": "nvidia.com/gpu", "replicas": 3}]}}}
    )
    assert got is not None and got.strategy == "mps" and got.fail_requests_greater_than_one


def test_no_sharing_is_none() -> None:
    assert dpsharing.parse_config({"version": "v1"}) is None
    assert dpsharing.parse_config({"version": "v1", "flags": {"migStrategy": "none"}}) is None


def _bad(sharing: Any, **top: Any) -> dpsharing.DevicePluginConfigError:
    with pytest.raises(dpsharing.DevicePluginConfigError) as info:
        dpsharing.parse_config({"version": "v1", "sharing": sharing, **top})
    return info.value


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        (0, "number of replicas must be >= 2"),
        (-3, "number of replicas must be >= 2"),
        (1, "number of replicas must be >= 2"),
        (100000, "number of replicas must be <= 1024, got 100000"),
        ("4", "must be an integer, got '4'"),
    ],
)
def test_bad_replicas_name_the_field(replicas: object, message: str) -> None:
    err = _bad({"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": replicas}]}})
    assert err.path == "sharing.timeSlicing.resources[0].replicas"
    assert err.message == message


@pytest.mark.parametrize(
    ("sharing", "path", "message"),
    [
        ({"spatial": {}}, "sharing.spatial", "unknown field 'spatial'"),
        (
            {
                "mps": {
                    "renameByDefault": True,
                    "resources": [{"name": "nvidia.com/gpu", "replicas": 2}],
                }
            },
            "sharing.mps.renameByDefault",
            "renaming shared resources is not supported with MPS",
        ),
        (
            {"mps": {"resources": [{"name": "nvidia.com/gpu", "rename": "x", "replicas": 2}]}},
            "sharing.mps.resources[0].rename",
            "renaming shared resources is not supported with MPS",
        ),
        ({"timeSlicing": {"resources": []}}, "sharing.timeSlicing", "no resources specified"),
        (
            {"timeSlicing": {"resources": [{"replicas": 2}]}},
            "sharing.timeSlicing.resources[0]",
            "no resource name specified",
        ),
        (
            {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu"}]}},
            "sharing.timeSlicing.resources[0]",
            "no replicas specified",
        ),
        (
            {
                "timeSlicing": {
                    "replicas": 2,
                    "resources": [{"name": "nvidia.com/gpu", "replicas": 2}],
                }
            },
            "sharing.timeSlicing.replicas",
            "unknown field 'replicas'",
        ),
    ],
)
def test_bad_configs_name_the_field(sharing: Any, path: str, message: str) -> None:
    err = _bad(sharing)
    assert err.path == path
    assert err.message.startswith(message)


def test_unknown_version() -> None:
    err = _bad(None, version="v2")
    assert str(err) == "version: unknown version: v2"


TOPOLOGY = """
nodePools:
  default:
    gpus: [{type: H100, count: 2}]
devicePluginConfig:
  default: ts4
  configs:
    ts4:
      version: v1
      sharing:
        timeSlicing:
          resources: [{name: nvidia.com/gpu, replicas: 4}]
    broken: |
      version: v1
      sharing:
        timeSlicing:
          resources: [{name: nvidia.com/gpu, replicas: 0}]
"""


def test_cluster_config_keeps_bad_configs_apart_and_selects_per_node() -> None:
    cfg = load_cluster_config(TOPOLOGY)
    dp = cfg.device_plugin
    assert dp.default == "ts4" and set(dp.parsed) == {"ts4"}
    assert "replicas: number of replicas must be >= 2" in dp.errors["broken"]
    assert any("devicePluginConfig.configs.broken" in w for w in cfg.warnings)
    chosen = dpsharing.select(dp, {})
    assert chosen.sharing is not None and chosen.problem is None
    bad = dpsharing.select(dp, {dpsharing.CONFIG_LABEL: "broken"})
    assert bad.sharing is None and bad.problem is not None
    assert bad.problem[0] == "InvalidDevicePluginConfig"
    assert "sharing.timeSlicing.resources[0].replicas" in bad.problem[1]
    unknown = dpsharing.select(dp, {dpsharing.CONFIG_LABEL: "nope"})
    assert unknown.problem is not None and unknown.problem[0] == "UnknownDevicePluginConfig"


def test_default_must_name_a_config() -> None:
    with pytest.raises(ConfigError, match=r"devicePluginConfig\.default"):
        load_cluster_config(TOPOLOGY.replace("default: ts4", "default: ts9"))


def test_record_round_trip_and_old_records() -> None:
    sharing = dpsharing.parse_config(TS, "ts4")
    record = NodeTopology("n", "p", "H100", 81559, "h100", "", "", sharing=sharing)
    again = NodeTopology.from_yaml(record.to_yaml())
    assert again.sharing == sharing
    assert NodeTopology.from_dict({"nodeName": "n"}).sharing is None


def test_replica_ids() -> None:
    assert dpsharing.replica_id("GPU-a", 3) == "GPU-a::3"
    assert dpsharing.base_id("GPU-a::3") == "GPU-a" == dpsharing.base_id("GPU-a")
