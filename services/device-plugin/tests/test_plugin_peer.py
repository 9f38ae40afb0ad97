"""The node agent against the kubelet-side test peer: real wire protocol over unix sockets.

Topology comes from an in-process source with the same interface as the ConfigMap source (the
ConfigMap path is covered on the real control plane in tests/integration).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import sys
from pathlib import Path

import grpc
import pytest
from dp_helpers import NODE, ids, running_agent, settings, topology
from fgo_common.nodestate import read_node_state
from fgo_device_plugin.source import StaticTopologySource
from fgo_kubelet_api import deviceplugin_v1beta1 as dp
from fgo_testkit.kubelet import DevicePluginKubeletPeer

GPU = "nvidia.com/gpu"
MIG_LAYOUT = {1: [("3g.40gb", 0), ("1g.10gb", 4), ("1g.10gb", 5)], 3: [("7g.80gb", 0)]}


async def test_registers_and_lists_the_record_gpus(sock_dir: Path) -> None:
    record = topology(8)
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)) as agent,
    ):
        plugin = await peer.wait_for_plugin(GPU)
        request = peer.registrations[0]
        assert request.version == dp.VERSION == "v1beta1"
        assert request.endpoint == "fake-nvidia.com-gpu.sock"
        assert (config.plugin_dir / request.endpoint).is_socket()
        assert request.options.get_preferred_allocation_available
        assert not request.options.pre_start_required
        assert plugin.options == request.options
        devices = await plugin.wait_for_devices()
        assert ids(devices) == [g.id for g in record.gpus]
        assert all(d.health == dp.HEALTHY for d in devices)
        assert [[n.ID for n in d.topology.nodes] for d in devices] == [
            [g.numa_node] for g in record.gpus
        ]
        async with asyncio.timeout(5):
            await agent.manager.registered.wait()
        assert not peer.rejections


async def test_list_and_watch_follows_topology_and_health(sock_dir: Path) -> None:
    source = StaticTopologySource(topology(4))
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, source),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        first = await plugin.updates.get()
        assert len(first) == 4

        await source.set(topology(4, unhealthy=[2]))
        update = await asyncio.wait_for(plugin.updates.get(), 5)
        assert [d.health for d in update] == ["Healthy", "Healthy", "Unhealthy", "Healthy"]
        assert plugin.healthy_ids() == ids(first[:2]) + ids(first[3:])

        await source.set(topology(6, unhealthy=[2]))
        update = await asyncio.wait_for(plugin.updates.get(), 5)
        assert ids(update)[:4] == ids(first)
        assert len(update) == 6

        await source.set(topology(2))
        update = await asyncio.wait_for(plugin.updates.get(), 5)
        assert ids(update) == ids(first[:2])
        assert all(d.health == "Healthy" for d in update)

        # A record change that leaves the device list alone (e.g. a new holder) sends nothing.
        same = topology(2)
        same.gpus[0].status.usage = {}
        same.driver_version = "999.0"
        await source.set(same)
        await source.set(topology(2, unhealthy=[1]))
        update = await asyncio.wait_for(plugin.updates.get(), 5)
        assert [d.health for d in update] == ["Healthy", "Unhealthy"]
        assert plugin.updates.empty()


async def test_record_removed_empties_the_list(sock_dir: Path) -> None:
    source = StaticTopologySource(topology(2))
    config = settings(sock_dir)
    async with DevicePluginKubeletPeer(config.plugin_dir) as peer, running_agent(config, source):
        plugin = await peer.wait_for_plugin(GPU)
        await plugin.wait_for_devices(lambda d: len(d) == 2)
        await source.set(None)
        await plugin.wait_for_devices(lambda d: not d, timeout_seconds=5)


@pytest.mark.parametrize("count", [1, 2, 8])
async def test_allocate_environment_and_mounts(sock_dir: Path, count: int) -> None:
    record = topology(8)
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        devices = await plugin.wait_for_devices()
        wanted = ids(devices)[-count:]
        response = await plugin.allocate(wanted)
        assert dict(response.envs) == {
            "NVIDIA_VISIBLE_DEVICES": ",".join(wanted),
            "NODE_NAME": NODE,
            "FGO_STATE_DIR": "/run/fake-gpu-operator",
            "FGO_NVIDIA_SMI_HOME": "/usr/local/fake-gpu",
            "FGO_SEED": "0",
        }
        # docs/nvidia-smi.md "Mounts": bundle directory, launcher file, state directory.
        mounts = {(m.container_path, m.host_path, m.read_only) for m in response.mounts}
        assert mounts == {
            ("/usr/local/fake-gpu", "/var/lib/fake-gpu-operator/nvidia-smi", True),
            ("/usr/bin/nvidia-smi", "/var/lib/fake-gpu-operator/bin/nvidia-smi", True),
            # ... also at /bin, for images without a merged /usr (the reference's path).
            ("/bin/nvidia-smi", "/var/lib/fake-gpu-operator/bin/nvidia-smi", True),
            ("/run/fake-gpu-operator", config.state_dir, True),
        }
        assert not response.devices
        assert not response.cdi_devices


async def test_allocate_several_containers_and_custom_env_name(sock_dir: Path) -> None:
    record = topology(4)
    config = settings(
        sock_dir,
        visible_devices_env_name="FGO_VISIBLE_DEVICES",
        state_host_dir="/host/state",
        nvidia_smi_host_path="",
        nvidia_smi_bundle_host_dir="",
        seed=42,
    )
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        u = ids(await plugin.wait_for_devices())
        response = await plugin.allocate_raw(
            dp.pb2.AllocateRequest(
                container_requests=[
                    dp.pb2.ContainerAllocateRequest(devices_ids=[u[0]]),
                    dp.pb2.ContainerAllocateRequest(devices_ids=[u[2], u[1]]),
                ]
            )
        )
        envs = [dict(c.envs) for c in response.container_responses]
        assert [e["FGO_VISIBLE_DEVICES"] for e in envs] == [u[0], f"{u[2]},{u[1]}"]
        assert all("NVIDIA_VISIBLE_DEVICES" not in e for e in envs)
        assert all(e["FGO_SEED"] == "42" and "FGO_NVIDIA_SMI_HOME" not in e for e in envs)
        mounts = [(m.container_path, m.host_path) for m in response.container_responses[1].mounts]
        assert mounts == [("/run/fake-gpu-operator", "/host/state")]


async def test_unknown_ids_are_invalid_argument(sock_dir: Path) -> None:
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(topology(2))),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        good = ids(await plugin.wait_for_devices())[0]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await plugin.allocate([good, "GPU-not-here"])
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "GPU-not-here" in (raised.value.details() or "")
        assert good not in (raised.value.details() or "")
        # A device of another node (same index, other node name) is unknown too.
        other = topology(2, node="other-node").gpus[0].id
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await plugin.allocate([other])
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_mig_single_strategy(sock_dir: Path) -> None:
    record = topology(4, strategy="single", mig=MIG_LAYOUT)
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        devices = await plugin.wait_for_devices()
        migs = [m.uuid for m in record.gpus[1].mig_devices + record.gpus[3].mig_devices]
        assert set(migs) <= set(ids(devices))
        assert record.gpus[1].id not in ids(devices)
        response = await plugin.allocate(migs[1:3])
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(migs[1:3])
        await asyncio.sleep(0.2)
        assert sorted(peer.plugins) == [GPU]


async def test_mig_mixed_strategy(sock_dir: Path) -> None:
    record = topology(4, strategy="mixed", mig=MIG_LAYOUT)
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        expected = {
            GPU: [record.gpus[0].id, record.gpus[2].id],
            "nvidia.com/mig-1g.10gb": [m.uuid for m in record.gpus[1].mig_devices[1:]],
            "nvidia.com/mig-3g.40gb": [record.gpus[1].mig_devices[0].uuid],
            "nvidia.com/mig-7g.80gb": [record.gpus[3].mig_devices[0].uuid],
        }
        for resource, want in expected.items():
            plugin = await peer.wait_for_plugin(resource)
            assert ids(await plugin.wait_for_devices()) == want
            assert plugin.request.endpoint.startswith("fake-")
        mig = peer.plugin("nvidia.com/mig-1g.10gb")
        response = await mig.allocate(expected["nvidia.com/mig-1g.10gb"])
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(
            expected["nvidia.com/mig-1g.10gb"]
        )
        # A MIG UUID is not an nvidia.com/gpu device under mixed.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await peer.plugin(GPU).allocate(expected["nvidia.com/mig-7g.80gb"])
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len({p.request.endpoint for p in peer.plugins.values()}) == 4


async def test_other_devices_resource(sock_dir: Path) -> None:
    record = topology(2, other=[("example.com/nic", 2)])
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        nic = await peer.wait_for_plugin("example.com/nic")
        assert not nic.options.get_preferred_allocation_available
        devices = await nic.wait_for_devices()
        assert len(devices) == 2
        assert not devices[0].HasField("topology")
        response = await nic.allocate(ids(devices))
        assert not response.envs
        assert not response.mounts


async def test_preferred_allocation_and_pre_start(sock_dir: Path) -> None:
    record = topology(8)
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        u = ids(await plugin.wait_for_devices())
        # GPUs 0-3 share NUMA node 0; with 0 and 1 taken, a pair comes from 2-3.
        assert await plugin.get_preferred_allocation(u[2:], 2) == [u[2], u[3]]
        assert await plugin.get_preferred_allocation(u, 2, must_include=[u[6]]) == [u[6], u[4]]
        assert (
            await plugin.pre_start_container(u[:1], force=True)
            == dp.pb2.PreStartContainerResponse()
        )


@pytest.mark.parametrize("cleanup_sockets", [True, False])
async def test_re_registers_after_kubelet_restart(sock_dir: Path, cleanup_sockets: bool) -> None:
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir, cleanup_plugin_sockets=cleanup_sockets) as peer,
        running_agent(config, StaticTopologySource(topology(4))) as agent,
    ):
        plugin = await peer.wait_for_plugin(GPU)
        before = ids(await plugin.wait_for_devices())
        await peer.restart(downtime_seconds=0.2)
        await peer.wait_for_registrations(2, timeout_seconds=5)
        plugin = await peer.wait_for_plugin(GPU)
        assert ids(await plugin.wait_for_devices()) == before
        assert (await plugin.allocate(before[:1])).envs["NVIDIA_VISIBLE_DEVICES"] == before[0]
        async with asyncio.timeout(5):
            await agent.manager.registered.wait()
        assert len(peer.registrations) == 2


async def test_re_registers_when_the_directory_is_wiped(sock_dir: Path) -> None:
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(topology(2))),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        await plugin.wait_for_devices()
        ours = config.plugin_dir / plugin.request.endpoint
        ours.unlink()
        await peer.wait_for_registrations(2, timeout_seconds=5)
        assert ours.is_socket()
        plugin = await peer.wait_for_plugin(GPU)
        assert len(await plugin.wait_for_devices()) == 2


async def test_registers_once_kubelet_appears(sock_dir: Path) -> None:
    config = settings(sock_dir)
    peer = DevicePluginKubeletPeer(config.plugin_dir, cleanup_plugin_sockets=False)
    async with running_agent(config, StaticTopologySource(topology(2))) as agent:
        await asyncio.sleep(0.3)
        assert not agent.manager.registered.is_set()
        async with peer:
            plugin = await peer.wait_for_plugin(GPU)
            assert len(await plugin.wait_for_devices()) == 2


async def test_restart_keeps_device_ids_and_removes_stale_sockets(sock_dir: Path) -> None:
    record = topology(4)
    config = settings(sock_dir)
    async with DevicePluginKubeletPeer(config.plugin_dir, cleanup_plugin_sockets=False) as peer:
        async with running_agent(config, StaticTopologySource(record)):
            first = ids(await (await peer.wait_for_plugin(GPU)).wait_for_devices())
            endpoint = peer.registrations[0].endpoint
        # Stopped like on SIGTERM: our socket is gone, the stream ended.
        assert not (config.plugin_dir / endpoint).exists()
        await peer.plugin(GPU).stream_closed.wait()
        # A stale socket of ours from an older run (a resource that no longer exists).
        stale = config.plugin_dir / "fake-nvidia.com-mig-1g.5gb.sock"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(stale))
        # Not ours (no fake- prefix): must survive.
        foreign = config.plugin_dir / "nvidia-gpu.sock"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(foreign))
        assert stale.is_socket()
        async with running_agent(config, StaticTopologySource(record)):
            await peer.wait_for_registrations(2)
            plugin = await peer.wait_for_plugin(GPU)
            second = ids(await plugin.wait_for_devices(bool))
            assert second == first
            assert peer.registrations[1].endpoint == endpoint
            assert not stale.exists()
            assert foreign.is_socket()


async def test_node_state_snapshot_follows_the_record(sock_dir: Path) -> None:
    source = StaticTopologySource(topology(2))
    config = settings(sock_dir)
    async with DevicePluginKubeletPeer(config.plugin_dir), running_agent(config, source) as agent:
        await agent.wait_records(1)
        assert read_node_state(config.state_dir).gpus[0].id == topology(2).gpus[0].id
        changed = topology(3, unhealthy=[1])
        await source.set(changed)
        await agent.wait_records(2)
        snapshot = read_node_state(config.state_dir)
        assert [g.health for g in snapshot.gpus] == ["Healthy", "Unhealthy", "Healthy"]
        assert snapshot.to_dict() == changed.to_dict()


async def test_settings_overrides_mig_strategy(sock_dir: Path) -> None:
    record = topology(2, strategy="none", mig={1: [("7g.80gb", 0)]})
    config = dataclasses.replace(settings(sock_dir), mig_strategy="mixed")
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        plugin = await peer.wait_for_plugin("nvidia.com/mig-7g.80gb")
        assert ids(await plugin.wait_for_devices()) == [record.gpus[1].mig_devices[0].uuid]


async def test_nvidia_smi_sees_exactly_the_allocated_gpus(sock_dir: Path) -> None:
    """The Allocate environment + the snapshot are enough for the real nvidia-smi CLI.

    No container here: the state directory's container path is mapped back to its host path,
    everything else is the Allocate response as the runtime would apply it.
    """
    record = topology(8)
    config = settings(sock_dir)
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as peer,
        running_agent(config, StaticTopologySource(record)),
    ):
        plugin = await peer.wait_for_plugin(GPU)
        u = ids(await plugin.wait_for_devices())
        response = await plugin.allocate([u[5], u[2]])
        mounts = {m.container_path: m.host_path for m in response.mounts}
        env = {
            **dict(response.envs),
            "FGO_STATE_DIR": mounts[response.envs["FGO_STATE_DIR"]],
            "PATH": os.environ.get("PATH", ""),
        }
        smi = shutil.which("nvidia-smi", path=str(Path(sys.executable).parent))
        assert smi is not None
        proc = await asyncio.create_subprocess_exec(
            smi,
            "--query-gpu=uuid,pci.bus_id",
            "--format=csv,noheader",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        rows = [line.split(", ") for line in out.decode().splitlines()]
        # Enumerated in PCI bus order, like the driver inside the container.
        assert sorted(r[0] for r in rows) == sorted([u[5], u[2]])
        assert {r[1] for r in rows} == {record.gpus[5].bus_id, record.gpus[2].bus_id}


def test_rejection_message_stays_small() -> None:
    from fgo_device_plugin.server import describe_ids

    text = describe_ids([f"GPU-{i}" for i in range(20_000)] + ["G" * (1 << 20)])
    assert len(text) < 1024
    assert text.endswith("and 19993 more")
    assert describe_ids(["b", "a", "a"]) == "'a', 'b'"
