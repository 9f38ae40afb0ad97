"""nvidia-smi in a container whose environment or node snapshot is wrong: garbage in
``NVIDIA_VISIBLE_DEVICES``, ``FGO_SEED``, ``RUNAI_NUM_OF_GPUS``; the snapshot missing, empty,
truncated, of the wrong shape, a directory. The tool answers like the real one (one of its exit
codes and messages: 9 "couldn't communicate with the NVIDIA driver" when the state is unusable)
— never a Python traceback and never its own "internal error" catch-all, which would mean an
exception nobody handled. (services/nvidia-smi/tests/test_fuzz.py fuzzes the arguments.)"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from badinput_counts import tried
from corpus import NASTY_SCALARS
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.nodestate import STATE_FILE_NAME, write_node_state
from fgo_nvidia_smi import clock
from fgo_nvidia_smi.main import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SURFACE = "nvidia-smi: environment and node snapshot"
EXIT_CODES = {0, 2, 3, 4, 6, 9, 15, 255}
ARGV = [
    [],
    ["-L"],
    ["-q"],
    ["--query-gpu=index,name,uuid,memory.used,utilization.gpu", "--format=csv"],
    ["--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
    ["-i", "0", "-q", "-d", "MEMORY"],
    ["topo", "-m"],
    ["mig", "-lgi"],
    ["-B"],
]

_CONFIG = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "H100", "count": 4}]}}})
NODE = build_node_topology("n1", _CONFIG.pools["p"], _CONFIG, kwok=False)


class _LoopStopped(Exception):
    pass


def snapshots(tmp: Path) -> dict[str, Path]:
    """State directories, one per kind of damage (plus one good one)."""
    out: dict[str, Path] = {}

    def make(name: str, content: bytes | None = None, *, directory: bool = False) -> None:
        d = tmp / name
        d.mkdir()
        if directory:
            (d / STATE_FILE_NAME).mkdir()
        elif content is not None:
            (d / STATE_FILE_NAME).write_bytes(content)
        out[name] = d

    good_dir = tmp / "good"
    write_node_state(good_dir, NODE)
    out["good"] = good_dir
    good = (good_dir / STATE_FILE_NAME).read_bytes()
    make("missing")
    make("empty", b"")
    make("truncated", good[: len(good) // 2])
    make("not-json", b"\x00\xff garbage")
    make("json-list", b"[1, 2, 3]")
    make("json-null", b"null")
    make("gpus-string", json.dumps({**json.loads(good), "gpus": "abc"}).encode())
    make("gpu-ints", json.dumps({**json.loads(good), "gpus": [1, 2]}).encode())
    make("future-version", json.dumps({**json.loads(good), "formatVersion": 99}).encode())
    make("no-gpus", json.dumps({**json.loads(good), "gpus": []}).encode())
    make("huge-index", json.dumps(_replace_gpu(json.loads(good), "index", 10**12)).encode())
    make("bad-health", json.dumps(_replace_gpu(json.loads(good), "health", 5)).encode())
    make("directory", directory=True)
    out["nonexistent-dir"] = tmp / "does-not-exist"
    return out


def _replace_gpu(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    doc["gpus"][0][key] = value
    return doc


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return snapshots(tmp_path_factory.mktemp("smi-states"))


def invoke(
    argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    def stop(seconds: float) -> None:
        raise _LoopStopped

    monkeypatch.setattr(clock, "sleep", stop)
    out, err = io.StringIO(), io.StringIO()
    try:
        code = run(argv, out, err, env)
    except _LoopStopped:
        code = 0
    return code, out.getvalue(), err.getvalue()


def check(code: int, out: str, err: str, what: object) -> None:
    assert code in EXIT_CODES, (what, code)
    assert "Traceback" not in out + err, what
    assert "internal error" not in out + err, (what, err)


@pytest.mark.parametrize("state", [
    "missing", "empty", "truncated", "not-json", "json-list", "json-null", "gpus-string",
    "gpu-ints", "future-version", "no-gpus", "huge-index", "bad-health", "directory",
    "nonexistent-dir",
])  # fmt: skip
@pytest.mark.parametrize("argv", ARGV, ids=[" ".join(a) or "(none)" for a in ARGV])
def test_damaged_snapshot(
    state: str, argv: list[str], states: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tried(SURFACE)
    code, out, err = invoke(argv, {"FGO_STATE_DIR": str(states[state])}, monkeypatch)
    check(code, out, err, (state, argv))
    if state in ("missing", "empty", "truncated", "not-json", "json-list", "directory"):
        # The real tool without a usable driver: exit 9 and its message.
        assert code == 9, (state, argv, code, out, err)
        assert "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver" in out


VALUES = [str(v) for v in NASTY_SCALARS if v is not None and len(str(v)) < 1000]


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    visible=st.one_of(
        st.none(),
        st.sampled_from(["all", "none", "void", "", "0", "0,1", "3,2,1,0", "0,0,0", "7", "-1",
                         "GPU-00000000-0000-0000-0000-000000000000", "MIG-1", "0:0", "1:x",
                         ",,,", " 0 , 1 ", "GPU-", "," * 10_000]),
        st.sampled_from(VALUES),
        st.text(max_size=30),
    ),
    seed=st.one_of(st.none(), st.sampled_from(VALUES), st.integers().map(str)),
    fraction=st.one_of(st.none(), st.sampled_from(VALUES), st.floats().map(str)),
    argv=st.sampled_from(ARGV),
)  # fmt: skip
def test_environment(
    visible: str | None,
    seed: str | None,
    fraction: str | None,
    argv: list[str],
    states: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tried(SURFACE)
    env = {"FGO_STATE_DIR": str(states["good"]), "FGO_SMI_TIME": "1795720212"}
    for name, value in (
        ("NVIDIA_VISIBLE_DEVICES", visible),
        ("FGO_SEED", seed),
        ("RUNAI_NUM_OF_GPUS", fraction),
    ):
        if value is not None:
            env[name] = value
    code, out, err = invoke(argv, env, monkeypatch)
    check(code, out, err, env)


@pytest.mark.parametrize("state", ["truncated", "gpu-ints", "directory"])
def test_real_process_never_prints_a_traceback(state: str, states: dict[str, Path]) -> None:
    """The console entry point itself (a separate process, as in a container)."""
    tried(SURFACE)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from fgo_nvidia_smi.main import main; sys.exit(main())",
            "-q",
        ],
        env={"FGO_STATE_DIR": str(states[state]), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    check(result.returncode, result.stdout, result.stderr, state)
