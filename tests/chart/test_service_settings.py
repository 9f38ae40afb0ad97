"""The chart's environment matches what each service reads.

Every container of ours gets its configuration from env vars (one typed Settings dataclass per
service, ``fgo_common.runtime.settings.env_field``). Here, for every rendered workload: each
variable the chart sets is a setting the service declares (a renamed setting would otherwise be
ignored silently), and the service's own loader accepts the rendered environment, downward-API
fields resolved as the kubelet would (so a required setting the chart forgets, or a value it
renders wrongly, fails here rather than in a crash-looping pod).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import pytest
from chartlib import Rendered
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_localcluster.operator import SERVICE_MODULES, resolve_env


def _settings_class(module: str) -> type[Any]:
    for name in (f"{module}.settings", f"{module}.main"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        cls = getattr(mod, "Settings", None)
        if cls is not None and dataclasses.is_dataclass(cls):
            return cls  # type: ignore[return-value]
    raise LookupError(f"{module} has no Settings dataclass (settings.py or main.py)")


def _declared(cls: type[Any]) -> set[str]:
    return {f.metadata["env"] for f in dataclasses.fields(cls) if f.metadata.get("env")}


def _containers(rendered: Rendered) -> list[tuple[str, dict[str, Any], str]]:
    out = []
    for workload in rendered.workloads():
        for c in workload["spec"]["template"]["spec"]["containers"]:
            repository = c["image"].rsplit("/", 1)[-1].split(":", 1)[0]
            out.append((f"{workload['metadata']['name']}/{c['name']}", c, repository))
    return out


def test_every_container_runs_a_known_service(everything: Rendered) -> None:
    for name, _, repository in _containers(everything):
        assert repository in SERVICE_MODULES, f"{name}: image {repository} is not a service"


@pytest.mark.parametrize(
    "workload",
    [
        "fgo-status-updater",
        "fgo-device-plugin",
        "fgo-kwok-gpu-capacity",
        "fgo-dra-plugin",
        "fgo-kwok-dra-plugin",
        "nvidia-dcgm-exporter",
        "nvidia-dcgm-exporter-kwok",
    ],
)
def test_chart_env_is_what_the_service_reads(everything: Rendered, workload: str) -> None:
    matches = [(c, r) for n, c, r in _containers(everything) if n.split("/")[0] == workload]
    assert matches, f"{workload} not rendered"
    container, repository = matches[0]
    module = SERVICE_MODULES[repository]
    try:
        cls = _settings_class(module)
    except LookupError as exc:
        pytest.fail(f"{workload}: {exc}", pytrace=False)
    entries = container.get("env", [])
    unknown = sorted({e["name"] for e in entries} - _declared(cls))
    assert not unknown, (
        f"{workload}: the chart sets {unknown}, which {module} does not read "
        f"(it reads {sorted(_declared(cls))})"
    )
    env = resolve_env(entries, pod_namespace="sim-gpus", pod_name=f"{workload}-x",
                      service_account="sa", node_name="node-a")  # fmt: skip
    try:
        load_settings(cls, env)
    except SettingsError as exc:
        pytest.fail(f"{workload}: {module} rejects the chart's environment: {exc}", pytrace=False)


# Chart values that mirror a service setting: with the chart's defaults, the service must end up
# with its own default, so `helm install` without values behaves like the service's README says.
MIRRORED_DEFAULTS = [
    ("fgo-status-updater", "MIG_RECONFIGURE_SECONDS"),  # statusUpdater.migReconfigureSeconds
    ("nvidia-dcgm-exporter", "EMPTY_POD_LABELS"),  # statusExporter.emptyPodLabels
    ("nvidia-dcgm-exporter-kwok", "EMPTY_POD_LABELS"),
    ("fgo-device-plugin", "FGO_SEED"),  # telemetrySeed
    ("fgo-dra-plugin", "FGO_SEED"),
    ("fgo-dra-plugin", "NVIDIA_SMI_BUNDLE_HOST_DIR"),
]


@pytest.mark.parametrize(("workload", "variable"), MIRRORED_DEFAULTS)
def test_chart_defaults_equal_the_service_defaults(
    everything: Rendered, workload: str, variable: str
) -> None:
    matches = [(c, r) for n, c, r in _containers(everything) if n.split("/")[0] == workload]
    assert matches, f"{workload} not rendered"
    container, repository = matches[0]
    cls = _settings_class(SERVICE_MODULES[repository])
    entries = container.get("env", [])
    assert variable in {e["name"] for e in entries}, f"{workload} does not set {variable}"
    env = resolve_env(entries, pod_namespace="sim-gpus", pod_name=f"{workload}-x",
                      service_account="sa", node_name="node-a")  # fmt: skip
    field = next(f for f in dataclasses.fields(cls) if f.metadata.get("env") == variable)
    rendered = getattr(load_settings(cls, env), field.name)
    assert rendered == field.default, (
        f"{workload}: the chart's default gives {variable}={rendered!r}, the service's own "
        f"default is {field.default!r}"
    )
