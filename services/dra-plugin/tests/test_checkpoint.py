"""The checkpoint survives restarts, detects damage and refuses what it cannot understand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fgo_dra_plugin import checkpoint as ckpt
from fgo_dra_plugin.checkpoint import Checkpoint, PreparedClaim, PreparedDevice

DEVICE = PreparedDevice(
    "gpu", "node-a", "gpu-0", ("k8s.gpu.nvidia.com/claim=uid-1-gpu-0",), "GPU-1", ""
)


def sample() -> Checkpoint:
    claim = PreparedClaim("uid-1", "ns", "claim", (DEVICE,), "spec.json", prepared_at=12.5)
    shared = PreparedDevice(
        "gpu",
        "node-a",
        "gpu-1",
        ("x=y",),
        "GPU-2",
        share_id="share-7",
        sharing=(("activeThreadPercentage", "30"), ("strategy", "MPS")),
        env=("CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",),
        mounts=(("/plugin/mps/uid-2-abcde/pipe", "/tmp/nvidia-mps"),),
        mps_daemon_id="uid-2-abcde",
    )
    return Checkpoint(
        "gpu.nvidia.com",
        "node-a",
        {"uid-1": claim, "uid-2": PreparedClaim("uid-2", "ns", "c2", (shared,), "s2.json")},
    )


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    ckpt.save(path, sample())
    loaded, warning = ckpt.load(path, driver="gpu.nvidia.com", node="node-a")
    assert warning == ""
    assert loaded.claims == sample().claims
    assert json.loads(path.read_text())["version"] == ckpt.CHECKPOINT_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]  # no temp files left


def test_missing_file_is_an_empty_checkpoint(tmp_path: Path) -> None:
    loaded, warning = ckpt.load(tmp_path / "none.json", driver="d", node="n")
    assert loaded.claims == {} and warning == ""


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw.replace('"GPU-1"', '"GPU-X"'),  # edited without fixing the checksum
        lambda raw: raw[: len(raw) // 2],  # torn write
        lambda raw: "[]",
        lambda raw: json.dumps(
            {
                "version": 1,
                "claims": {"u": {"bad": 1}},
                "checksum": ckpt._checksum({"u": {"bad": 1}}),
            }
        ),
    ],
)
def test_damaged_checkpoint_is_set_aside(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "checkpoint.json"
    ckpt.save(path, sample())
    path.write_text(damage(path.read_text()))
    loaded, warning = ckpt.load(path, driver="gpu.nvidia.com", node="node-a")
    assert loaded.claims == {}
    assert "moved to" in warning
    assert not path.exists()
    assert len(list(tmp_path.glob("checkpoint.json.corrupt-*"))) == 1


def test_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    raw = json.loads(sample().encode())
    raw["version"] = ckpt.CHECKPOINT_VERSION + 1
    path.write_text(json.dumps(raw))
    with pytest.raises(ckpt.CheckpointError, match="newer than this plugin"):
        ckpt.load(path, driver="gpu.nvidia.com", node="node-a")
    assert path.exists()  # left alone for the operator
