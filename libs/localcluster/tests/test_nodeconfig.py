"""The real node's addresses, host paths and config files (pure functions)."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest
from fgo_localcluster import nodehost
from fgo_localcluster.nodeconfig import (
    NodeLayout,
    NodeRecord,
    cgroup_root,
    cni_conflist,
    containerd_config,
    host_veth,
    kubelet_config,
)


def _record(slot: int = 3) -> NodeRecord:
    return NodeRecord("real-node-1", "default", slot, "/opt/bin", 6443)


def test_addresses_follow_the_slot() -> None:
    r = _record(3)
    assert (r.host_ip, r.node_ip, r.link_cidr) == ("10.250.3.1", "10.250.3.2", "10.250.3.0/30")
    assert (r.pod_cidr, r.pod_gateway) == ("10.244.3.0/24", "10.244.3.1")


def test_record_round_trips(tmp_path: Path) -> None:
    _record().save(tmp_path / "node.json")
    assert NodeRecord.load(tmp_path / "node.json") == _record()
    assert NodeRecord.load(tmp_path / "missing.json") is None


def test_node_paths_map_to_the_state_dir(tmp_path: Path) -> None:
    layout = NodeLayout(tmp_path, "n1")
    fs = tmp_path / "nodes" / "n1" / "fs"
    assert layout.host_path("/var/lib/kubelet/device-plugins") == (
        fs / "var/lib/kubelet/device-plugins"
    )
    assert layout.host_path("/var/run/cdi") == fs / "run/cdi"
    assert (
        layout.host_path("/run/containerd/containerd.sock") == fs / "run/containerd/containerd.sock"
    )
    assert layout.host_path("/etc/hosts") == Path("/etc/hosts")
    assert layout.cdi_dir == fs / "run/cdi"


def test_names_are_short_and_distinct_per_state_dir(tmp_path: Path) -> None:
    a, b = host_veth(tmp_path / "a", "n1"), host_veth(tmp_path / "b", "n1")
    assert a != b and len(a) <= 15 and a.startswith("fgo")
    assert cgroup_root(tmp_path, "n1").startswith("/fgo-") and "kubepods" not in cgroup_root(
        tmp_path, "n1"
    )


def test_containerd_config_is_version_3_with_the_settings_this_machine_needs(
    tmp_path: Path,
) -> None:
    layout = NodeLayout(tmp_path, "n1")
    cfg = tomllib.loads(containerd_config(layout, _record()))
    assert cfg["version"] == 3
    runtime = cfg["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["cdi_spec_dirs"] == [str(layout.cdi_dir)]
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["BinaryName"] == "/opt/bin/runc"
    assert runtime["cni"]["bin_dirs"] == ["/opt/bin/cni"]
    images = cfg["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == "localhost/fgo/pause:3.10"
    for key in ("root", "state"):
        assert cfg[key].startswith(str(layout.root))


def test_cni_never_masquerades() -> None:
    bridge = cni_conflist(_record())["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]


def test_kubelet_config_keeps_host_iptables_and_cgroups_alone(tmp_path: Path) -> None:
    layout = NodeLayout(tmp_path, "real-node-1")
    cfg = kubelet_config(
        layout, _record(), ca_cert=tmp_path / "ca.crt", feature_gates={"DRADeviceTaints": True}
    )
    assert cfg["makeIPTablesUtilChains"] is False
    assert cfg["failCgroupV1"] is False and cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["cgroupRoot"] == cgroup_root(tmp_path, "real-node-1")
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["featureGates"] == {"DRADeviceTaints": True}


def test_choose_slot_skips_taken_and_host_networks() -> None:
    host = [ipaddress.ip_network("10.250.0.0/24"), ipaddress.ip_network("10.244.2.0/23")]
    assert nodehost.choose_slot({1}, host) == 4
    with pytest.raises(nodehost.NodeHostError, match="no free address slot"):
        nodehost.choose_slot(set(), [ipaddress.ip_network("10.0.0.0/8")])


def test_state_dir_under_a_replaced_host_dir_is_refused() -> None:
    with pytest.raises(nodehost.NodeHostError, match="under /var/lib"):
        nodehost.check_state_dir_visible(NodeLayout(Path("/var/lib/fgo"), "n1"))


def test_archive_digests_reads_oci_ref_names(tmp_path: Path) -> None:
    import io
    import json
    import tarfile

    from fgo_localcluster.nodetools import archive_digests, parse_ctr_images

    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "digest": "sha256:" + "a" * 64,
                "annotations": {"org.opencontainers.image.ref.name": "localhost/fgo/pause:3.10"},
            }
        ],
    }
    archive = tmp_path / "pause.oci.tar"
    with tarfile.open(archive, "w") as tar:
        data = json.dumps(index).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert archive_digests(archive) == {"localhost/fgo/pause:3.10": "sha256:" + "a" * 64}
    assert archive_digests(tmp_path / "missing.tar") == {}
    listing = (
        "REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
        "localhost/fgo/pause:3.10 application/vnd.oci.image.manifest.v1+json "
        f"sha256:{'a' * 64} 340.3 KiB linux/amd64 io.cri-containerd.image=managed\n"
    )
    assert parse_ctr_images(listing) == {"localhost/fgo/pause:3.10": "sha256:" + "a" * 64}
