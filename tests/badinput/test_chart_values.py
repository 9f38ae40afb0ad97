"""Values files against the chart: ``helm template`` either refuses them with a message that
names the value (the schema, or the validation template), or renders a chart whose topology
ConfigMap the status-updater accepts — never an install that only fails later, at run time,
inside the cluster.

tests/chart checks specific refusals; this corpus is about breadth (wrong types everywhere,
unknown keys, huge and negative numbers, unicode, YAML oddities, 1 MiB files) and about that
cross-check with ``fgo_common.config``.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from badinput_counts import tried
from fgo_common.config import ConfigError, load_cluster_config

SURFACE = "chart values: helm template/lint"
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fake-gpu-operator"
KUBE_VERSION = "1.36.0"
REFUSED = (
    "values don't meet the specifications of the schema",
    "fake-gpu-operator: invalid values:",
)


def helm_binary() -> Path:
    explicit = os.environ.get("FGO_BIN_DIR")
    if explicit:
        return Path(explicit) / "helm"
    out = subprocess.run(
        [str(REPO / "hack" / "build-tools.sh"), "--print-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = Path(out.stdout.strip()) / "helm"
    assert path.exists(), f"{path} missing: run `make tools` (hack/build-tools.sh)"
    return path


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


def template(helm: Path, values: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", "fgo", str(CHART), "--namespace", "gpu-operator",
         "--kube-version", KUBE_VERSION, "-f", str(values)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def topology_of(rendered: str) -> str | None:
    for doc in yaml.safe_load_all(rendered):
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "topology":
            return str(doc["data"]["topology.yml"])
    return None


def pools(**pool: Any) -> dict[str, Any]:
    return {"topology": {"nodePools": {"bad": pool}}}


# (id, values document or raw text). Each is refused, or renders a valid topology.
VALUES: list[tuple[str, Any]] = [
    ("unknown-top-key", {"devicePlugn": {"enabled": True}}),
    ("enabled-string", {"devicePlugin": {"enabled": "yes"}}),
    ("enabled-int", {"statusUpdater": {"enabled": 1}}),
    ("port-string", {"statusExporter": {"port": "http"}}),
    ("port-negative", {"statusExporter": {"port": -1}}),
    ("port-huge", {"statusExporter": {"port": 70000}}),
    ("port-float", {"statusExporter": {"port": 9400.5}}),
    ("resources-list", {"statusUpdater": {"resources": ["cpu"]}}),
    ("tolerations-mapping", {"devicePlugin": {"tolerations": {"key": "x"}}}),
    ("node-selector-list", {"statusExporter": {"nodeSelector": ["a"]}}),
    ("image-registry-int", {"image": {"registry": 5}}),
    ("pull-policy", {"image": {"pullPolicy": "Sometimes"}}),
    ("log-level", {"logLevel": "LOUD"}),
    ("seed-string", {"telemetrySeed": "abc"}),
    ("seed-negative", {"telemetrySeed": -5}),
    ("prometheus-url-int", {"prometheus": {"url": 9090}}),
    ("mig-strategy", {"topology": {"migStrategy": "half"}}),
    ("label-key-empty", {"topology": {"nodePoolLabelKey": ""}}),
    ("label-key-spaces", {"topology": {"nodePoolLabelKey": "my pool key"}}),
    ("pools-list", {"topology": {"nodePools": ["a"]}}),
    ("pool-string", {"topology": {"nodePools": {"a": "H100"}}}),
    ("gpus-string", pools(gpus="H100")),
    ("gpu-count-zero", pools(gpus=[{"type": "H100", "count": 0}])),
    ("gpu-count-negative", pools(gpus=[{"type": "H100", "count": -3}])),
    ("gpu-count-huge", pools(gpus=[{"type": "H100", "count": 10**12}])),
    ("gpu-count-string", pools(gpus=[{"type": "H100", "count": "8"}])),
    ("gpu-count-float", pools(gpus=[{"type": "H100", "count": 2.5}])),
    ("gpu-type-unknown", pools(gpus=[{"type": "GeForce 256"}])),
    ("gpu-type-unicode", pools(gpus=[{"type": "\uff28\uff11\uff10\uff10"}])),
    ("gpu-type-empty", pools(gpus=[{"type": ""}])),
    ("gpu-memory-negative", pools(gpus=[{"type": "H100", "memory": "-80Gi"}])),
    ("gpu-memory-unit", pools(gpus=[{"type": "H100", "memory": "80parsecs"}])),
    ("gpu-memory-400-digits", pools(gpus=[{"type": "Custom", "memory": "9" * 400 + "Gi"}])),
    ("gpu-unknown-key", pools(gpus=[{"type": "H100", "colour": "green"}])),
    ("legacy-count-string", pools(gpuProduct="Tesla-K80", gpuCount="two")),
    ("legacy-no-count", pools(gpuProduct="Tesla-K80")),
    ("profile-unknown", pools(gpu={"profile": "h9000"})),
    ("profile-backend", pools(gpu={"backend": "nvml", "profile": "h100"})),
    ("numa-zones-huge", pools(gpus=[{"type": "H100"}], numa={"zones": 1000})),
    (
        "numa-mismatch",
        pools(gpus=[{"type": "H100", "count": 2}], numa={"zones": 2, "gpusPerZone": [5, 5]}),
    ),
    (
        "other-devices-huge",
        pools(gpus=[{"type": "H100"}], otherDevices=[{"name": "x", "count": 10**9}]),
    ),
    ("other-devices-string", pools(gpus=[{"type": "H100"}], otherDevices="nic")),
    ("mig-config-list", pools(gpus=[{"type": "H100"}], mig=["all-1g.10gb"])),
    ("driver-version-list", pools(gpus=[{"type": "H100"}], driverVersion=[1])),
    ("cluster-string", {"cluster": "nodePools: {"}),
    ("cluster-scalar", {"cluster": 5}),
    ("extra-env-mapping", {"statusUpdater": {"extraEnv": {"A": "B"}}}),
    ("extra-env-bad-name", {"statusUpdater": {"extraEnv": [{"name": "1BAD", "value": "x"}]}}),
    ("default-utilization", {"statusUpdater": {"defaultUtilization": "lots"}}),
    ("visible-devices-env", {"devicePlugin": {"visibleDevicesEnvName": "A-B"}}),
    ("yaml-not-mapping", "- a\n- b\n"),
    ("yaml-scalar", "42\n"),
    ("yaml-tab", "topology:\n\tnodePools: {}\n"),
    ("yaml-anchor-loop", "a: &a [*a]\n"),
    ("yaml-1MiB-string", {"topology": {"nodePools": {"a": {"gpus": [{"type": "x" * (1 << 20)}]}}}}),
]


def _write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, allow_unicode=True))
    return path


def check_values(helm: Path, path: Path) -> str:
    """Refused with a clear message, or rendered with a valid topology; returns which."""
    result = template(helm, path)
    assert "panic" not in result.stderr.lower(), result.stderr[-2000:]
    if result.returncode != 0:
        error = result.stderr
        assert error.strip(), "helm failed without a message"
        clear = any(marker in error for marker in REFUSED) or "error converting YAML" in error
        clear = clear or "cannot unmarshal" in error or "failed to parse" in error
        assert clear, f"unclear refusal: {error[-1500:]}"
        return "refused"
    text = topology_of(result.stdout)
    assert text is not None, "no topology ConfigMap rendered"
    try:
        load_cluster_config(text)
    except ConfigError as exc:
        raise AssertionError(
            f"helm accepted values whose topology the status-updater refuses at run time: {exc}"
        ) from None
    return "rendered"


@pytest.mark.parametrize(("name", "doc"), VALUES, ids=[n for n, _ in VALUES])
def test_bad_values_are_refused_or_valid(helm: Path, tmp_path: Path, name: str, doc: Any) -> None:
    tried(SURFACE)
    check_values(helm, _write(tmp_path, name, doc))


def _mutations(seed: int, count: int) -> list[dict[str, Any]]:
    """Random single-field changes of a valid pool (deterministic per seed)."""
    rng = random.Random(seed)
    values: list[Any] = [
        0,
        -1,
        65,
        10**6,
        "",
        "x",
        "8",
        2.5,
        True,
        None,
        [],
        {},
        "\u00e9",
        "9" * 30,
    ]
    fields = ["type", "count", "memory", "profile", "bogus"]
    out = []
    for _ in range(count):
        gpu: dict[str, Any] = {"type": "H100", "count": 2}
        gpu[rng.choice(fields)] = rng.choice(values)
        pool: dict[str, Any] = {"gpus": [gpu]}
        if rng.random() < 0.3:
            pool[rng.choice(["numa", "otherDevices", "mig", "driverVersion"])] = rng.choice(values)
        out.append({"topology": {"nodePools": {rng.choice(["a", "b-1", "Pool"]): pool}}})
    return out


@pytest.mark.parametrize("doc", _mutations(11, 30), ids=range(30))
def test_mutated_pools_are_refused_or_valid(
    helm: Path, tmp_path: Path, doc: dict[str, Any]
) -> None:
    tried(SURFACE)
    check_values(helm, _write(tmp_path, "mutated", doc))


def test_lint_refuses_a_bad_values_file(helm: Path, tmp_path: Path) -> None:
    tried(SURFACE)
    path = _write(tmp_path, "lint", {"statusExporter": {"port": "http"}})
    result = subprocess.run(
        [str(helm), "lint", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "statusExporter" in result.stdout + result.stderr
