"""The pod resources test peer (fgo_testkit.kubelet.podresources) answers like the kubelet."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from fgo_kubelet_api import podresources_v1 as podres
from fgo_testkit.kubelet.podresources import PodResourcesKubeletPeer


async def test_list_get_and_allocatable(sock_dir: Path) -> None:
    async with PodResourcesKubeletPeer(sock_dir / "pr" / "kubelet.sock") as peer:
        peer.assign("ns", "p", "c", "nvidia.com/gpu", ["G1", "G2"])
        peer.allocatable = {"nvidia.com/gpu": ["G1", "G2", "G3"]}
        async with grpc.aio.insecure_channel(f"unix:{peer.socket_path}") as channel:
            stub = podres.pb2_grpc.PodResourcesListerStub(channel)
            listed = await stub.List(podres.pb2.ListPodResourcesRequest())
            (pod,) = listed.pod_resources
            assert (pod.namespace, pod.name, pod.containers[0].name) == ("ns", "p", "c")
            assert list(pod.containers[0].devices[0].device_ids) == ["G1", "G2"]
            got = await stub.Get(
                podres.pb2.GetPodResourcesRequest(pod_name="p", pod_namespace="ns")
            )
            assert got.pod_resources == pod
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Get(podres.pb2.GetPodResourcesRequest(pod_name="x", pod_namespace="ns"))
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            alloc = await stub.GetAllocatableResources(podres.pb2.AllocatableResourcesRequest())
            assert list(alloc.devices[0].device_ids) == ["G1", "G2", "G3"]
            assert peer.list_calls == 1
    assert not peer.socket_path.exists()
