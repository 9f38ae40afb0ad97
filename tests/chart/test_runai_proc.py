"""runai.procFiles (issue 27): the node-mode exporter gets the node's /var/lib/runai/proc at
/runai/proc and RUNAI_PROC_DIR, and runs as uid 0 without capabilities to write there; nothing
changes without it, and the KWOK exporter (no node filesystem) never gets it."""

from __future__ import annotations

from typing import Any

from chartlib import Helm
from fgo_common.runtime.settings import load_settings
from fgo_status_exporter.settings import Settings


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def test_proc_files_only_when_asked_and_only_in_node_mode(helm: Helm) -> None:
    off = helm.render()
    on = helm.render(sets=["runai.procFiles=true"])
    default_node = off.get("DaemonSet", "nvidia-dcgm-exporter")
    assert "runai" not in str(default_node)
    assert _container(default_node)["securityContext"]["runAsUser"] == 65532
    assert on.get("Deployment", "nvidia-dcgm-exporter-kwok") == off.get(
        "Deployment", "nvidia-dcgm-exporter-kwok"
    )
    node = on.get("DaemonSet", "nvidia-dcgm-exporter")
    container = _container(node)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RUNAI_PROC_DIR"] == "/runai/proc"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/runai/proc")
    volumes = {v["name"]: v for v in node["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["hostPath"] == {
        "path": "/var/lib/runai/proc",
        "type": "DirectoryOrCreate",
    }
    sc = container["securityContext"]
    assert sc["runAsUser"] == 0 and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc
    assert "# Root (uid 0) without any capability, only with runai.procFiles" in on.text
    # The service accepts what the chart sets (downward-API NODE_NAME resolved).
    env["NODE_NAME"] = "node-1"
    settings = load_settings(Settings, {k: v for k, v in env.items() if v is not None})
    assert settings.runai_proc_dir == "/runai/proc"
