"""Helpers for the fake NVML library's tests: build it, write a node state, run an NVML program
against that state through ``nvml/with-nvml`` (the host-side way docs/nvml.md describes), and
run our nvidia-smi with the same environment for comparison."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fgo_common.nodestate import write_node_state
from fgo_common.topology import NodeTopology

NVML_DIR = Path(__file__).resolve().parents[1] / "nvml"
WITH_NVML = NVML_DIR / "with-nvml"
# The Python entry point of our nvidia-smi (the bundle behaves the same; test_bundle covers it).
SMI = Path(sys.executable).parent / "nvidia-smi"
# 2026-01-01 00:05:00 UTC: pins every sampled value in both programs.
PINNED = "1767225900"


def have_cc() -> bool:
    return shutil.which(os.environ.get("CC", "cc")) is not None


def build_library(out: Path) -> Path:
    subprocess.run([str(NVML_DIR / "build.sh"), str(out)], check=True, capture_output=True)
    return out / "libnvidia-ml.so.1"


# Which path the library takes (docs/nvml.md): "exec" runs nvidia-smi on nvmlInit; "file" reads
# the node agents' nvml-node.snap, written by state() next to topology.json, and is given no
# nvidia-smi to run, so a test passes in that mode only if the file served it.
PATH_MODE = {"mode": "exec"}
NO_SMI = "/nonexistent/fgo-nvml-file-mode/nvidia-smi"


def write_node_file(directory: Path, seed: str = "0") -> Path:
    """``nvml-node.snap`` as the node agents write it, at the pinned time."""
    from fgo_common.nvmlnode import write_nvml_node_file
    from fgo_nvidia_smi import nvmlsnap
    from fgo_nvidia_smi.settings import Settings

    env = {"FGO_STATE_DIR": str(directory), "FGO_SMI_TIME": PINNED, "FGO_SEED": seed}
    text = nvmlsnap.render_node(Settings.from_env(env), nvmlsnap.DEFAULT_NODE_FRAMES)
    return Path(write_nvml_node_file(str(directory), text.encode()))


def state(tmp: Path, node: NodeTopology) -> Path:
    directory = tmp / "state"
    write_node_state(directory, node)
    if PATH_MODE["mode"] == "file":
        write_node_file(directory)
    return directory


def nvml_env(lib_dir: Path, cache_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "FGO_NVML_LIB_DIR": str(lib_dir),
        "FGO_NVML_SMI": str(SMI),
        "FGO_NVML_CACHE_DIR": str(cache_dir),
        "FGO_SMI_TIME": PINNED,
        "HOSTNAME": "test-pod",
        "TZ": "UTC",
    }
    if PATH_MODE["mode"] == "file":
        env["FGO_NVML_SMI"] = NO_SMI
    env.update(extra)
    return env


def run_nvml(
    state_dir: Path, env: dict[str, str], argv: list[str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``with-nvml STATE_DIR argv...``."""
    result = subprocess.run(
        [str(WITH_NVML), str(state_dir), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def run_python(state_dir: Path, env: dict[str, str], code: str) -> object:
    """Runs ``code`` (which prints one JSON document) in a fresh Python with the library on the
    loader path; returns the document."""
    out = run_nvml(state_dir, env, [sys.executable, "-c", code]).stdout
    return json.loads(out)


def smi_csv(state_dir: Path, env: dict[str, str], *args: str) -> list[dict[str, str]]:
    """Our nvidia-smi with the same environment; CSV rows as dicts (header names as keys)."""
    smi_env = dict(env, FGO_STATE_DIR=str(state_dir))
    result = subprocess.run(
        [str(SMI), *args, "--format=csv,nounits"],
        env=smi_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reader = csv.reader(io.StringIO(result.stdout), skipinitialspace=True)
    rows = list(reader)
    # Keyed by the names asked for (the header spells some differently, e.g. clocks.current.sm).
    query = next(a for a in args if a.startswith("--query-"))
    names = query.partition("=")[2].split(",")
    return [dict(zip(names, row, strict=True)) for row in rows[1:]]


# NVIDIA's go-nvml module (its pkg/nvml/nvml.h is the public header the ABI tests compare
# with), fetched through the Go module proxy once and cached outside the repository.
GO_PROGRAM = Path(__file__).resolve().parent / "gonvml"
GO_CACHE = Path.home() / ".cache" / "fgo" / "nvml-go"


def go_binary() -> str | None:
    return shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go",) if Path(p).is_file()), None
    )


def go_env() -> dict[str, str]:
    go = go_binary()
    assert go is not None
    return {
        "PATH": f"{Path(go).parent}:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "GOMODCACHE": str(GO_CACHE / "gopath" / "pkg" / "mod"),
        "GOCACHE": str(GO_CACHE / "gocache"),
        "GOPATH": str(GO_CACHE / "gopath"),
        "GOFLAGS": "-modcacherw",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "1",
    }


def go_nvml_header() -> Path:
    """``pkg/nvml/nvml.h`` of the go-nvml version the Go program's go.mod pins."""
    go = go_binary()
    assert go is not None
    result = subprocess.run(
        [go, "mod", "download", "-json", "github.com/NVIDIA/go-nvml"],
        cwd=GO_PROGRAM,
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return Path(json.loads(result.stdout)["Dir"]) / "pkg" / "nvml" / "nvml.h"


def build_go_program() -> Path:
    go = go_binary()
    assert go is not None
    out = GO_CACHE / "bin" / "gonvml"
    subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=GO_PROGRAM,
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return out
