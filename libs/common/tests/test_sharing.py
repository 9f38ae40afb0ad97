"""DRA opaque sharing configs: decoding, precedence, validation, what a container gets."""

from __future__ import annotations

from typing import Any

import pytest
from fgo_common import sharing
from fgo_common.sharing import AllocationResult, SharingConfigError

DRIVER = "gpu.nvidia.com"
GPU0 = AllocationResult("gpu", "gpu-0", "gpu", "GPU-aaaa")
GPU1 = AllocationResult("gpu", "gpu-1", "gpu", "GPU-bbbb")
MIG = AllocationResult("mig", "gpu-0-mig-1g10gb-0-0", "mig", "MIG-cccc")


def nvidia(sharing_block: dict[str, Any] | None = None, kind: str = "GpuConfig") -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": sharing.NVIDIA_API_VERSION, "kind": kind}
    if sharing_block is not None:
        body["sharing"] = sharing_block
    return body


def example(sharing_block: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": sharing.EXAMPLE_API_VERSION,
        "kind": "GpuConfig",
        "sharing": sharing_block,
    }


def allocation(*configs: tuple[str, list[str], dict[str, Any] | str], driver: str = DRIVER) -> dict:
    return {
        "devices": {
            "results": [],
            "config": [
                {
                    "source": source,
                    **({"requests": requests} if requests else {}),
                    "opaque": {"driver": driver, "parameters": params},
                }
                for source, requests, params in configs
            ],
        }
    }


def groups(alloc: dict, *results: AllocationResult, **kw: Any) -> dict[str, sharing.DeviceConfig]:
    out = {}
    for group in sharing.group_results(alloc, DRIVER, results, **kw):
        for result in group.results:
            out[result.device] = group.config
    return out


# -- decoding --------------------------------------------------------------------------------


def test_nvidia_time_slicing_defaults_its_interval() -> None:
    config = sharing.decode_parameters(nvidia({"strategy": "TimeSlicing"}))
    assert (config.strategy, config.interval) == ("TimeSlicing", "Default")


def test_nvidia_mps_settings_are_read_with_quantities() -> None:
    config = sharing.decode_parameters(
        nvidia(
            {
                "strategy": "MPS",
                "mpsConfig": {
                    "defaultActiveThreadPercentage": 50,
                    "defaultPinnedDeviceMemoryLimit": "10Gi",
                    "defaultPerDevicePinnedMemoryLimit": {"0": "5Gi"},
                },
            }
        )
    )
    assert config.mps is not None
    assert config.mps.active_thread_percentage == 50
    assert config.mps.pinned_limits(["GPU-a", "GPU-b"]) == {"GPU-a": "5120M", "GPU-b": "10240M"}


def test_parameters_as_json_text_decode_too() -> None:
    config = sharing.decode_parameters('{"apiVersion": "resource.nvidia.com/v1beta1", '
                                       '"kind": "GpuConfig"}')  # fmt: skip
    assert config.strategy is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (nvidia({"strategy": "TimeSlicing", "bogus": 1}), 'unknown field "sharing.bogus"'),
        ({**nvidia(), "extra": True}, 'unknown field "extra"'),
        (
            nvidia({"strategy": "TimeSlicing", "timeSlicingConfig": {"intervall": "Long"}}),
            'unknown field "sharing.timeSlicingConfig.intervall"',
        ),
        (
            {"apiVersion": sharing.NVIDIA_API_VERSION, "kind": "VfioDeviceConfig"},
            'no kind "VfioDeviceConfig" is registered for version "resource.nvidia.com/v1beta1"',
        ),
        ({"apiVersion": "example.com/v1", "kind": "GpuConfig"}, 'no kind "GpuConfig"'),
        ({"sharing": {}}, "Object 'Kind' is missing"),
        ("{not json", "parameters are not JSON"),
        (nvidia({"strategy": 3}), "sharing.strategy: expected a string, got a number"),
        (
            nvidia({"strategy": "MPS", "timeSlicingConfig": {"interval": "Long"}}),
            "cannot use TimeSlicingConfig with the 'MPS' strategy",
        ),
        (
            nvidia({"strategy": "TimeSlicing", "mpsConfig": {}}),
            "cannot use MpsConfig with the 'TimeSlicing' strategy",
        ),
        (
            nvidia({"strategy": "MPS", "mpsConfig": {"defaultPinnedDeviceMemoryLimit": "lots"}}),
            "sharing.mpsConfig.defaultPinnedDeviceMemoryLimit",
        ),
        (
            nvidia({"strategy": "TimeSlicing", "timeSlicingConfig": {}}, kind="MigDeviceConfig"),
            'unknown field "sharing.timeSlicingConfig"',
        ),
    ],
)
def test_unreadable_parameters_are_refused_with_the_field(params: Any, message: str) -> None:
    with pytest.raises(SharingConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sharing.decode_parameters(params)


# -- precedence ------------------------------------------------------------------------------


def test_without_configs_every_device_gets_the_unshared_default() -> None:
    got = groups(allocation(), GPU0, MIG)
    assert got["gpu-0"] == sharing.DEFAULT_GPU_CONFIG
    assert got["gpu-0-mig-1g10gb-0-0"] == sharing.DEFAULT_MIG_CONFIG


def test_claim_configs_beat_class_configs_and_later_beat_earlier() -> None:
    alloc = allocation(
        ("FromClaim", [], nvidia({"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Long"}})),
        ("FromClass", [], nvidia({"strategy": "MPS"})),
        ("FromClaim", [], nvidia({"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Short"}})),
    )  # fmt: skip
    assert groups(alloc, GPU0)["gpu-0"].interval == "Short"


