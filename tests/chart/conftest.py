"""Fixtures of the chart tests: the pinned helm/kubectl, rendering, the values matrix.

Unit tier (no cluster): ``helm lint`` and ``helm template`` over ``ci/*-values.yaml``, plus
checks of what the templates render. Integration tier (``test_cluster.py``, marked
``integration``): the rendered objects against the real local control plane.

helm and kubectl are the pinned builds of ``hack/build-tools.sh`` (``FGO_BIN_DIR`` overrides);
without them the tests fail with the command that builds them, they are never skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The helper modules next to this file (chartlib, rbac) are imported by name.
sys.path.insert(0, str(Path(__file__).parent))

from chartlib import CI_VALUES, Helm, Rendered, bin_dir_default, values_id


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    path = bin_dir_default()
    missing = [b for b in ("helm", "kubectl") if not os.access(path / b, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing in {path}: run `make tools` (hack/build-tools.sh) "
            "or set FGO_BIN_DIR",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def kube_version(bin_dir: Path) -> str:
    """The pinned Kubernetes version (the kubectl built with the control plane)."""
    out = subprocess.run(
        [str(bin_dir / "kubectl"), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(out.stdout)["clientVersion"]["gitVersion"])


@pytest.fixture(scope="session")
def helm(bin_dir: Path, kube_version: str) -> Helm:
    return Helm(bin_dir, kube_version)


@pytest.fixture(scope="session")
def defaults(helm: Helm) -> Rendered:
    return helm.render()


@pytest.fixture(scope="session")
def everything(helm: Helm) -> Rendered:
    """Every component and optional object on (ServiceMonitors with their API declared)."""
    return helm.render(
        sets=[
            "draPlugin.enabled=true",
            "kwokDraPlugin.enabled=true",
            "statusExporter.serviceMonitor.enabled=true",
            "statusUpdater.runaiIntegration.enabled=true",
            "runai.preloaderStubs=true",
        ],
        extra=["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"],
    )


@pytest.fixture(params=CI_VALUES, ids=values_id)
def ci_values(request: pytest.FixtureRequest) -> Iterator[Path]:
    yield request.param
