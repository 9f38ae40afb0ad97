"""Malformed DRA requests from the kubelet side (the test peer, real gRPC over unix sockets,
v1 and v1beta1): empty and huge claim lists, empty/unknown/mismatched UIDs, hostile names, and
claims whose allocation is damaged. Every problem is a per-claim error — never a gRPC error for
the whole call, never a crash — the checkpoint and CDI files hold only claims that really were
prepared, and the plugin keeps serving (a valid claim still prepares afterwards).

The claims come from canned API objects (unit tier): tests/integration/test_dra_plugin.py and
the fault suite cover the real API server.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from badinput_counts import tried
from corpus import NASTY_SCALARS
from fgo_common import dradevices
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_dra_plugin.cdi import CdiKind, CdiStore, ContainerSetup
from fgo_dra_plugin.driver import Driver, DriverMetrics
from fgo_dra_plugin.server import PluginServers
from fgo_kubelet_api import dra_v1, dra_v1beta1
from fgo_testkit.kubelet import DraKubeletPeer, claim
from fgo_testkit.kubelet.dra import DraPluginConnection
from prometheus_client import CollectorRegistry

SURFACE = "gRPC: DRA plugin (NodePrepareResources, NodeUnprepareResources)"
NODE = "node-bad"
DRIVER = "gpu.nvidia.com"
_CONFIG = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "H100", "count": 2}]}}})
TOPOLOGY = build_node_topology(NODE, _CONFIG.pools["p"], _CONFIG, kwok=False)
DEVICES = {d.name: d for d in dradevices.node_devices(TOPOLOGY)}


def claim_body(uid: str, name: str, results: Any, namespace: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "status": {"allocation": {"devices": {"results": results}}},
    }


def result(device: Any = "gpu-0", pool: Any = NODE, driver: Any = DRIVER) -> dict[str, Any]:
    return {"request": "gpu", "driver": driver, "pool": pool, "device": device}


class Api:
    """Canned claims by (namespace, name); some deliberately malformed."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], Any] = {}

    async def fetch(self, namespace: str, name: str) -> Any:
        return self.claims.get((namespace, name))


@dataclass
class Rig:
    api: Api
    plugin: DraPluginConnection
    root: Path

    def checkpoint_claims(self) -> set[str]:
        path = self.root / "plugins" / "checkpoint.json"
        return set(json.loads(path.read_text())["claims"]) if path.exists() else set()

    def cdi_claims(self) -> set[str]:
        return {
            p.name.removeprefix("k8s.gpu.nvidia.com-claim_").removesuffix(".json")
            for p in (self.root / "cdi").glob("*.json")
        }


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    root = Path(tempfile.mkdtemp(prefix="fgo-bad-dra-", dir="/tmp"))
    api = Api()
    driver = Driver(
        driver_name=DRIVER,
        node_name=NODE,
        fetch_claim=api.fetch,
        current_devices=lambda: DEVICES,
        cdi=CdiStore(root / "cdi", CdiKind.parse("k8s.gpu.nvidia.com/claim")),
        setup=ContainerSetup(node_name=NODE),
        checkpoint_path=root / "plugins" / "checkpoint.json",
        metrics=DriverMetrics(CollectorRegistry()),
    )
    await driver.start()
    servers = PluginServers(
        driver=driver,
        driver_name=DRIVER,
        registration_socket=root / "reg" / f"{DRIVER}-reg.sock",
        dra_socket=root / "plugins" / "dra.sock",
        healthcheck_port=0,
        check_interval_seconds=0.2,
        registry=CollectorRegistry(),
    )
    (root / "reg").mkdir()
    await servers.start()
    try:
        async with DraKubeletPeer(root / "reg", retry_interval_seconds=0.2) as kubelet:
            plugin = await kubelet.wait_for_plugin(DRIVER, timeout_seconds=20)
            rig = Rig(api, plugin, root)
            yield rig
            # Still serving, and a valid claim prepares.
            api.claims[("ns", "after")] = claim_body("after-uid", "after", [result("gpu-1")])
            answer = await plugin.prepare([claim("after-uid", "after", "ns")])
            assert answer.claims["after-uid"].error == ""
    finally:
        await servers.stop()
        shutil.rmtree(root, ignore_errors=True)


async def prepare(rig: Rig, claims: list[Any], service: str | None = None) -> Any:
    try:
        return await rig.plugin.prepare(claims, service=service)
    except grpc.aio.AioRpcError as exc:
        raise AssertionError(
            f"a gRPC error for the whole call: {exc.code()} {exc.details()}"
        ) from None


