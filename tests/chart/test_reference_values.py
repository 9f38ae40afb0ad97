"""Values files of the reference chart (run-ai/fake-gpu-operator 0.2) on ours (issue 18, part C).

``ci/reference-0.2-values.yaml`` is the reference's values.yaml with every key it ships, but the
image repositories of the components we run. A repository (or registry) naming the reference's
Go images is refused; every key we accept but ignore is named by NOTES.txt; the DRA kubelet
plugin's ``draPlugin.kubeletPlugin.*`` keys are mapped onto ours.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chartlib import CHART, Helm

REFERENCE = CHART / "ci" / "reference-0.2-values.yaml"
REF_REPO = "ghcr.io/run-ai/fake-gpu-operator"

# Component -> (the reference's image name, our image name).
IMAGES = {
    "statusUpdater": ("status-updater", "status-updater"),
    "devicePlugin": ("device-plugin", "device-plugin"),
    "kwokGpuDevicePlugin": ("kwok-gpu-device-plugin", "device-plugin"),
    "draPlugin": ("dra-plugin-gpu", "dra-plugin"),
    "kwokDraPlugin": ("kwok-dra-plugin", "kwok-dra-plugin"),
    "statusExporter": ("status-exporter", "status-exporter"),
}


def _write(tmp_path: Path, name: str, values: object) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


# ----------------------------------------------------------------------------- images (item 5)


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_reference_image_repository_is_refused(helm: Helm, component: str) -> None:
    ref_name, ours = IMAGES[component]
    repo = f"{REF_REPO}/{ref_name}"
    sets = [f"{component}.image.repository={repo}"]
    if component in ("draPlugin", "kwokDraPlugin"):
        sets.append(f"{component}.enabled=true")
    err = helm.render_error([REFERENCE], sets)
    assert f"{component}.image.repository={repo} is an image of the reference chart" in err
    assert f"default: {ours}, under image.registry" in err
    assert f"this chart's {ours} image" in err


def test_every_reference_image_is_reported_at_once(helm: Helm) -> None:
    """The reference's values.yaml as shipped: each enabled component's image is named."""
    sets = [f"{c}.image.repository={REF_REPO}/{ref}" for c, (ref, _) in IMAGES.items()]
    err = helm.render_error([REFERENCE], sets)
    for component in ("statusUpdater", "devicePlugin", "kwokGpuDevicePlugin", "statusExporter"):
        assert f"{component}.image.repository=" in err
    # Disabled in the reference's defaults: their images are never pulled.
    assert "draPlugin.image" not in err and "kwokDraPlugin.image" not in err


def test_reference_registry_is_refused(helm: Helm) -> None:
    err = helm.render_error(sets=["image.registry=ghcr.io/run-ai/fake-gpu-operator/"])
    assert "image.registry=ghcr.io/run-ai/fake-gpu-operator/ is the reference chart's" in err


@pytest.mark.parametrize(
    "repo",
    [
        "my.registry/team/device-plugin",
        "ghcr.io/run-ai/fake-gpu-operator-py/device-plugin",
        "device-plugin",
    ],
)
def test_other_repositories_are_accepted(helm: Helm, repo: str) -> None:
    rendered = helm.render([REFERENCE], [f"devicePlugin.image.repository={repo}"])
    image = rendered.get("DaemonSet", "fgo-device-plugin")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image.startswith(repo if "/" in repo else f"ghcr.io/fake-gpu-operator/{repo}")


def test_reference_images_of_ignored_components_are_accepted(helm: Helm) -> None:
    """topologyServer, migFaker, ... are not run: their images are named as ignored keys."""
    values = yaml.safe_load(REFERENCE.read_text())
    assert values["topologyServer"]["image"]["repository"].startswith(REF_REPO)
    helm.render([REFERENCE])