def test_a_config_naming_the_request_wins_and_others_keep_theirs() -> None:
    alloc = allocation(
        ("FromClaim", ["other"], nvidia({"strategy": "MPS"})),
        ("FromClaim", [], nvidia({"strategy": "TimeSlicing"})),
    )
    other = AllocationResult("other", "gpu-1", "gpu", "GPU-bbbb")
    got = groups(alloc, GPU0, other)
    assert (got["gpu-0"].strategy, got["gpu-1"].strategy) == ("TimeSlicing", "TimeSlicing")
    alloc = allocation(
        ("FromClaim", [], nvidia({"strategy": "TimeSlicing"})),
        ("FromClaim", ["other"], nvidia({"strategy": "MPS"})),
    )
    got = groups(alloc, GPU0, other)
    assert (got["gpu-0"].strategy, got["gpu-1"].strategy) == ("TimeSlicing", "MPS")


def test_gpu_configs_skip_mig_devices_and_naming_one_for_it_is_an_error() -> None:
    alloc = allocation(("FromClaim", [], nvidia({"strategy": "TimeSlicing"})))
    got = groups(alloc, GPU0, MIG)
    assert got["gpu-0"].strategy == "TimeSlicing"
    assert got["gpu-0-mig-1g10gb-0-0"] == sharing.DEFAULT_MIG_CONFIG
    alloc = allocation(("FromClaim", ["mig"], nvidia({"strategy": "TimeSlicing"})))
    with pytest.raises(SharingConfigError, match="cannot apply GpuConfig to device"):
        groups(alloc, MIG)


def test_other_drivers_configs_are_skipped_but_a_non_opaque_config_is_refused() -> None:
    alloc = allocation(("FromClaim", [], {"anything": "goes"}), driver="net.example.com")
    assert groups(alloc, GPU0)["gpu-0"] == sharing.DEFAULT_GPU_CONFIG
    alloc = {"devices": {"config": [{"source": "FromClaim"}]}}
    with pytest.raises(SharingConfigError, match="only opaque parameters are supported"):
        groups(alloc, GPU0)
    alloc = {"devices": {"config": [{"source": "Elsewhere", "opaque": {}}]}}
    with pytest.raises(SharingConfigError, match="invalid config source: Elsewhere"):
        groups(alloc, GPU0)


def test_decoding_errors_say_they_are_about_the_parameters() -> None:
    alloc = allocation(("FromClaim", [], nvidia({"strategy": "MPS", "x": 1})))
    with pytest.raises(SharingConfigError, match=r"^error decoding config parameters: strict"):
        groups(alloc, GPU0)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            nvidia({"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Forever"}}),
            "unknown time-slice interval: Forever",
        ),
        (nvidia({"strategy": "Spatial"}), "unknown GPU sharing strategy: Spatial"),
        (nvidia({"strategy": "Fabric"}), "fabric GPU sharing strategy is not enabled"),
        (
            nvidia({"strategy": "MPS", "mpsConfig": {"defaultActiveThreadPercentage": 101}}),
            "active thread percentage must not be greater than 100",
        ),
        (
            nvidia({"strategy": "MPS", "mpsConfig": {"defaultActiveThreadPercentage": -1}}),
            "active thread percentage must not be negative",
        ),
        (example({"strategy": "MPS"}), "unknown GPU sharing strategy: MPS"),
        (
            example({"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Never"}}),
            "unknown time-slice interval: Never",
        ),
        (
            example({"strategy": "SpacePartitioning", "spacePartitioningConfig": {"partitionCount": 0}}),
            "invalid partition count: 0",
        ),
    ],
)  # fmt: skip
def test_invalid_configs_fail_with_the_drivers_message(params: Any, message: str) -> None:
    alloc = allocation(("FromClaim", [], params))
    with pytest.raises(SharingConfigError, match=f"^error validating GPU config: {message}"):
        groups(alloc, GPU0)


