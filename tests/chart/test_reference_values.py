"""Values files of the reference chart (run-ai/fake-gpu-operator 0.2) on ours (issue 18, part C).

``ci/reference-0.2-values.yaml`` is the reference's values.yaml with every key it ships, but the
image repositories of the components we run. A repository (or registry) naming the reference's
Go images is refused; every key we accept but ignore is named by NOTES.txt; the DRA kubelet
plugin's ``draPlugin.kubeletPlugin.*`` keys are mapped onto ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


# ----------------------------------------------------------------------------- keys (item 4)

# Every key of the reference's values.yaml we accept but ignore, with its value there: each is
# named by NOTES.txt when set. (Keys we honour or map are not named as ignored.)
IGNORED_IN_REFERENCE_DEFAULTS = [
    "environment.fakeCSVVersion",
    "statusExporter.topologyMaxExportInterval",
    "statusExporter.kwok.prometheusRule",
    "draPlugin.serviceAccount",
    "draPlugin.kubeletPlugin.containers.plugin.securityContext",
    "topologyServer",
    "migFaker",
    "nvmlMock",
    "gpuOperator",
    "nvidiaDraDriver",
    "ubuntu",
    "computeDomainController",
    "computeDomainDraPlugin.healthcheckPort",
    "kwokComputeDomainDraPlugin",
    "gpu-operator",
    "nvidia-dra-driver-gpu",
]
HONOURED = [
    "environment.resourceReservationNamespace",
    "prometheus",
    "devicePlugin",
    "statusUpdater.enabled",
    "statusUpdater.disableNodeLabeling",
    "statusUpdater.runaiIntegration",
    "statusExporter.nodeResourceTopology",
    "statusExporter.podResources",
    "kwokGpuDevicePlugin",
    "kwokDraPlugin",
    "computeDomainDraPlugin",
    "runtimeClass",
    "topologyConfigMap",
    "topology",
    "builtinProfiles",
    "customProfiles",
]


def _ignored_lines(notes: str) -> dict[str, str]:
    """NOTES' "no effect here" list: key -> reason."""
    _, found, tail = notes.partition("accepted but have no effect here:\n")
    assert found, notes
    lines = {}
    for line in tail.splitlines():
        if not line.startswith("  - "):
            break
        key, _, why = line[4:].partition(": ")
        lines[key.split("=")[0]] = why
    return lines


def test_notes_name_every_ignored_key_of_the_reference_values(helm: Helm) -> None:
    ignored = _ignored_lines(helm.notes([REFERENCE]))
    assert sorted(ignored) == sorted(IGNORED_IN_REFERENCE_DEFAULTS)
    assert all(why for why in ignored.values())


def test_every_reference_key_is_classified() -> None:
    """Each key of the reference's values.yaml is honoured, mapped or named as ignored."""
    values = yaml.safe_load(REFERENCE.read_text())
    mapped = {
        "draPlugin.enabled",
        "draPlugin.image",
        "draPlugin.kubeletPlugin",
        "draPlugin.imagePullSecrets",
        "statusUpdater.podPatchRbac",
        "statusUpdater.image",
        "statusUpdater.resources",
        "statusExporter.enabled",
        "statusExporter.image",
        "statusExporter.resources",
        "statusExporter.kwok",
        "environment.openshift",
    }
    known = set(IGNORED_IN_REFERENCE_DEFAULTS) | set(HONOURED) | mapped

    def covered(path: str) -> bool:
        return any(path == k or path.startswith(f"{k}.") for k in known)

    def walk(node: object, path: str) -> None:
        if covered(path):
            return
        assert isinstance(node, dict), f"{path}: not classified"
        for key, sub in node.items():
            walk(sub, f"{path}.{key}" if path else key)

    walk(values, "")


