"""NVIDIA's go-nvml bindings (what its device plugin and GPU feature discovery use) enumerate
the same devices through the fake libnvidia-ml.so.1 as our nvidia-smi prints. The program is
tests/gonvml (its go.mod pins go-nvml); builds are cached in ~/.cache/fgo/nvml-go."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvml_testlib import (
    PATH_MODE,
    PINNED,
    build_go_program,
    build_library,
    go_binary,
    have_cc,
    nvml_env,
    run_nvml,
    smi_csv,
    state,
)
from smi_fixtures import hgx_node

pytestmark = [
    pytest.mark.skipif(go_binary() is None, reason="Go is not installed (go-nvml needs it)"),
    pytest.mark.skipif(not have_cc(), reason="no C compiler for cgo and the library"),
    pytest.mark.timeout(900),  # the first build compiles go-nvml's cgo bindings (~1-2 min)
]

# Every test runs for both of the library's paths (nvml_testlib.PATH_MODE); those about the exec
# itself (what nvidia-smi's absence, its cache or its output does) only for the exec path.
EXEC_ONLY = set[str]()


@pytest.fixture(autouse=True, params=["exec", "file"])
def path_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "file" and request.function.__name__ in EXEC_ONLY:
        pytest.skip("about the exec path")
    PATH_MODE["mode"] = request.param
    yield request.param
    PATH_MODE["mode"] = "exec"


@pytest.fixture(scope="module")
def program() -> Path:
    return build_go_program()


def test_go_nvml_enumerates_what_nvidia_smi_prints(program: Path, tmp_path: Path) -> None:
    build_library(tmp_path / "lib")
    node = hgx_node()
    node.gpus[5].faults = [{"kind": "lost", "since": float(PINNED) - 1}]
    directory = state(tmp_path, node)
    env = nvml_env(tmp_path / "lib", tmp_path, NVIDIA_VISIBLE_DEVICES="all")
    got = json.loads(run_nvml(directory, env, [str(program)]).stdout)
    rows = smi_csv(
        directory,
        dict(env, NVIDIA_VISIBLE_DEVICES=",".join(g.id for g in node.gpus if g.index != 5)),
        "--query-gpu=uuid,name,pci.bus_id,memory.total,memory.used,compute_cap",
    )
    gpus = got["gpus"]
    assert len(gpus) == 8
    assert gpus[5] == {**gpus[5], "lost": True}  # GetHandleByIndex -> ERROR_GPU_IS_LOST
    alive = [g for g in gpus if not g["lost"]]
    assert [g["uuid"] for g in alive] == [r["uuid"] for r in rows]
    assert [g["name"] for g in alive] == [r["name"] for r in rows]
    assert [g["bus_id"] for g in alive] == [r["pci.bus_id"] for r in rows]
    assert [g["total"] // 2**20 for g in alive] == [int(r["memory.total"]) for r in rows]
    assert [g["used"] // 2**20 for g in alive] == [int(r["memory.used"]) for r in rows]
    assert [f"{g['cc_major']}.{g['cc_minor']}" for g in alive] == [r["compute_cap"] for r in rows]
    assert got["driver"] == "580.159.04"
    mig_gpu = alive[-1]
    assert mig_gpu["mig_mode"] == 1
    ordered = sorted(node.gpus[7].mig_devices, key=lambda m: (m.gi_id, m.ci_id))
    assert [m["uuid"] for m in mig_gpu["migs"]] == [m.uuid for m in ordered]
    assert [(m["gi"], m["ci"]) for m in mig_gpu["migs"]] == [(m.gi_id, m.ci_id) for m in ordered]
    assert alive[1]["pids"] and alive[1]["pids"] == alive[2]["pids"]  # one pod on two GPUs


def test_go_nvml_init_fails_like_a_node_without_driver(program: Path, tmp_path: Path) -> None:
    build_library(tmp_path / "lib")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_nvml(empty, nvml_env(tmp_path / "lib", tmp_path), [str(program)], check=False)
    assert result.returncode == 9, result.stderr  # NVML_ERROR_DRIVER_NOT_LOADED
    assert "Driver Not Loaded" in result.stderr
