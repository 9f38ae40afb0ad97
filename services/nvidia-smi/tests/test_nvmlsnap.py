"""The hidden ``--fgo-nvml-snapshot`` mode the NVML library reads (nvmlsnap.py): its framing,
one frame per telemetry bucket, the same visible devices and values as the other modes, and
failures that never print a traceback."""

from __future__ import annotations

import io
from pathlib import Path

from fgo_common.nodestate import write_node_state
from fgo_common.telemetry import BUCKET_SECONDS
from fgo_nvidia_smi.main import run
from smi_fixtures import hgx_node
from smi_testlib import CAPTURE_TIME, make_env


def _snapshot(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str]:
    directory = tmp_path / "state"
    if not directory.exists():
        write_node_state(directory, hgx_node())
    out, err = io.StringIO(), io.StringIO()
    code = run(["--fgo-nvml-snapshot", *args], out, err, make_env(directory, **env))
    return code, out.getvalue(), err.getvalue()


def test_frames_cover_consecutive_buckets(tmp_path: Path) -> None:
    code, out, _ = _snapshot(tmp_path, "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "FGO-NVML\t1"
    assert lines[1] == f"T\t{CAPTURE_TIME!r}\t{BUCKET_SECONDS!r}\t3"
    assert lines[2] == "D\t580.159.04\t13000"
    assert lines[-1] == "E"
    frames = [line.split("\t") for line in lines if line.startswith("F\t")]
    first = int(CAPTURE_TIME // BUCKET_SECONDS)
    assert frames == [["F", str(k), str(first + k)] for k in range(3)]
    gpus = [line.split("\t") for line in lines if line.startswith("G\t")]
    assert len(gpus) == 3 * 8 and all(len(g) == 48 for g in gpus)
    migs = [line for line in lines if line.startswith("M\t")]
    assert len(migs) == 3 * 2


def test_visible_devices_and_fields_match_the_csv_mode(tmp_path: Path) -> None:
    node = hgx_node()
    wanted = node.gpus[2].id
    code, out, _ = _snapshot(tmp_path, "1", NVIDIA_VISIBLE_DEVICES=wanted)
    assert code == 0
    gpus = [line.split("\t") for line in out.splitlines() if line.startswith("G\t")]
    assert [g[2] for g in gpus] == [wanted]
    csv = io.StringIO()
    run(
        ["--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits"],
        csv,
        io.StringIO(),
        make_env(tmp_path / "state", NVIDIA_VISIBLE_DEVICES=wanted),
    )
    used, util = (v.strip() for v in csv.getvalue().split(","))
    assert int(gpus[0][15]) == int(used) * 2**20
    assert gpus[0][17] == util


def test_bad_frame_count_and_missing_state(tmp_path: Path) -> None:
    code, out, err = _snapshot(tmp_path, "many")
    assert (code, out) == (255, "") and "frame count" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    out_io, err_io = io.StringIO(), io.StringIO()
    code = run(["--fgo-nvml-snapshot"], out_io, err_io, make_env(empty))
    assert (code, out_io.getvalue()) == (9, "")
    assert "Traceback" not in err_io.getvalue()


def test_frame_count_is_bounded(tmp_path: Path) -> None:
    code, out, _ = _snapshot(tmp_path, "0")
    assert code == 0 and sum(line.startswith("F\t") for line in out.splitlines()) == 1
