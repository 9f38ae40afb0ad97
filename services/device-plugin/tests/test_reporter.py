"""Allocation reports: the kubelet's device choice (pod resources API) -> pod annotation.

The kubelet side is two peers over real unix sockets (device plugin + pod resources); the API
server side is an in-process recorder of patches (the real API is used in tests/integration).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from dp_helpers import ids, running_agent, settings, topology
from fgo_common.annotations import parse_allocated_devices
from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.reporter import allocations_by_pod
from fgo_device_plugin.source import StaticTopologySource
from fgo_kubelet_api import podresources_v1 as podres
from fgo_testkit.kubelet import DevicePluginKubeletPeer
from fgo_testkit.kubelet.podresources import PodResourcesKubeletPeer

GPU = "nvidia.com/gpu"


class Patches:
    """Records pod annotation patches like the API server would apply them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.annotations: dict[tuple[str, str], str] = {}
        self.changed = asyncio.Condition()

    async def __call__(self, namespace: str, name: str, value: str) -> None:
        async with self.changed:
            self.calls.append((namespace, name, value))
            self.annotations[(namespace, name)] = value
            self.changed.notify_all()

    async def wait_for(self, key: tuple[str, str], value: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: self.annotations.get(key) == value)


def test_allocations_by_pod_merges_containers_and_filters_resources() -> None:
    response = podres.pb2.ListPodResourcesResponse(
        pod_resources=[
            podres.pb2.PodResources(
                name="p",
                namespace="ns",
                containers=[
                    podres.pb2.ContainerResources(
                        name="a",
                        devices=[
                            podres.pb2.ContainerDevices(resource_name=GPU, device_ids=["G1"]),
                            podres.pb2.ContainerDevices(resource_name="x.io/y", device_ids=["Y"]),
                        ],
                    ),
                    podres.pb2.ContainerResources(
                        name="b",
                        devices=[
                            podres.pb2.ContainerDevices(resource_name=GPU, device_ids=["G2", "G1"])
                        ],
                    ),
                ],
            ),
            podres.pb2.PodResources(name="cpu-only", namespace="ns", containers=[]),
        ]
    )
    assert allocations_by_pod(response, {GPU}) == {("ns", "p"): {GPU: ["G1", "G2"]}}


async def test_allocation_is_reported_as_pod_annotation(sock_dir: Path) -> None:
    record = topology(
        4, strategy="mixed", mig={3: [("7g.80gb", 0)]}, other=[("example.com/nic", 1)]
    )
    config = settings(
        sock_dir,
        pod_resources_socket=str(sock_dir / "pr" / "kubelet.sock"),
        pod_resources_interval_seconds=0.3,
    )
    patches = Patches()
    metrics = Metrics()
    async with (
        PodResourcesKubeletPeer(config.pod_resources_socket) as podresources,
        DevicePluginKubeletPeer(config.plugin_dir) as kubelet,
        running_agent(config, StaticTopologySource(record), patch_pod=patches, metrics=metrics),
    ):
        gpu = await kubelet.wait_for_plugin(GPU)
        u = ids(await gpu.wait_for_devices())
        mig = await kubelet.wait_for_plugin("nvidia.com/mig-7g.80gb")
        m = ids(await mig.wait_for_devices())

        # The kubelet records its choice only after Allocate succeeded.
        await gpu.allocate(u[1:3])
        podresources.assign("team-a", "trainer", "main", GPU, u[1:3])
        await patches.wait_for(("team-a", "trainer"), f"{GPU}={u[1]},{u[2]}")

        await mig.allocate(m)
        podresources.assign("team-a", "mixed", "main", GPU, u[:1])
        podresources.assign("team-a", "mixed", "side", "nvidia.com/mig-7g.80gb", m)
        podresources.assign("team-a", "mixed", "side", "example.com/nic", ["example.com_nic-0"])
        expected = f"{GPU}={u[0]};nvidia.com/mig-7g.80gb={m[0]}"
        await patches.wait_for(("team-a", "mixed"), expected)
        assert parse_allocated_devices(expected) == {
            GPU: [u[0]],
            "nvidia.com/mig-7g.80gb": m,
        }

        # Periodic resyncs do not re-write unchanged annotations (List calls are sequential:
        # once the second has arrived, the first resync has been handled completely).
        await podresources.wait_for_list_calls(podresources.list_calls + 2)
        assert len(patches.calls) == 2

        # A pod that is re-created under the same name (new devices) is written again.
        podresources.remove_pod("team-a", "trainer")
        await podresources.wait_for_list_calls(podresources.list_calls + 2)
        podresources.assign("team-a", "trainer", "main", GPU, u[2:])
        await patches.wait_for(("team-a", "trainer"), f"{GPU}={u[2]}")
        assert metrics.annotations.labels("ok")._value.get() == 3


async def test_missing_pod_resources_socket_does_not_break_the_plugin(sock_dir: Path) -> None:
    config = settings(
        sock_dir,
        pod_resources_socket=str(sock_dir / "absent" / "kubelet.sock"),
        pod_resources_interval_seconds=0.1,
    )
    patches = Patches()
    async with (
        DevicePluginKubeletPeer(config.plugin_dir) as kubelet,
        running_agent(config, StaticTopologySource(topology(2)), patch_pod=patches),
    ):
        gpu = await kubelet.wait_for_plugin(GPU)
        u = ids(await gpu.wait_for_devices())
        response = await gpu.allocate(u[:1])
        assert response.envs["NVIDIA_VISIBLE_DEVICES"] == u[0]
        await asyncio.sleep(0.5)
        # The socket appears later (kubelet started after us): reports start flowing.
        async with PodResourcesKubeletPeer(config.pod_resources_socket) as podresources:
            podresources.assign("ns", "p", "c", GPU, u[:1])
            await patches.wait_for(("ns", "p"), f"{GPU}={u[0]}")
