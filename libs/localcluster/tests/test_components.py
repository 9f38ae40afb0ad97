from __future__ import annotations

from pathlib import Path

from fgo_localcluster import components
from fgo_localcluster.layout import Ports, StateLayout

DATA = Path(__file__).parent / "data"


def _help() -> str:
    return (DATA / "kube-apiserver-1.36-help-feature-gates.txt").read_text()


def test_parse_feature_gates_reads_stage_and_default_from_real_help() -> None:
    gates = components.parse_feature_gates(_help())
    assert gates["DRADeviceTaintRules"] == components.FeatureGate(
        "DRADeviceTaintRules", "BETA", False
    )
    assert gates["DRAListTypeAttributes"].stage == "ALPHA"
    assert gates["DRAExtendedResource"].default is True
    # GA gates are not listed by --help in 1.36.
    assert "DRAAdminAccess" not in gates
    assert "DynamicResourceAllocation" not in gates


def test_parse_feature_gates_accepts_the_pre_1_31_format_without_component_prefix() -> None:
    text = "      SomeGate=true|false (ALPHA - default=false)\n   not a gate line\n"
    assert components.parse_feature_gates(text) == {
        "SomeGate": components.FeatureGate("SomeGate", "ALPHA", False)
    }


def test_select_feature_gates_only_passes_gates_the_binary_lists() -> None:
    selected = components.select_feature_gates(components.parse_feature_gates(_help()))
    assert selected == {
        "DRAConsumableCapacity": True,
        "DRADeviceBindingConditions": True,
        "DRADeviceTaintRules": True,
        "DRADeviceTaints": True,
        "DRAExtendedResource": True,
        "DRAPartitionableDevices": True,
        "DRAResourceClaimDeviceStatus": True,
    }


def test_feature_gates_flag_is_sorted_and_empty_when_no_gates() -> None:
    assert components.feature_gates_flag({}) == []
    assert components.feature_gates_flag({"B": True, "A": False}) == [
        "--feature-gates=A=false,B=true"
    ]


def _specs(tmp_path: Path) -> dict[str, components.ComponentSpec]:
    ports = Ports(
        etcd_client=2001,
        etcd_peer=2002,
        apiserver=2003,
        controller_manager=2004,
        scheduler=2005,
        kwok=2006,
    )
    return components.all_specs(
        Path("/bin-dir"), StateLayout(tmp_path), ports, {"DRAExtendedResource": True}
    )


def test_every_component_listens_on_loopback_only(tmp_path: Path) -> None:
    for spec in _specs(tmp_path).values():
        assert spec.health.url.startswith(("http://127.0.0.1:", "https://127.0.0.1:"))
        for arg in spec.argv:
            assert "0.0.0.0" not in arg, (spec.name, arg)
            if arg.startswith(("--bind-address=", "--advertise-address=")):
                assert arg.endswith("=127.0.0.1")


def test_apiserver_flags_enable_dra_and_rbac(tmp_path: Path) -> None:
    argv = _specs(tmp_path)["kube-apiserver"].argv
    assert argv[0] == "/bin-dir/kube-apiserver"
    assert "--authorization-mode=Node,RBAC" in argv
    assert "--etcd-servers=http://127.0.0.1:2001" in argv
    assert "--secure-port=2003" in argv
    assert "--feature-gates=DRAExtendedResource=true" in argv
    assert f"--runtime-config={components.RUNTIME_CONFIG}" in argv
    assert "--allow-privileged=true" in argv
    assert not any(a.startswith("--insecure-port") for a in argv)


def test_controllers_run_without_leader_election_and_share_the_gates(tmp_path: Path) -> None:
    specs = _specs(tmp_path)
    for name in ("kube-controller-manager", "kube-scheduler"):
        argv = specs[name].argv
        assert "--leader-elect=false" in argv
        assert "--feature-gates=DRAExtendedResource=true" in argv
    assert "--controllers=*" in specs["kube-controller-manager"].argv


def test_kwok_manages_only_annotated_nodes_with_our_stages(tmp_path: Path) -> None:
    spec = _specs(tmp_path)["kwok"]
    assert "--manage-all-nodes=false" in spec.argv
    assert "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" in spec.argv
    assert f"--config={tmp_path / 'kwok' / 'stages.yaml'}" in spec.argv
    assert spec.env == {"KWOK_WORKDIR": str(tmp_path / "kwok")}
    assert "--v=WARN" in spec.argv
