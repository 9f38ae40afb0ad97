"""Allocate mounts the fake NVML library (docs/nvml.md, "Mount contract") where NVIDIA's
container toolkit puts the real one, when the installed bundle carries it, and never a missing
file (a file mount of a missing file fails the container)."""

from __future__ import annotations

from pathlib import Path

from dp_helpers import ids, running_agent, settings, topology
from fgo_common.nodestate import NVML_CONTAINER_PATH, NVML_LIBRARY, SMI_CONTAINER_DIR
from fgo_device_plugin.allocate import ContainerSetup, MountSpec
from fgo_device_plugin.node import container_setup
from fgo_device_plugin.source import StaticTopologySource
from fgo_testkit.kubelet import DevicePluginKubeletPeer

GPU = "nvidia.com/gpu"


def _bundle(tmp_path: Path, *, with_library: bool) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "nvidia-smi").write_text("#!/bin/sh\n")
    if with_library:
        (bundle / NVML_LIBRARY).write_bytes(b"\x7fELF")
    return bundle


async def test_allocate_mounts_the_bundles_nvml_library(sock_dir: Path, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, with_library=True)
    config = settings(sock_dir, nvidia_smi_bundle_host_dir=str(bundle))
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(topology(2))),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        devices = await plugin.wait_for_devices()
        response = await plugin.allocate(ids(devices)[:1])
        mounts = {(m.container_path, m.host_path, m.read_only) for m in response.mounts}
        assert (NVML_CONTAINER_PATH, str(bundle / NVML_LIBRARY), True) in mounts
        assert (SMI_CONTAINER_DIR, str(bundle), True) in mounts
        # The library finds the bundle's nvidia-smi through the variable the launcher reads.
        assert response.envs["FGO_NVIDIA_SMI_HOME"] == SMI_CONTAINER_DIR


def test_no_library_in_the_bundle_means_no_nvml_mount(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, with_library=False)
    setup = container_setup(settings(tmp_path, nvidia_smi_bundle_host_dir=str(bundle)))
    assert setup.nvml_host_path == ""
    assert all(m.container_path != NVML_CONTAINER_PATH for m in setup.mounts())


def test_nvml_mount_needs_the_bundle_mount() -> None:
    # Without the bundle in the container the library would have no nvidia-smi to run.
    setup = ContainerSetup(node_name="n", nvml_host_path="/x/libnvidia-ml.so.1")
    assert setup.mounts() == []
    with_bundle = ContainerSetup(
        node_name="n",
        nvml_host_path="/x/libnvidia-ml.so.1",
        bundle_host_dir="/x",
        bundle_container_dir=SMI_CONTAINER_DIR,
    )
    assert MountSpec(NVML_CONTAINER_PATH, "/x/libnvidia-ml.so.1") in with_bundle.mounts()
