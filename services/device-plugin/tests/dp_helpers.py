"""Builders of topology records and a running node agent, shared by the device plugin tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fgo_common.identity import gpu_uuid, mig_uuid, numa_node, pci_bus_id
from fgo_common.topology import HEALTHY, GpuRecord, MigDevice, NodeTopology, OtherDevice
from fgo_device_plugin.metrics import Metrics
from fgo_device_plugin.node import NodeAgent
from fgo_device_plugin.reporter import PatchPod
from fgo_device_plugin.settings import Settings
from fgo_device_plugin.source import StaticTopologySource

NODE = "gpu-node-1"

# (profile, GI profile id, placement start, placement size, memory MiB, SMs) as on an H100 80GB.
H100_MIG = {
    "1g.10gb": (19, 1, 9984, 16),
    "2g.20gb": (14, 2, 20096, 32),
    "3g.40gb": (9, 4, 40320, 60),
    "7g.80gb": (0, 8, 80896, 132),
}


def mig_layout(parent: str, layout: Sequence[tuple[str, int]]) -> list[MigDevice]:
    """MIG devices of ``parent`` from (profile, placement start) pairs, GI ids in order."""
    devices = []
    for gi_id, (profile, start) in enumerate(layout, start=1):
        gi_profile, size, memory, sms = H100_MIG[profile]
        devices.append(
            MigDevice(
                uuid=mig_uuid(parent, gi_id, 0),
                profile=profile,
                gi_id=gi_id,
                ci_id=0,
                gi_profile_id=gi_profile,
                ci_profile_id=0,
                placement_start=start,
                placement_size=size,
                memory_mib=memory,
                sm_count=sms,
            )
        )
    return devices


def gpu(node: str, index: int, count: int, **changes: Any) -> GpuRecord:
    record = GpuRecord(
        id=gpu_uuid(node, index),
        index=index,
        product="NVIDIA H100 80GB HBM3",
        memory_mib=81559,
        profile="h100-80gb-hbm3",
        bus_id=pci_bus_id(index),
        numa_node=numa_node(index, count),
    )
    return dataclasses.replace(record, **changes)


def topology(
    count: int = 4,
    *,
    node: str = NODE,
    strategy: str = "none",
    mig: Mapping[int, Sequence[tuple[str, int]]] | None = None,
    unhealthy: Iterable[int] = (),
    other: Sequence[tuple[str, int]] = (),
    kwok: bool = False,
) -> NodeTopology:
    """A node record with ``count`` H100s; ``mig`` maps GPU index -> MIG layout."""
    bad = set(unhealthy)
    gpus = []
    for i in range(count):
        record = gpu(node, i, count, health="Unhealthy" if i in bad else HEALTHY)
        if mig and i in mig:
            record.mig_enabled = True
            record.mig_devices = mig_layout(record.id, mig[i])
        gpus.append(record)
    return NodeTopology(
        node_name=node,
        pool="default",
        gpu_product="NVIDIA H100 80GB HBM3",
        gpu_memory_mib=81559,
        profile="h100-80gb-hbm3",
        driver_version="580.159.04",
        cuda_version="13.0",
        mig_strategy=strategy,
        other_devices=[OtherDevice(n, c) for n, c in other],
        gpus=gpus,
        kwok=kwok,
    )


def settings(sock_dir: Path, **changes: Any) -> Settings:
    base = Settings(
        node_name=NODE,
        device_plugin_dir=str(sock_dir / "dp"),
        state_dir=str(sock_dir / "state"),
        pod_resources_socket="",
        kubelet_poll_interval_seconds=0.05,
        nvidia_smi_host_path="/var/lib/fake-gpu-operator/bin/nvidia-smi",
    )
    return dataclasses.replace(base, **changes)


@contextlib.asynccontextmanager
async def running_agent(
    config: Settings,
    source: StaticTopologySource,
    *,
    patch_pod: PatchPod | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[NodeAgent]:
    """A node agent running its tasks until the block ends (then stopped like on SIGTERM)."""
    agent = NodeAgent(config, source, metrics or Metrics(), patch_pod=patch_pod)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(agent.follow_topology(stop)),
        asyncio.create_task(agent.manager.run(stop)),
    ]
    if agent.reporter is not None:
        tasks.append(asyncio.create_task(agent.reporter.run(stop)))
    try:
        yield agent
    finally:
        stop.set()
        async with asyncio.timeout(10):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


def ids(devices: Iterable[Any]) -> list[str]:
    return [d.ID for d in devices]
