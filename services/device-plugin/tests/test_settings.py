"""Settings: defaults, the topology namespace fallback chain, and one clear error per bad value."""

from __future__ import annotations

import pytest
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_device_plugin.settings import Settings


def test_node_mode_needs_node_name() -> None:
    with pytest.raises(SettingsError, match="NODE_NAME"):
        load_settings(Settings, {})
    assert load_settings(Settings, {"DEVICE_PLUGIN_MODE": "kwok"}).mode == "kwok"


def test_topology_namespace_fallbacks() -> None:
    base = {"NODE_NAME": "n"}
    assert load_settings(Settings, base).effective_topology_namespace == "gpu-operator"
    with_pod = {**base, "POD_NAMESPACE": "fgo"}
    assert load_settings(Settings, with_pod).effective_topology_namespace == "fgo"
    explicit = {**with_pod, "TOPOLOGY_CM_NAMESPACE": "records"}
    assert load_settings(Settings, explicit).effective_topology_namespace == "records"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEVICE_PLUGIN_MODE": "kubelet"}, "DEVICE_PLUGIN_MODE='kubelet': allowed values"),
        ({"MIG_STRATEGY": "full"}, "MIG_STRATEGY='full': allowed values"),
        ({"VISIBLE_DEVICES_ENV_NAME": "A-B"}, "VISIBLE_DEVICES_ENV_NAME"),
        ({"KUBELET_POLL_INTERVAL_SECONDS": "0"}, "KUBELET_POLL_INTERVAL_SECONDS"),
        ({"KWOK_WORKERS": "x"}, "KWOK_WORKERS='x': expected an integer"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(Settings, {"NODE_NAME": "n", **env})


def test_state_host_dir_defaults_to_state_dir() -> None:
    config = load_settings(Settings, {"NODE_NAME": "n", "STATE_DIR": "/s"})
    assert config.effective_state_host_dir == "/s"
    config = load_settings(Settings, {"NODE_NAME": "n", "STATE_HOST_DIR": "/host/s"})
    assert config.effective_state_host_dir == "/host/s"
