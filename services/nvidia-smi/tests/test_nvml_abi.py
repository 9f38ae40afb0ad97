"""The fake libnvidia-ml.so.1 against NVIDIA's public nvml.h (the pristine copy in the go-nvml
module, gen/nvml/nvml.h): the library compiles against NVIDIA's prototypes, every struct it
fills has the header's size and member offsets, versions and return codes are the header's,
and every exported symbol is called by tests/nvml_c/calls.c with the return code it should
give (guard bytes after each struct catch writes past the header's layout)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from nvml_testlib import (
    NVML_DIR,
    build_library,
    go_binary,
    go_nvml_header,
    have_cc,
    nvml_env,
    run_nvml,
    state,
)
from smi_fixtures import hgx_node

pytestmark = [
    pytest.mark.skipif(not have_cc(), reason="no C compiler"),
    pytest.mark.skipif(
        go_binary() is None, reason="Go is not installed: NVIDIA's nvml.h comes from go-nvml"
    ),
]

C_DIR = Path(__file__).resolve().parent / "nvml_c"
CC_FLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations"]


@pytest.fixture(scope="module")
def header_dir() -> Path:
    header = go_nvml_header().parents[2] / "gen" / "nvml" / "nvml.h"
    assert header.read_text(errors="replace").startswith("/*** NVML VERSION:")
    return header.parent


def _cc(*args: str) -> None:
    result = subprocess.run(["cc", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_library_compiles_against_nvidias_prototypes(header_dir: Path, tmp_path: Path) -> None:
    # -Wmissing-prototypes: every exported function is one NVIDIA declares; a definition whose
    # signature differs from NVIDIA's prototype is a compile error.
    _cc(
        "-fsyntax-only",
        "-DFGO_NVML_REAL_HEADER",
        f"-I{header_dir}",
        *CC_FLAGS,
        "-Wno-unused-parameter",
        "-Wmissing-prototypes",
        str(NVML_DIR / "fakenvml.c"),
    )


def test_struct_layouts_versions_and_codes_equal_the_header(
    header_dir: Path, tmp_path: Path
) -> None:
    outputs = []
    for name, include in (("real", header_dir), ("ours", NVML_DIR)):
        binary = tmp_path / name
        header = "nvml.h" if name == "real" else "fgo_nvml.h"
        _cc(
            f'-DNVML_HEADER="{header}"',
            f"-I{include}",
            *CC_FLAGS,
            "-o",
            str(binary),
            str(C_DIR / "layout.c"),
        )
        outputs.append(
            subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
        )
    real, ours = outputs
    assert "sizeof nvmlMemory_v2_t 40" in real and "value nvmlMemory_v2 33554472" in real
    assert ours == real


def _exported(library: Path) -> set[str]:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[2] for line in out.splitlines() if line.split()[1] == "T"}


def test_every_exported_symbol_is_called_with_the_right_result(
    header_dir: Path, tmp_path: Path
) -> None:
    library = build_library(tmp_path / "lib")
    program = tmp_path / "calls"
    _cc(
        f"-I{header_dir}",
        *CC_FLAGS,
        "-o",
        str(program),
        str(C_DIR / "calls.c"),
        f"-L{library.parent}",
        "-l:libnvidia-ml.so.1",
    )
    directory = state(tmp_path, hgx_node())
    env = nvml_env(library.parent, tmp_path)
    lines = run_nvml(directory, env, [str(program)]).stdout.splitlines()
    calls = [line.split(" ", 2) for line in lines]
    # Every symbol the library exports is exercised, and nothing else is exported.
    assert {name for name, _, _ in calls} == _exported(library)
    # Return codes: as recorded in calls.expected (reviewed against nvml.h's documentation).
    expected = (C_DIR / "calls.expected").read_text().splitlines()
    assert [f"{name} {rc}" for name, rc, _ in calls] == expected
    values = {(name, rc): value for name, rc, value in calls}
    node = hgx_node()
    assert values["nvmlErrorString", "0"] == "GPU is lost"
    assert values["nvmlSystemGetDriverVersion", "0"] == "580.159.04"
    assert values["nvmlSystemGetNVMLVersion", "0"] == "13.580.159.04"
    assert values["nvmlSystemGetCudaDriverVersion_v2", "0"] == "13000"
    assert values["nvmlDeviceGetCount", "0"] == "8"
    assert values["nvmlDeviceGetUUID", "0"] == node.gpus[7].mig_devices[0].uuid
    assert values["nvmlDeviceGetArchitecture", "0"] == "9"  # NVML_DEVICE_ARCH_HOPPER
    assert values["nvmlDeviceGetBrand", "0"] == "14"  # NVML_BRAND_NVIDIA
    assert values["nvmlDeviceGetCudaComputeCapability", "0"] == "9.0"
    assert values["nvmlDeviceGetMigMode", "0"] == "1/1"
    # No write past any struct (the last field of each guarded line is the guard check).
    guarded = [
        value
        for (name, rc), value in values.items()
        if rc == "0" and name in ("nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetMemoryInfo_v2")
    ]
    assert guarded and all(v.endswith("/1") for v in guarded)
    assert all(
        line.endswith("/1")
        for line in lines
        if line.startswith(
            (
                "nvmlDeviceGetMemoryInfo 0 8",
                "nvmlDeviceGetBAR1MemoryInfo 0",
                "nvmlDeviceGetUtilizationRates 0",
                "nvmlDeviceGetComputeRunningProcesses_v2 0",
                "nvmlDeviceGetComputeRunningProcesses 0",
            )
        )
    )