def test_feature_gates_switch_strategies_off() -> None:
    alloc = allocation(("FromClaim", [], nvidia({"strategy": "MPS"})))
    gates = sharing.parse_feature_gates("MPSSupport=false")
    with pytest.raises(SharingConfigError, match="unknown GPU sharing strategy: MPS"):
        groups(alloc, GPU0, gates=gates)
    assert groups(alloc, GPU0)["gpu-0"].strategy == "MPS"


@pytest.mark.parametrize("text", ["MPSSupport", "MPSSupport=yes", "Bogus=true"])
def test_bad_feature_gates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="feature gate"):
        sharing.parse_feature_gates(text)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"defaultPinnedDeviceMemoryLimit": "1Ki"}, "invalid limit: default value set too low"),
        ({"defaultPerDevicePinnedMemoryLimit": {"0": "10"}}, "invalid limit: value set too low"),
        ({"defaultPerDevicePinnedMemoryLimit": {"7": "1Gi"}}, "invalid device index: 7"),
        ({"defaultPerDevicePinnedMemoryLimit": {"GPU-zz": "1Gi"}}, "unable to parse key"),
    ],
)
def test_mps_pinned_limits_follow_nvidias_rules(limits: dict[str, Any], message: str) -> None:
    config = sharing.decode_parameters(nvidia({"strategy": "MPS", "mpsConfig": limits}))
    assert config.mps is not None
    with pytest.raises(SharingConfigError, match=message):
        config.mps.pinned_limits(["GPU-aaaa"])


def test_mps_limits_by_uuid() -> None:
    config = sharing.decode_parameters(
        nvidia({"strategy": "MPS", "mpsConfig": {"defaultPerDevicePinnedMemoryLimit": {"GPU-b": "2Gi"}}})
    )  # fmt: skip
    assert config.mps is not None
    assert config.mps.pinned_limits(["GPU-a", "GPU-b"]) == {"GPU-b": "2048M"}


# -- what the container gets -----------------------------------------------------------------


def test_reference_env_for_the_reference_scenarios() -> None:
    ts = sharing.decode_parameters(example({"strategy": "TimeSlicing"}))
    assert sharing.reference_env(ts, "gpu-1") == [
        "GPU_DEVICE_gpu_1_SHARING_STRATEGY=TimeSlicing",
        "GPU_DEVICE_gpu_1_TIMESLICE_INTERVAL=Default",
    ]
    sp = sharing.decode_parameters(
        example(
            {"strategy": "SpacePartitioning", "spacePartitioningConfig": {"partitionCount": 10}}
        )
    )
    assert sharing.reference_env(sp, "gpu-2") == [
        "GPU_DEVICE_gpu_2_SHARING_STRATEGY=SpacePartitioning",
        "GPU_DEVICE_gpu_2_PARTITION_COUNT=10",
    ]
    # NVIDIA's configs never add the reference's variables.
    nv = sharing.decode_parameters(nvidia({"strategy": "TimeSlicing"}))
    assert sharing.reference_env(nv, "gpu-1") == []


def test_mps_daemon_id_is_claim_uid_and_a_hash_of_the_uuids() -> None:
    a = sharing.mps_daemon_id("uid-1", ["GPU-a", "GPU-b"])
    assert a.startswith("uid-1-") and len(a) == len("uid-1-") + 5
    assert a != sharing.mps_daemon_id("uid-1", ["GPU-a"])
    assert a == sharing.mps_daemon_id("uid-1", ["GPU-a", "GPU-b"])


def test_summary_names_what_was_applied() -> None:
    config = sharing.decode_parameters(
        nvidia({"strategy": "MPS", "mpsConfig": {"defaultActiveThreadPercentage": 25}})
    )
    assert sharing.sharing_summary(config) == {"strategy": "MPS", "activeThreadPercentage": 25}
    assert sharing.sharing_summary(sharing.DEFAULT_GPU_CONFIG) == {}
