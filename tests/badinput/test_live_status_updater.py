"""The running status-updater fed bad input through the API, as a user would: malformed
topology configs (one after the other, from the corpus) and pods with bad annotations. Each bad
config gets a Warning Event naming the problem, the last good config stays in force (the node's
record is untouched, its pod keeps its GPU), the process never exits; a good config afterwards
is applied. Each bad annotation gets a Warning Event on its pod, and the pod still holds its
GPU."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from badinput_counts import tried
from corpus import CONFIG_TEXTS
from fgo_common import annotations as ann
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodes import api_client
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    eventually,
    unique_name,
)
from fgo_testkit.status_updater import StatusUpdaterProcess, holders_by_pod, read_record
from kubernetes_asyncio import client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CONFIG_SURFACE = "topology config: live status-updater"
ANNOTATION_SURFACE = "pod annotations: live status-updater"
TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
# A ConfigMap holds at most 1 MiB: bigger documents never reach the service.
MAX_CM_BYTES = 1_000_000


class Live:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        tmp: Path,
        kubeconfig: Path,
        nodes: KwokNodeFactory,
    ) -> None:
        self.api = api
        self.kubeconfig = kubeconfig
        self.nodes = nodes
        self.core: Any = client.CoreV1Api(api)
        self.ns = namespace
        self.tmp = tmp
        self.pool_key = f"fgo.test/bad-{secrets.token_hex(3)}"
        self.proc: StatusUpdaterProcess | None = None

    def good_config(self, count: int) -> str:
        return yaml.safe_dump(
            {
                "nodePoolLabelKey": self.pool_key,
                "nodePools": {"p": {"gpus": [{"type": "H100", "count": count}]}},
            }
        )

    async def write_config(self, text: str) -> str:
        body = {"metadata": {"name": "topology"}, "data": {"topology.yml": text}}
        try:
            resp = await self.core.replace_namespaced_config_map("topology", self.ns, body)
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
            resp = await self.core.create_namespaced_config_map(self.ns, body)
        return str(resp.metadata.resource_version)

    def alive(self) -> None:
        assert self.proc is not None and self.proc.proc is not None
        code = self.proc.proc.returncode
        assert code is None, f"the status-updater exited ({code}):\n{self.proc.log_tail(40)}"

    async def event_for(self, name: str, reason: str, fragment: str) -> str:
        async def probe() -> str | None:
            self.alive()
            events = await self.core.list_namespaced_event(
                self.ns, field_selector=f"involvedObject.name={name},reason={reason}"
            )
            for event in events.items:
                if fragment in (event.message or ""):
                    return str(event.message)
            return None

        return await eventually(probe, timeout_s=60, what=f"{reason} Event on {name} ({fragment})")


@pytest_asyncio.fixture
async def live(local_cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[Live]:
    async with api_client(local_cluster.kubeconfig) as api:
        ns = unique_name("badinput")
        await create_namespace(api, ns)
        nodes = KwokNodeFactory(api, unique_name("bad", 30) + "-")
        world = Live(api, ns, tmp_path, local_cluster.kubeconfig, nodes)
        try:
            yield world
        finally:
            if world.proc is not None:
                await world.proc.stop()
            await nodes.cleanup()
            await delete_namespace(api, ns)


async def start(live: Live, gpus: int = 4) -> str:
    await live.write_config(live.good_config(gpus))
    live.proc = StatusUpdaterProcess(
        live.kubeconfig,
        live.tmp / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=live.ns,
        RESOURCE_RESERVATION_NAMESPACE=f"{live.ns}-res",
        PROMETHEUS_URL="",
        DEBOUNCE_SECONDS="0.1",
    )
    await live.proc.start()
    (node,) = await live.nodes(
        1, labels={live.pool_key: "p"}, extra_capacity={"nvidia.com/gpu": str(gpus)}
    )
    await live.core.create_namespaced_pod(
        live.ns,
        {
            "metadata": {"name": "holder"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [TOLERATION],
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "c",
                        "image": "pause",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }
                ],
            },
        },
    )

    async def held() -> bool:
        record = await read_record(live.api, live.ns, node)
        return bool(
            record and len(record.gpus) == gpus and holders_by_pod(record).get(f"{live.ns}/holder")
        )

    await eventually(held, timeout_s=60, what=f"record with {gpus} GPUs, the pod holding one")
    return node


LIVE_CONFIGS = [(n, t) for n, t in CONFIG_TEXTS if len(t.encode()) < MAX_CM_BYTES and n != "empty"]


async def test_bad_configs_keep_the_last_good_one(live: Live) -> None:
    node = await start(live)
    crashes: list[str] = []
    for name, text in LIVE_CONFIGS:
        tried(CONFIG_SURFACE)
        rv = await live.write_config(text)
        try:
            message = await live.event_for(
                "topology", "InvalidTopologyConfig", f"resourceVersion {rv})"
            )
        except AssertionError:
            if live.proc is None or live.proc.proc is None or live.proc.proc.returncode is None:
                raise
            crashes.append(f"{name}: exited {live.proc.proc.returncode}: {_reason(live)}")
            # What Kubernetes would do next: restart it — on the same document.
            await live.proc.start(wait_ready=False)
            looping = await _exits_within(live, 30)
            crashes[-1] += " — and again after a restart (crash loop)" if looping else ""
            await live.proc.stop()
            await live.write_config(live.good_config(4))
            await live.proc.start()
            continue
        assert "the last valid config stays in force" in message, (name, message)
    assert not crashes, "bad configs crashed the status-updater:\n" + "\n".join(crashes)
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(live.proc.url + "/healthz")).status_code == 200  # type: ignore[union-attr]
    record = await read_record(live.api, live.ns, node)
    assert record is not None and len(record.gpus) == 4
    assert holders_by_pod(record).get(f"{live.ns}/holder"), "the pod lost its GPU"
    # A good config is still applied after all that.
    await live.write_config(live.good_config(6))

    async def grown() -> bool:
        rec = await read_record(live.api, live.ns, node)
        return bool(rec and len(rec.gpus) == 6)

    await eventually(grown, timeout_s=60, what="the good config applied (6 GPUs)")
    assert live.proc is not None and live.proc.starts == 1


def _reason(live: Live) -> str:
    assert live.proc is not None
    for line in reversed(live.proc.log_tail(200).splitlines()):
        if '"service.failed"' in line:
            return line[:300]
    return live.proc.log_tail(3)[-300:]


async def _exits_within(live: Live, seconds: float) -> bool:
    import asyncio

    assert live.proc is not None and live.proc.proc is not None
    try:
        await asyncio.wait_for(live.proc.proc.wait(), seconds)
    except TimeoutError:
        return False
    return True


BAD_ANNOTATIONS = [
    (ann.SIMULATED_UTILIZATION, "90-10", "InvalidUtilizationAnnotation"),
    (ann.SIMULATED_UTILIZATION, "\U0001f4a5" * 100, "InvalidUtilizationAnnotation"),
    (ann.GPU_MEMORY, "9" * 400 + "Gi", "InvalidGpuMemoryAnnotation"),
    (ann.GPU_MEMORY, "-4Gi", "InvalidGpuMemoryAnnotation"),
    (ann.GPU_FRACTION, "nan", "InvalidGpuFractionAnnotation"),
    (ann.GPU_FRACTION, "7", "InvalidGpuFractionAnnotation"),
]


async def test_bad_annotations_are_reported_and_ignored(live: Live) -> None:
    node = await start(live, gpus=8)
    names = []
    for i, (key, value, reason) in enumerate(BAD_ANNOTATIONS):
        tried(ANNOTATION_SURFACE)
        name = f"bad-{i}"
        names.append((name, reason))
        await live.core.create_namespaced_pod(
            live.ns,
            {
                "metadata": {"name": name, "annotations": {key: value}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [TOLERATION],
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "c",
                            "image": "pause",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        )
    for name, reason in names:
        await live.event_for(name, reason, "ignored")
    live.alive()

    async def all_hold() -> bool:
        record = await read_record(live.api, live.ns, node)
        held = holders_by_pod(record) if record else {}
        return all(held.get(f"{live.ns}/{n}") for n in ["holder", *(n for n, _ in names)])

    await eventually(
        all_hold, timeout_s=60, what="every pod holding its GPU despite its annotation"
    )


async def test_profile_overrides_are_honoured_or_warned_about(live: Live) -> None:
    """The reference's profile form: per-device bus ids and the PCIe topology's NUMA nodes
    reach the node's record; what is not simulated (NVLink, a serial per device) is named in a
    TopologyConfigWarning Event on the topology ConfigMap, and the config still applies."""
    node = await start(live)
    overrides = {
        "device_count": 4,
        "devices": [
            {"index": 0, "pci": {"bus_id": "0000:1a:00.0"}, "serial": "1562821083900"},
            {"index": 1, "pci": {"bus_id": "0000:8a:00.0"}},
        ],
        "pcie_topology": {
            "root_complexes": [
                {"id": "rc0", "numa_node": 0, "devices": ["0000:1a:00.0"]},
                {"id": "rc1", "numa_node": 1, "devices": ["0000:8a:00.0"]},
            ]
        },
        "nvlink": {"version": 4},
    }
    doc = {
        "nodePoolLabelKey": live.pool_key,
        "nodePools": {"p": {"gpu": {"profile": "h100", "overrides": overrides}}},
    }
    await live.write_config(yaml.safe_dump(doc))
    pool = "nodePools.p.gpu.overrides"
    for key in (f"{pool}.nvlink: ignored", f"{pool}.devices: ignored: serial"):
        await live.event_for("topology", "TopologyConfigWarning", key)

    async def placed() -> bool:
        rec = await read_record(live.api, live.ns, node)
        return bool(
            rec
            and [(g.bus_id, g.numa_node) for g in rec.gpus[:2]]
            == [("00000000:1A:00.0", 0), ("00000000:8A:00.0", 1)]
        )

    await eventually(placed, timeout_s=60, what="the profile's bus ids and NUMA nodes applied")
    assert live.proc is not None
    assert '"config.warning"' in live.proc.log_tail(400)
