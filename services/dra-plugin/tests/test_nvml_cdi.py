"""The CDI edits mount the fake NVML library (docs/nvml.md, "Mount contract") where NVIDIA's
container toolkit puts the real one, when the installed bundle carries it; never a missing file."""

from __future__ import annotations

from pathlib import Path

from fgo_common.nodestate import NVML_CONTAINER_PATH, NVML_LIBRARY, SMI_CONTAINER_DIR
from fgo_common.runtime.settings import load_settings
from fgo_dra_plugin.cdi import CdiKind, ContainerSetup, claim_spec
from fgo_dra_plugin.plugin import container_setup
from fgo_dra_plugin.settings import Settings


def _setup(tmp_path: Path, *, with_library: bool) -> tuple[ContainerSetup, Path]:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    if with_library:
        (bundle / NVML_LIBRARY).write_bytes(b"\x7fELF")
    settings = load_settings(
        Settings, {"NODE_NAME": "n1", "NVIDIA_SMI_BUNDLE_HOST_DIR": str(bundle)}
    )
    return container_setup(settings), bundle


def test_cdi_edits_mount_the_bundles_nvml_library(tmp_path: Path) -> None:
    setup, bundle = _setup(tmp_path, with_library=True)
    edits = setup.common_edits()
    nvml = [m for m in edits["mounts"] if m["containerPath"] == NVML_CONTAINER_PATH]
    assert nvml == [
        {
            "hostPath": str(bundle / NVML_LIBRARY),
            "containerPath": NVML_CONTAINER_PATH,
            "options": ["ro", "nosuid", "nodev", "bind"],
        }
    ]
    assert f"FGO_NVIDIA_SMI_HOME={SMI_CONTAINER_DIR}" in edits["env"]
    # ... and it reaches the claim's spec.
    spec = claim_spec(
        CdiKind.parse("k8s.gpu.nvidia.com/claim"), "uid-1", [("gpu-0", "GPU-a")], setup
    )
    mounts = spec["containerEdits"]["mounts"]
    assert any(m["containerPath"] == NVML_CONTAINER_PATH for m in mounts)


def test_no_library_in_the_bundle_means_no_nvml_mount(tmp_path: Path) -> None:
    setup, _ = _setup(tmp_path, with_library=False)
    assert setup.nvml_host_path == ""
    mounts = setup.common_edits().get("mounts", [])
    assert all(m["containerPath"] != NVML_CONTAINER_PATH for m in mounts)


def test_nvml_mount_needs_the_bundle_mount() -> None:
    setup = ContainerSetup(node_name="n", nvml_host_path="/x/libnvidia-ml.so.1")
    assert "mounts" not in setup.common_edits()