def test_default_values_name_no_reference_key(helm: Helm) -> None:
    notes = helm.notes()
    assert "have no effect here" not in notes and "mapped onto" not in notes


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"environment": {"openshift": True}}, "environment.openshift"),
        ({"statusUpdater": {"podPatchRbac": {"enabled": False}}}, "statusUpdater.podPatchRbac"),
        ({"builtinProfiles": {"enabled": False}}, "builtinProfiles.enabled"),
        (
            {"draPlugin": {"kubeletPlugin": {"podSecurityContext": {"runAsUser": 1}}}},
            "draPlugin.kubeletPlugin.podSecurityContext",
        ),
        (
            {"draPlugin": {"kubeletPlugin": {"containers": {"plugin": {"healthcheckPort": 0}}}}},
            "draPlugin.kubeletPlugin.containers.plugin.healthcheckPort",
        ),
        (
            {
                "draPlugin": {
                    "kubeletPlugin": {
                        "containers": {"plugin": {"livenessProbe": {"service": "other"}}}
                    }
                }
            },
            "draPlugin.kubeletPlugin.containers.plugin.livenessProbe.service",
        ),
    ],
)
def test_ignored_values_are_named(
    helm: Helm, tmp_path: Path, values: dict[str, object], named: str
) -> None:
    assert named in _ignored_lines(helm.notes([_write(tmp_path, "v.yaml", values)]))


@pytest.mark.parametrize(
    "values",
    [
        {"environment": {"openshift": False}},
        {"statusUpdater": {"podPatchRbac": {"enabled": True}}},
        {"builtinProfiles": {"enabled": True}},
    ],
)
def test_values_equal_to_our_behaviour_are_not_named(
    helm: Helm, tmp_path: Path, values: dict[str, object]
) -> None:
    assert "have no effect here" not in helm.notes([_write(tmp_path, "v.yaml", values)])


@pytest.mark.parametrize(
    "sets",
    [
        ["draPlugin.kubeletPlugin.nodeSelectr.a=b"],
        ["draPlugin.kubeletPlugin.containers.plugin.healthcheckPort=http"],
        ["statusUpdater.runaiIntegration.enabld=true"],
        ["statusExporter.nodeResourceTopology.installCrd=true"],
        ["draPlugin.serviceAccount.nam=x"],
    ],
)
def test_schema_checks_the_reference_nested_keys(helm: Helm, sets: list[str]) -> None:
    err = helm.render_error(sets=sets)
    assert "values don't meet the specifications of the schema" in err, err


# ------------------------------------------------------------ draPlugin.kubeletPlugin mapping

K0S = "/var/lib/k0s/kubelet"
KUBELET_PLUGIN = {
    "priorityClassName": "ref-pc",
    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}},
    "podAnnotations": {"from": "reference"},
    "nodeSelector": {"node-role/gpu": "yes"},
    "tolerations": [{"operator": "Exists"}],
    "affinity": {},
    "kubeletRegistrarDirectoryPath": f"{K0S}/plugins_registry",
    "kubeletPluginsDirectoryPath": f"{K0S}/plugins",
    "containers": {
        "plugin": {
            "securityContext": {"privileged": True},
            "resources": {"limits": {"cpu": "300m", "memory": "300Mi"}},
            "healthcheckPort": 51600,
            "livenessProbe": {
                "service": "liveness",
                "initialDelaySeconds": 30,
                "periodSeconds": 11,
                "timeoutSeconds": 5,
                "failureThreshold": 4,
                "successThreshold": 1,
            },
        }
    },
}


