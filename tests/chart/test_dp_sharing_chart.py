"""devicePlugin.config (NVIDIA device-plugin time-slicing / MPS configs, docs/sharing.md): rendered
into the topology ConfigMap as devicePluginConfig, read by the same parser as the
status-updater; bad input refused by the schema with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chartlib import Helm, Rendered
from fgo_common.config import load_cluster_config

TS4 = (
    "devicePlugin.config.configs.ts4.sharing.timeSlicing.resources[0].name=nvidia.com/gpu",
    "devicePlugin.config.configs.ts4.sharing.timeSlicing.resources[0].replicas=4",
)


def topology(rendered: Rendered) -> str:
    return str(rendered.get("ConfigMap", "topology")["data"]["topology.yml"])


def test_off_by_default(defaults: Rendered) -> None:
    assert "devicePluginConfig" not in yaml.safe_load(topology(defaults))


def test_configs_reach_the_topology_document(helm: Helm, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "devicePlugin": {
                    "config": {
                        "default": "ts4",
                        "configs": {
                            "ts4": {
                                "version": "v1",
                                "sharing": {
                                    "timeSlicing": {
                                        "renameByDefault": True,
                                        "resources": [{"name": "nvidia.com/gpu", "replicas": 4}],
                                    }
                                },
                            },
                            # the GPU operator's ConfigMap style: YAML text
                            "mps2": "version: v1\nsharing:\n  mps:\n    resources:\n"
                            "    - {name: nvidia.com/gpu, replicas: 2}\n",
                        },
                    }
                }
            }
        )
    )
    config = load_cluster_config(topology(helm.render([values])))
    dp = config.device_plugin
    assert dp.default == "ts4" and not dp.errors
    ts4, mps2 = dp.parsed["ts4"], dp.parsed["mps2"]
    assert ts4 is not None and ts4.resources[0].advertised == "nvidia.com/gpu.shared"
    assert mps2 is not None and mps2.strategy == "mps"


def test_set_flags_work(helm: Helm) -> None:
    config = load_cluster_config(topology(helm.render(sets=list(TS4))))
    assert config.device_plugin.default == ""
    assert set(config.device_plugin.parsed) == {"ts4"}


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (["devicePlugin.config.configs.a.sharing.timeSlicing.resources[0].name=nvidia.com/gpu",
          "devicePlugin.config.configs.a.sharing.timeSlicing.resources[0].replicas=0"],
         "replicas"),
        (["devicePlugin.config.configs.a.sharing.timeSlicing.resources[0].name=nvidia.com/gpu",
          "devicePlugin.config.configs.a.sharing.timeSlicing.resources[0].replicas=-2"],
         "replicas"),
        (["devicePlugin.config.configs.a.sharing.timeSlicing.resources[0].name=nvidia.com/gpu",
          "devicePlugin.config.configs.a.sharing.timeSlicing.resources[0].replicas=100000"],
         "replicas"),
        (["devicePlugin.config.configs.a.sharing.spatial.resources[0].replicas=2"], "spatial"),
        (["devicePlugin.config.configs.a.sharing.mps.renameByDefault=true",
          "devicePlugin.config.configs.a.sharing.mps.resources[0].name=nvidia.com/gpu",
          "devicePlugin.config.configs.a.sharing.mps.resources[0].replicas=2"],
         "renameByDefault"),
        (["devicePlugin.config.confgs.a=x"], "confgs"),
    ],
)  # fmt: skip
def test_schema_refuses_bad_input(helm: Helm, sets: list[str], field: str) -> None:
    error = helm.render_error(sets=sets)
    assert "devicePlugin" in error and field in error, error


def test_default_must_name_a_config(helm: Helm) -> None:
    error = helm.render_error(sets=[*TS4, "devicePlugin.config.default=ts9"])
    assert 'devicePlugin.config.default: "ts9" names no config' in error
