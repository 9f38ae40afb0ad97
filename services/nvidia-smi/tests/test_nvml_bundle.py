"""The NVML library as GPU pods get it: built into the nvidia-smi bundle by build.sh, installed
on the host as the node agents install the bundle, found by a client through the loader path,
and running the bundle's own nvidia-smi through FGO_NVIDIA_SMI_HOME (the variable the node
agents set) with no test hook pointing it anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fgo_common.nodestate import NVML_LIBRARY, install_nvidia_smi, nvml_host_library
from nvml_testlib import PINNED, have_cc, smi_csv, state
from smi_fixtures import hgx_node

SERVICE = Path(__file__).resolve().parents[1]
BUNDLE = SERVICE.parents[1] / "build" / "nvidia-smi" / "dist" / "nvidia-smi"

pytestmark = [
    pytest.mark.skipif(not have_cc(), reason="no C compiler"),
    pytest.mark.timeout(1200),
]

CLIENT = """
import json, pynvml as n
n.nvmlInit()
print(json.dumps([n.nvmlDeviceGetUUID(n.nvmlDeviceGetHandleByIndex(i))
                  for i in range(n.nvmlDeviceGetCount())]))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    subprocess.run([str(SERVICE / "build.sh")], check=True, capture_output=True, timeout=900)
    assert (BUNDLE / NVML_LIBRARY).is_file()
    host = tmp_path_factory.mktemp("host")
    smi_dir = host / "nvidia-smi"
    install_nvidia_smi(BUNDLE, smi_dir, host / "bin" / "nvidia-smi")
    assert nvml_host_library(str(smi_dir)) == str(smi_dir / NVML_LIBRARY)
    return smi_dir


def test_installed_bundle_serves_nvml_clients(installed: Path, tmp_path: Path) -> None:
    node = hgx_node()
    directory = state(tmp_path, node)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LD_LIBRARY_PATH": str(installed),
        "FGO_NVIDIA_SMI_HOME": str(installed),
        "FGO_STATE_DIR": str(directory),
        "FGO_NVML_CACHE_DIR": str(tmp_path),
        "FGO_SMI_TIME": PINNED,
        "NVIDIA_VISIBLE_DEVICES": f"{node.gpus[4].id},{node.gpus[1].id}",
    }
    out = subprocess.run(
        [sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, check=True
    ).stdout
    rows = smi_csv(directory, env, "--query-gpu=uuid")
    assert json.loads(out) == [r["uuid"] for r in rows] == [node.gpus[1].id, node.gpus[4].id]


def test_library_needs_no_newer_glibc_than_the_bundle(installed: Path) -> None:
    # The bundle runs in images with glibc >= 2.35 (docs/nvidia-smi.md); so must the library.
    import re
    import shutil

    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    symbols = subprocess.run(
        ["objdump", "-T", str(installed / NVML_LIBRARY)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions = {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_([0-9.]+)", symbols)}
    assert versions and max(versions) <= (2, 35), sorted(versions)
    exported = [line.split()[-1] for line in symbols.splitlines() if " .text" in line]
    assert exported and all(name.startswith("nvml") for name in exported)
