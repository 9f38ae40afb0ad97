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


async def test_agent_keeps_the_nvml_node_snapshot_next_to_the_record(
    sock_dir: Path, tmp_path: Path
) -> None:
    """Every record the agent writes is followed by nvml-node.snap (fgo_common.nvmlnode), built
    by the nvidia-smi it carries (here the workspace's) from that very topology.json."""
    import asyncio
    import sys

    from fgo_common.nvmlnode import NVML_NODE_FILE
    from fgo_device_plugin.metrics import Metrics
    from fgo_device_plugin.node import NodeAgent

    config = settings(sock_dir)
    agent = NodeAgent(config, StaticTopologySource(topology(2)), Metrics())
    agent.nvml.smi = str(Path(sys.executable).parent / "nvidia-smi")
    stop = asyncio.Event()
    writer = asyncio.create_task(agent.nvml.run(stop))
    snap = Path(config.state_dir) / NVML_NODE_FILE
    try:
        for count in (2, 3):
            await agent.apply(topology(count))
            st = (Path(config.state_dir) / "topology.json").stat()
            stamp = f"S\t{st.st_ino}\t{st.st_size}\t{st.st_mtime_ns // 10**9}\t"
            async with asyncio.timeout(30):
                while not (snap.is_file() and stamp in snap.read_text()):
                    await asyncio.sleep(0.05)
            text = snap.read_text()
            assert text.startswith("FGO-NVML-NODE\t1\n") and text.endswith("\nE\n")
            assert sum(line.startswith("V\t") for line in text.splitlines()) == count
    finally:
        stop.set()
        await asyncio.wait_for(writer, 10)
