from __future__ import annotations

import pytest
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_status_exporter.main import exporter_options, hostname_for
from fgo_status_exporter.settings import Settings


def test_node_mode_needs_node_name() -> None:
    with pytest.raises(SettingsError, match="NODE_NAME"):
        load_settings(Settings, {"EXPORTER_MODE": "node"})
    assert load_settings(Settings, {"EXPORTER_MODE": "kwok"}).mode == "kwok"


def test_bad_values_name_the_variable_and_the_choices() -> None:
    with pytest.raises(SettingsError, match=r"EXPORTER_MODE=.*node, kwok"):
        load_settings(Settings, {"EXPORTER_MODE": "cluster"})
    with pytest.raises(SettingsError, match="DCGM_EXPORTER_VERSION"):
        load_settings(Settings, {"EXPORTER_MODE": "kwok", "DCGM_EXPORTER_VERSION": "9.9"})
    with pytest.raises(SettingsError, match=r"EXPORTER_EXTRA_METRICS.*DCGM_FI_NOPE"):
        load_settings(Settings, {"EXPORTER_MODE": "kwok", "EXPORTER_EXTRA_METRICS": "DCGM_FI_NOPE"})
    with pytest.raises(SettingsError, match="METRICS_PORT"):
        load_settings(Settings, {"EXPORTER_MODE": "kwok", "METRICS_PORT": "0"})


def test_switches_reach_the_options() -> None:
    settings = load_settings(
        Settings,
        {
            "EXPORTER_MODE": "node",
            "NODE_NAME": "gpu-node-1",
            "REFERENCE_HOSTNAME": "true",
            "HOSTNAME_LABEL": "hostname",
            "EMPTY_POD_LABELS": "true",
            "EXPORTER_EXTRA_METRICS": "DCGM_FI_PROF_SM_ACTIVE, DCGM_FI_DEV_FB_TOTAL",
        },
    )
    options = exporter_options(settings)
    assert options.host_label == "hostname"
    assert options.idle_pod_labels
    assert options.extra_metrics == ("DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_DEV_FB_TOTAL")
    assert hostname_for(settings, "gpu-node-1").startswith("nvidia-dcgm-exporter-")
    kwok = load_settings(Settings, {"EXPORTER_MODE": "kwok", "REFERENCE_HOSTNAME": "true"})
    assert hostname_for(kwok, "kwok-1") == "kwok-1"  # KWOK mode always labels with the node