def _dra_pod(helm: Helm, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    ds = helm.render([path]).get("DaemonSet", "fgo-dra-plugin")
    return ds, ds["spec"]["template"]


def test_kubelet_plugin_keys_are_mapped(helm: Helm, tmp_path: Path) -> None:
    values = {
        "imagePullSecrets": [{"name": "everyone"}],
        "draPlugin": {
            "enabled": True,
            "kubeletPlugin": KUBELET_PLUGIN,
            "imagePullSecrets": [{"name": "dra-only"}],
        },
    }
    ds, pod = _dra_pod(helm, _write(tmp_path, "k0s.yaml", values))
    spec = pod["spec"]
    plugin = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in plugin["env"]}
    assert env["KUBELET_REGISTRAR_DIRECTORY_PATH"] == f"{K0S}/plugins_registry"
    assert env["KUBELET_PLUGINS_DIRECTORY_PATH"] == f"{K0S}/plugins"
    assert env["HEALTHCHECK_PORT"] == "51600"
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host["plugins-registry"] == f"{K0S}/plugins_registry"
    assert host["plugins"] == f"{K0S}/plugins"
    mounts = {m["name"]: m["mountPath"] for m in plugin["volumeMounts"]}
    assert mounts["plugins-registry"] == f"{K0S}/plugins_registry"
    assert mounts["plugins"] == f"{K0S}/plugins"
    assert ds["spec"]["updateStrategy"] == KUBELET_PLUGIN["updateStrategy"]
    assert pod["metadata"]["annotations"] == {"from": "reference"}
    assert spec["priorityClassName"] == "ref-pc"
    assert spec["nodeSelector"] == {"node-role/gpu": "yes"}
    assert spec["tolerations"] == [{"operator": "Exists"}]
    # The pool restriction still applies to a mapped (here empty) affinity.
    assert spec["affinity"]["nodeAffinity"]
    assert spec["imagePullSecrets"] == [{"name": "everyone"}, {"name": "dra-only"}]
    assert plugin["resources"] == {"limits": {"cpu": "300m", "memory": "300Mi"}}
    assert plugin["livenessProbe"] == {
        "grpc": {"port": 51600, "service": "liveness"},
        "initialDelaySeconds": 30,
        "periodSeconds": 11,
        "timeoutSeconds": 5,
        "failureThreshold": 4,
    }
    assert {"name": "grpc-health", "containerPort": 51600} in plugin["ports"]
    # Ignored: the security contexts stay ours.
    assert "privileged" not in plugin["securityContext"]
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    notes = helm.notes([tmp_path / "k0s.yaml"])
    assert (
        "draPlugin.kubeletPlugin.kubeletPluginsDirectoryPath -> "
        "draPlugin.kubeletPluginsDirectoryPath" in notes
    )
    assert "draPlugin.kubeletPlugin.containers.plugin.resources -> draPlugin.resources" in notes


def test_our_draplugin_key_wins_when_both_are_set(helm: Helm, tmp_path: Path) -> None:
    values = {
        "draPlugin": {
            "enabled": True,
            "kubeletPluginsDirectoryPath": "/ours/plugins",
            "podAnnotations": {"from": "ours", "a": "1"},
            "kubeletPlugin": KUBELET_PLUGIN,
        }
    }
    path = _write(tmp_path, "both.yaml", values)
    _, pod = _dra_pod(helm, path)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["KUBELET_PLUGINS_DIRECTORY_PATH"] == "/ours/plugins"
    # ... and the reference's where ours is at its default.
    assert env["KUBELET_REGISTRAR_DIRECTORY_PATH"] == f"{K0S}/plugins_registry"
    assert pod["metadata"]["annotations"] == {"from": "ours", "a": "1"}
    notes = helm.notes([path])
    assert (
        "draPlugin.kubeletPlugin.kubeletPluginsDirectoryPath: "
        "draPlugin.kubeletPluginsDirectoryPath is set too and wins" in notes
    )


def test_reference_defaults_keep_our_dra_plugin_shape(helm: Helm) -> None:
    """The reference's kubeletPlugin defaults (paths, selector, empty lists) change nothing
    but what they say: its resources, probe timings and priority class."""
    _, ours = _dra_pod(helm, _write_enabled(helm, None))
    _, theirs = _dra_pod(helm, _write_enabled(helm, REFERENCE))
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "volumes"):
        assert ours["spec"].get(key) == theirs["spec"].get(key), key
    assert theirs["spec"]["containers"][0]["livenessProbe"]["initialDelaySeconds"] == 30


def _write_enabled(helm: Helm, base: Path | None) -> Path:
    import tempfile

    values = yaml.safe_load(base.read_text()) if base else {}
    values.setdefault("draPlugin", {})["enabled"] = True
    out = Path(tempfile.mkdtemp(prefix="fgo-ref-")) / "values.yaml"
    out.write_text(yaml.safe_dump(values))
    return out
