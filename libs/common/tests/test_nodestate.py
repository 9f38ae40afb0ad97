"""The node-local state file: atomic writes, round trip, and clear errors when it is unusable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fgo_common.nodestate import (
    STATE_DIR_ENV,
    NodeStateError,
    read_node_state,
    state_dir_from_env,
    write_node_state,
)
from fgo_common.topology import GpuRecord, GpuStatus, Holder, NodeTopology, PodUsage


def _node() -> NodeTopology:
    gpu = GpuRecord(
        id="GPU-1",
        index=0,
        product="Tesla K80",
        memory_mib=11441,
        profile="k80",
        bus_id="00000000:18:00.0",
        status=GpuStatus(
            holders=[Holder("ns", "pod", "c", pod_uid="u1")],
            usage={"u1": PodUsage(fb_used_mib=100, pod="pod")},
        ),
    )
    return NodeTopology(
        node_name="n1",
        pool="p",
        gpu_product="Tesla K80",
        gpu_memory_mib=11441,
        profile="k80",
        driver_version="470.256.02",
        cuda_version="11.4",
        gpus=[gpu],
    )


def test_round_trip(tmp_path: Path) -> None:
    path = Path(write_node_state(tmp_path / "state", _node()))
    assert path == tmp_path / "state" / "topology.json"
    assert read_node_state(tmp_path / "state").to_dict() == _node().to_dict()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["topology.json"]  # no temp file left


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    path = Path(write_node_state(tmp_path, _node()))
    inode = path.stat().st_ino
    write_node_state(tmp_path, _node())
    assert path.stat().st_ino == inode
    changed = _node()
    changed.gpus[0].health = "Unhealthy"
    write_node_state(tmp_path, changed)
    assert path.stat().st_ino != inode  # replaced by rename, never edited in place
    assert read_node_state(tmp_path).gpus[0].health == "Unhealthy"


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(NodeStateError, match=r"topology.json: no such file"):
        read_node_state(tmp_path)
    (tmp_path / "topology.json").write_text("{not json")
    with pytest.raises(NodeStateError, match="not valid JSON"):
        read_node_state(tmp_path)
    (tmp_path / "topology.json").write_text("[]")
    with pytest.raises(NodeStateError, match="expected a JSON object"):
        read_node_state(tmp_path)
    (tmp_path / "topology.json").write_text(json.dumps({"formatVersion": 99}))
    with pytest.raises(NodeStateError, match="format version 99"):
        read_node_state(tmp_path)
    (tmp_path / "topology.json").write_text(json.dumps({"gpus": [{"index": 0}]}))
    with pytest.raises(NodeStateError, match="malformed"):
        read_node_state(tmp_path)


def test_state_dir_from_env() -> None:
    assert str(state_dir_from_env({})) == "/run/fake-gpu-operator"
    assert str(state_dir_from_env({STATE_DIR_ENV: "/x"})) == "/x"


def _fake_bundle(path: Path, content: str) -> Path:
    (path / "_internal").mkdir(parents=True)
    (path / "nvidia-smi").write_text(content)
    (path / "_internal" / "lib.so").write_text("lib")
    (path / "launcher").write_text("#!/bin/sh\n" + content)
    return path


def test_install_nvidia_smi_versions_the_bundle(tmp_path: Path) -> None:
    from fgo_common.nodestate import install_nvidia_smi

    host = tmp_path / "host" / "nvidia-smi"
    launcher = tmp_path / "host" / "bin" / "nvidia-smi"
    v1 = _fake_bundle(tmp_path / "v1", "one")
    assert install_nvidia_smi(str(v1), str(host), str(launcher))
    assert (host / "nvidia-smi").read_text() == "one"
    assert host.is_symlink() and launcher.read_text() == "#!/bin/sh\none"
    assert oct(launcher.stat().st_mode & 0o777) == "0o755"
    first_target = host.resolve()
    assert not install_nvidia_smi(str(v1), str(host), str(launcher))  # idempotent
    v2 = _fake_bundle(tmp_path / "v2", "two!")
    assert install_nvidia_smi(str(v2), str(host), str(launcher))
    assert (host / "nvidia-smi").read_text() == "two!"
    # A container that mounted the first version keeps a complete copy of it.
    assert (first_target / "nvidia-smi").read_text() == "one"
    assert (first_target / "_internal" / "lib.so").exists()
