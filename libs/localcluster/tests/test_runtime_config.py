"""--runtime-config per apiserver version (the version matrix, docs/kubernetes-versions.md)."""

from __future__ import annotations

from pathlib import Path

from fgo_localcluster import components
from fgo_localcluster.layout import Ports, StateLayout


def test_minor_from_version_output() -> None:
    assert components.kubernetes_minor("Kubernetes v1.31.14\n") == 31
    assert components.kubernetes_minor("Kubernetes v1.36.3") == 36
    assert components.kubernetes_minor("garbage") is None


def test_dra_versions_each_minor_can_serve() -> None:
    assert components.default_runtime_config(36) == components.RUNTIME_CONFIG
    assert components.default_runtime_config(33) == components.RUNTIME_CONFIG
    assert components.default_runtime_config(32) == "resource.k8s.io/v1beta1=true"
    assert components.default_runtime_config(31) == ""
    assert components.default_runtime_config(None) == components.RUNTIME_CONFIG


def test_no_flag_for_an_empty_runtime_config(tmp_path: Path) -> None:
    layout, ports = StateLayout(tmp_path), Ports(apiserver=6443, etcd_client=2379)
    argv = components.apiserver_spec(tmp_path, layout, ports, {}, "").argv
    assert not [a for a in argv if a.startswith("--runtime-config")]
    argv = components.apiserver_spec(tmp_path, layout, ports, {}, "a/v1=false").argv
    assert "--runtime-config=a/v1=false" in argv