async def test_empty_and_unknown_claims(rig: Rig) -> None:
    tried(SURFACE)
    assert len((await prepare(rig, [])).claims) == 0
    tried(SURFACE)
    unprepared = await rig.plugin.unprepare([claim("never-prepared", "x", "ns")])
    assert unprepared.claims["never-prepared"].error == ""
    strange = [
        claim("", "", ""),
        claim("u1", "missing", "ns"),
        claim("u2", "../../etc/passwd", "ns"),
        claim("u3", "x" * 100_000, "ns"),
        claim("\u202e\U0001f4a5", "\u0000", "\u00e9"),
    ]
    for c in strange:
        tried(SURFACE)
        answer = await prepare(rig, [c])
        assert answer.claims[c.uid].error, f"claim {c.name[:40]!r} prepared without existing"
    assert rig.checkpoint_claims() == set()
    assert rig.cdi_claims() == set()


async def test_damaged_allocations_are_per_claim_errors(rig: Rig) -> None:
    shapes: list[Any] = [
        [],
        [result("gpu-9")],
        [result(pool="other-node")],
        [result(driver="other.driver")],
        [result(device=None)],
        [result(device=5)],
        [result(pool=None)],
        "not-a-list",
        [None],
        [5],
        [{"device": "gpu-0"}],
        [result("gpu-0"), result("gpu-0")],
        [result(v) for v in NASTY_SCALARS[:12]],
    ]
    refs = []
    for i, results in enumerate(shapes):
        uid = f"bad-{i}"
        rig.api.claims[("ns", uid)] = claim_body(uid, uid, results)
        refs.append(claim(uid, uid, "ns"))
    # A claim whose UID is not the one asked for (re-created), and one not allocated at all.
    rig.api.claims[("ns", "recreated")] = claim_body("new", "recreated", [result()])
    refs.append(claim("old", "recreated", "ns"))
    rig.api.claims[("ns", "pending")] = {
        "metadata": {"namespace": "ns", "name": "pending", "uid": "p"}
    }
    refs.append(claim("p", "pending", "ns"))
    rig.api.claims[("ns", "good")] = claim_body("good", "good", [result("gpu-0")])
    refs.append(claim("good", "good", "ns"))
    tried(SURFACE, len(refs))
    # Allocations without a device of ours (no results, another driver's, a result without a
    # driver) have nothing to prepare: success with no devices is the right answer for them.
    nothing_of_ours = {"bad-0", "bad-3", "bad-10"}
    for service in (dra_v1.DRA_PLUGIN_SERVICE, dra_v1beta1.DRA_PLUGIN_SERVICE):
        answer = await prepare(rig, refs, service)
        errors = {uid: r.error for uid, r in answer.claims.items()}
        assert errors.pop("good") == ""
        for uid in nothing_of_ours:
            assert errors.pop(uid) == "" and not answer.claims[uid].devices
        # The duplicate-device claim may legitimately prepare (one device, listed twice).
        errors.pop("bad-11", None)
        assert all(errors.values()), {k: v for k, v in errors.items() if not v}
        ok = {uid for uid, r in answer.claims.items() if not r.error}
        assert rig.checkpoint_claims() == ok
        assert rig.cdi_claims() == ok


async def test_huge_claim_lists(rig: Rig) -> None:
    refs = [claim(f"u{i}", f"c{i}", "ns") for i in range(3000)]
    tried(SURFACE, len(refs))
    answer = await prepare(rig, refs)
    assert len(answer.claims) == len(refs)
    assert all(r.error for r in answer.claims.values())
    tried(SURFACE, len(refs))
    unprepared = await rig.plugin.unprepare(refs)
    assert all(r.error == "" for r in unprepared.claims.values())


async def test_random_claims(rig: Rig) -> None:
    """300 random claims (seeded), some existing with random allocation results."""
    rng = random.Random(3)
    words = ["", "ns", "gpu-0", "gpu-1", "gpu-7", NODE, "x" * 200, "\u00e9", "GPU-0", "gpu-", "-"]
    seen_ok = set()
    for i in range(300):
        tried(SURFACE)
        uid, name, ns = f"r{i}", rng.choice(words) or f"n{i}", rng.choice(words)
        if rng.random() < 0.7:
            results = [
                result(rng.choice(words), rng.choice([NODE, *words]), rng.choice([DRIVER, *words]))
                for _ in range(rng.randint(0, 3))
            ]
            rig.api.claims[(ns, name)] = claim_body(uid, name, results, ns)
        answer = await prepare(rig, [claim(uid, name, ns)])
        if answer.claims[uid].error == "":
            seen_ok.add(uid)
    assert rig.checkpoint_claims() == seen_ok
    assert rig.cdi_claims() == seen_ok
