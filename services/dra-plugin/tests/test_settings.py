"""Settings reach the CDI edits: what the chart's DaemonSet sets is what GPU containers get."""

from __future__ import annotations

import pytest
from fgo_common.nodestate import SMI_CONTAINER_DIR, SMI_HOST_DIR
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_dra_plugin.plugin import container_setup
from fgo_dra_plugin.settings import Settings


def test_defaults_mount_the_bundle_where_install_nvidia_smi_puts_it() -> None:
    settings = load_settings(Settings, {"NODE_NAME": "n1"})
    setup = container_setup(settings)
    assert setup.bundle_host_dir == SMI_HOST_DIR
    assert setup.bundle_container_dir == SMI_CONTAINER_DIR
    assert setup.seed == 0


def test_seed_and_bundle_dir_from_the_environment() -> None:
    settings = load_settings(
        Settings,
        {"NODE_NAME": "n1", "FGO_SEED": "42", "NVIDIA_SMI_BUNDLE_HOST_DIR": "/opt/fgo/smi"},
    )
    edits = container_setup(settings).common_edits()
    assert "FGO_SEED=42" in edits["env"]
    mounts = {m["containerPath"]: m["hostPath"] for m in edits["mounts"]}
    assert mounts[SMI_CONTAINER_DIR] == "/opt/fgo/smi"


def test_empty_bundle_dir_means_no_bundle_mount() -> None:
    settings = load_settings(Settings, {"NODE_NAME": "n1", "NVIDIA_SMI_BUNDLE_HOST_DIR": ""})
    edits = container_setup(settings).common_edits()
    assert all(m["containerPath"] != SMI_CONTAINER_DIR for m in edits.get("mounts", []))
    assert not any(e.startswith("FGO_NVIDIA_SMI_HOME=") for e in edits["env"])


def test_seed_must_be_an_integer() -> None:
    with pytest.raises(SettingsError, match="FGO_SEED"):
        load_settings(Settings, {"NODE_NAME": "n1", "FGO_SEED": "lots"})


def test_device_naming_defaults_to_nvidia_and_refuses_unknown_values() -> None:
    assert load_settings(Settings, {"NODE_NAME": "n1"}).naming == "nvidia"
    settings = load_settings(Settings, {"NODE_NAME": "n1", "DEVICE_NAMING": "reference"})
    assert settings.naming == "reference"
    with pytest.raises(SettingsError, match="DEVICE_NAMING"):
        load_settings(Settings, {"NODE_NAME": "n1", "DEVICE_NAMING": "uuid"})
