"""The Run:ai PrometheusRule: the object (golden: the reference's name, labels and rules), that
Prometheus accepts its rules (promtool), drift detection, and the polling-interval setting."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_status_updater.runai import (
    RULE_NAME,
    drift,
    is_ours,
    parse_go_duration,
    prometheus_rule,
)
from fgo_status_updater.settings import Settings

# The reference's expression for DCGM_FI_DEV_GPU_UTIL, as its controller writes it.
REFERENCE_UTIL_EXPR = """label_replace(
  label_replace(
    label_replace(
      DCGM_FI_DEV_GPU_UTIL,
      "pod_name", "$1", "exported_pod", "(.+)"
    ),
    "pod_namespace", "$1", "exported_namespace", "(.+)"
  ),
  "node", "$1", "Hostname", "(.+)"
)
* on(node) group_left(nodepool)
runai_node_nodepool_excluded"""


def test_the_object_is_the_references() -> None:
    rule = prometheus_rule("runai")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"] == {
        "name": "fake-gpu-operator-kwok-dcgm",
        "namespace": "runai",
        "labels": {"app": "nvidia-dcgm-exporter", "component": "status-exporter-kwok"},
    }
    (group,) = rule["spec"]["groups"]
    assert group["name"] == "kwok-dcgm-metrics"
    records = {r["record"]: r["expr"] for r in group["rules"]}
    assert list(records) == [
        "runai_dcgm_gpu_utilization",
        "runai_dcgm_gpu_used_mebibytes",
        "runai_dcgm_gpu_total_mebibytes",
    ]
    assert records["runai_dcgm_gpu_utilization"] == REFERENCE_UTIL_EXPR
    assert records["runai_dcgm_gpu_used_mebibytes"] == REFERENCE_UTIL_EXPR.replace(
        "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"
    )
    assert records["runai_dcgm_gpu_total_mebibytes"] == REFERENCE_UTIL_EXPR.replace(
        "DCGM_FI_DEV_GPU_UTIL", "(DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)"
    )
    assert all(set(r) == {"record", "expr"} for r in group["rules"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus)")
def test_prometheus_accepts_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(prometheus_rule("runai")["spec"]))
    promtool = shutil.which("promtool")
    assert promtool
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout


def test_drift_restores_labels_and_rules_and_keeps_the_rest() -> None:
    current = copy.deepcopy(prometheus_rule("runai"))
    current["metadata"]["labels"]["extra"] = "kept"  # a merge patch leaves other labels alone
    current["metadata"]["resourceVersion"] = "7"
    assert drift(current) is None
    # Fields a CRD may default (interval, partial_response_strategy) are not drift.
    defaulted = copy.deepcopy(current)
    defaulted["spec"]["groups"][0]["interval"] = "30s"
    defaulted["spec"]["groups"][0]["rules"][0]["labels"] = {}
    assert drift(defaulted) is None
    changed_expr = copy.deepcopy(current)
    changed_expr["spec"]["groups"][0]["rules"][0]["expr"] = "vector(1)"
    assert drift(changed_expr) is not None
    edited = copy.deepcopy(current)
    edited["spec"]["groups"][0]["rules"].pop()
    patch = drift(edited)
    assert patch == {
        "metadata": {"labels": prometheus_rule("runai")["metadata"]["labels"]},
        "spec": prometheus_rule("runai")["spec"],
    }
    relabelled = copy.deepcopy(current)
    relabelled["metadata"]["labels"]["component"] = "other"
    assert not is_ours(relabelled)
    assert drift(relabelled) is not None
    assert is_ours(current)
    assert not is_ours({"metadata": {"name": RULE_NAME}})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2m", 120.0), ("30s", 30.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("500ms", 0.5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2", "2 m", "m", "-1s", "2d", "1h 30m"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_go_duration(text)


def test_runai_settings() -> None:
    defaults = load_settings(Settings, {})
    assert defaults.runai_integration_enabled is False
    assert defaults.runai_poll_seconds == 120.0
    assert defaults.runai_namespace == "runai"
    on = load_settings(
        Settings,
        {"RUNAI_INTEGRATION_ENABLED": "true", "RUNAI_INTEGRATION_POLLING_INTERVAL": "5s"},
    )
    assert on.runai_integration_enabled and on.runai_poll_seconds == 5.0
    for env in (
        {"RUNAI_INTEGRATION_POLLING_INTERVAL": "2 minutes"},
        {"RUNAI_INTEGRATION_POLLING_INTERVAL": "0s"},
        {"RUNAI_NAMESPACE": ""},
    ):
        with pytest.raises(SettingsError, match="RUNAI_"):
            load_settings(Settings, env)
