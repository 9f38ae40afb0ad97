"""statusExporter.podResources (issue 24, docs/numa.md): the per-node exporter gets the socket
and sysfs host directories, POD_RESOURCES_SOCKET / SYSFS_ROOT, uid 0 without capabilities and
the RBAC to follow its Node and pods; nothing changes without it; the KWOK exporter never gets
it; the kubelet's own podresources directory and the host's /sys are refused."""

from __future__ import annotations

from typing import Any

import pytest
from chartlib import Helm
from fgo_common.runtime.settings import load_settings
from fgo_status_exporter.settings import Settings

ON = ["statusExporter.podResources.enabled=true"]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _env(workload: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container(workload)["env"]}


def _exporter_rules(rendered: Any) -> list[dict[str, Any]]:
    (role,) = [
        r for r in rendered.of_kind("ClusterRole") if "status-exporter" in r["metadata"]["name"]
    ]
    return list(role["rules"])


def test_off_by_default(helm: Helm) -> None:
    off = helm.render()
    node = off.get("DaemonSet", "nvidia-dcgm-exporter")
    assert "POD_RESOURCES_SOCKET" not in _env(node) and "SYSFS_ROOT" not in _env(node)
    assert "pod-resources" not in str(node) and "fake-sysfs" not in str(node)
    assert _container(node)["securityContext"]["runAsUser"] == 65532
    assert _exporter_rules(off) == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch"]}
    ]


def test_enabled_mounts_the_host_directories_and_sets_the_env(helm: Helm) -> None:
    off, on = helm.render(), helm.render(sets=ON)
    node = on.get("DaemonSet", "nvidia-dcgm-exporter")
    env = _env(node)
    assert env["POD_RESOURCES_SOCKET"] == "/var/lib/fake-gpu-operator/pod-resources/kubelet.sock"
    assert env["SYSFS_ROOT"] == "/var/lib/fake-gpu-operator/sys"
    mounts = {m["name"]: m["mountPath"] for m in _container(node)["volumeMounts"]}
    volumes = {v["name"]: v for v in node["spec"]["template"]["spec"]["volumes"]}
    for name, path in (
        ("pod-resources", "/var/lib/fake-gpu-operator/pod-resources"),
        ("fake-sysfs", "/var/lib/fake-gpu-operator/sys"),
    ):
        assert mounts[name] == path
        assert volumes[name]["hostPath"] == {"path": path, "type": "DirectoryOrCreate"}
    # Never the kubelet's own directory.
    assert "/var/lib/kubelet" not in str(node)
    sc = _container(node)["securityContext"]
    assert sc["runAsUser"] == 0 and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False and "privileged" not in sc
    # The KWOK exporter serves no node: unchanged.
    assert on.get("Deployment", "nvidia-dcgm-exporter-kwok") == off.get(
        "Deployment", "nvidia-dcgm-exporter-kwok"
    )
    assert _exporter_rules(on)[1:] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    ]
    # The service accepts what the chart sets (downward-API NODE_NAME resolved).
    env["NODE_NAME"] = "node-1"
    settings = load_settings(Settings, env)
    assert settings.pod_resources_socket.endswith("/pod-resources/kubelet.sock")


def test_directories_are_set_by_the_values(helm: Helm) -> None:
    on = helm.render(
        sets=[
            *ON,
            "statusExporter.podResources.socketDir=/run/fgo/podres/",
            "statusExporter.podResources.sysfsDir=/srv/fake-sys",
        ]
    )
    node = on.get("DaemonSet", "nvidia-dcgm-exporter")
    env = _env(node)
    assert env["POD_RESOURCES_SOCKET"] == "/run/fgo/podres/kubelet.sock"
    assert env["SYSFS_ROOT"] == "/srv/fake-sys"
    volumes = {
        v["name"]: v["hostPath"]["path"]
        for v in node["spec"]["template"]["spec"]["volumes"]
        if "hostPath" in v
    }
    assert volumes == {"pod-resources": "/run/fgo/podres", "fake-sysfs": "/srv/fake-sys"}


def test_with_runai_proc_files_both_directories_are_mounted(helm: Helm) -> None:
    node = helm.render(sets=[*ON, "runai.procFiles=true"]).get("DaemonSet", "nvidia-dcgm-exporter")
    names = {v["name"] for v in node["spec"]["template"]["spec"]["volumes"]}
    assert {"runai-proc", "pod-resources", "fake-sysfs"} <= names


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "socketDir=/var/lib/kubelet/pod-resources/",
            "statusExporter.podResources.socketDir=/var/lib/kubelet/pod-resources is the "
            "kubelet's own podresources directory",
        ),
        ("sysfsDir=/sys", "statusExporter.podResources.sysfsDir=/sys is the host's sysfs"),
        ("sysfsDir=/sys/devices", "statusExporter.podResources.sysfsDir=/sys/devices is the host"),
    ],
)
def test_refuses_the_kubelets_socket_and_the_hosts_sysfs(
    helm: Helm, value: str, message: str
) -> None:
    error = helm.render_error(sets=[*ON, f"statusExporter.podResources.{value}"])
    assert message in error


def test_schema_refuses_relative_directories(helm: Helm) -> None:
    error = helm.render_error(sets=[*ON, "statusExporter.podResources.socketDir=run/x"])
    assert "socketDir" in error


def test_cpu_per_zone_must_be_whole_cpus_with_podresources(helm: Helm, tmp_path: Any) -> None:
    values = tmp_path / "numa.yaml"
    values.write_text(
        "topology:\n  nodePools:\n    hgx:\n      gpus: [{type: H100, count: 8}]\n"
        "      numa: {zones: 2, cpuPerZone: 1500m}\n"
    )
    helm.render([values])  # without podResources the NRT takes millicores
    error = helm.render_error([values], sets=ON)
    assert (
        "topology.nodePools.hgx.numa.cpuPerZone: 1500m is not a whole number of CPUs; "
        "statusExporter.podResources numbers CPU ids per zone"
    ) in error
    values.write_text(values.read_text().replace("1500m", "16000m"))
    helm.render([values], sets=ON)
