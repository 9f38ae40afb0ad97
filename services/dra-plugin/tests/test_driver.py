"""Prepare/unprepare logic with canned ResourceClaims (the API read is a plain function here;
tests/integration/test_dra_plugin.py runs the same paths against a real API server)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from fgo_common import dradevices
from fgo_common.config import parse_cluster_config
from fgo_common.identity import mig_uuid
from fgo_common.nodebuild import build_node_topology
from fgo_dra_plugin import checkpoint as ckpt
from fgo_dra_plugin.cdi import CdiKind, CdiStore, ContainerSetup
from fgo_dra_plugin.driver import ClaimRef, Driver, DriverMetrics
from prometheus_client import CollectorRegistry

NODE = "node-a"
config = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "Tesla K80", "count": 2}]}}})
TOPOLOGY = build_node_topology(NODE, config.pools["p"], config, kwok=False)
DEVICES = {d.name: d for d in dradevices.node_devices(TOPOLOGY)}


def claim(
    uid: str,
    *devices: str,
    pool: str = NODE,
    allocated: bool = True,
    driver: str = "gpu.nvidia.com",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": f"claim-{uid}", "uid": uid},
        "status": {},
    }
    if allocated:
        body["status"]["allocation"] = {
            "devices": {
                "results": [
                    {"request": "gpu", "driver": driver, "pool": pool, "device": d} for d in devices
                ]
            }
        }
    return body


class Api:
    """Canned claims by name, counting reads."""

    def __init__(self) -> None:
        self.claims: dict[str, dict[str, Any]] = {}
        self.reads = 0

    def add(self, body: dict[str, Any]) -> ClaimRef:
        self.claims[body["metadata"]["name"]] = body
        return ClaimRef("ns", body["metadata"]["name"], body["metadata"]["uid"])

    async def fetch(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.claims.get(name)


def make_driver(tmp_path: Path, api: Api, *, devices: dict | None = DEVICES) -> Driver:
    return Driver(
        driver_name="gpu.nvidia.com",
        node_name=NODE,
        fetch_claim=api.fetch,
        current_devices=lambda: devices,
        cdi=CdiStore(tmp_path / "cdi", CdiKind.parse("k8s.gpu.nvidia.com/claim")),
        setup=ContainerSetup(node_name=NODE),
        checkpoint_path=tmp_path / "plugin" / "checkpoint.json",
        metrics=DriverMetrics(CollectorRegistry()),
    )


@pytest.fixture
def api() -> Api:
    return Api()


async def test_prepare_returns_cdi_ids_and_records_the_claim(tmp_path: Path, api: Api) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(claim("u1", "gpu-1"))
    result = (await driver.prepare([ref]))["u1"]
    assert result.error == ""
    (device,) = result.devices
    assert (device.request, device.pool, device.device) == ("gpu", NODE, "gpu-1")
    assert device.cdi_device_ids == ("k8s.gpu.nvidia.com/claim=u1-gpu-1",)
    assert device.uuid == TOPOLOGY.gpus[1].id
    assert driver.cdi.claim_uids() == {"u1"}
    assert "u1" in (tmp_path / "plugin" / "checkpoint.json").read_text()


async def test_repeated_prepare_is_answered_from_the_checkpoint(tmp_path: Path, api: Api) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(claim("u1", "gpu-0", "gpu-1"))
    first = await driver.prepare([ref])
    second = await driver.prepare([ref])
    assert first == second
    assert api.reads == 1


async def test_per_claim_errors_do_not_fail_the_batch(tmp_path: Path, api: Api) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    good = api.add(claim("ok", "gpu-0"))
    unknown = api.add(claim("unknown", "gpu-9"))
    foreign = api.add(claim("foreign", "gpu-0", pool="node-b"))
    pending = api.add(claim("pending", allocated=False))
    missing = ClaimRef("ns", "claim-missing", "missing")
    recreated = api.add(claim("new-uid", "gpu-0"))
    stale = ClaimRef("ns", recreated.name, "old-uid")
    results = await driver.prepare([good, unknown, foreign, pending, missing, stale])
    assert results["ok"].error == ""
    assert (
        "gpu-9 of claim ns/claim-unknown is not a device of node node-a (it has: gpu-0, gpu-1)"
        in results["unknown"].error
    )
    assert "pool 'node-b', not from this node's pool 'node-a'" in results["foreign"].error
    assert results["pending"].error == "ResourceClaim ns/claim-pending is not allocated"
    assert results["missing"].error == "ResourceClaim ns/claim-missing not found"
    assert "has UID new-uid, not old-uid" in results["old-uid"].error
    assert driver.cdi.claim_uids() == {"ok"}
    assert set(driver.checkpoint.claims) == {"ok"}


async def test_results_of_other_drivers_are_ignored(tmp_path: Path, api: Api) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(claim("u1", "nic-0", driver="nic.example.com"))
    result = (await driver.prepare([ref]))["u1"]
    assert result.error == "" and result.devices == ()


async def test_no_record_yet_is_a_per_claim_error(tmp_path: Path, api: Api) -> None:
    driver = make_driver(tmp_path, api, devices=None)
    await driver.start()
    ref = api.add(claim("u1", "gpu-0"))
    assert "no topology record yet" in (await driver.prepare([ref]))["u1"].error


async def test_restart_keeps_prepared_claims_and_restores_lost_specs(
    tmp_path: Path, api: Api
) -> None:
    first = make_driver(tmp_path, api)
    await first.start()
    ref = api.add(claim("u1", "gpu-0"))
    prepared = await first.prepare([ref])
    first.cdi.remove("u1")  # e.g. /var/run/cdi is a tmpfs and the node rebooted
    first.cdi.write("crashed", {"kind": "k8s.gpu.nvidia.com/claim"})  # spec without checkpoint

    second = make_driver(tmp_path, api)
    await second.start()
    assert second.cdi.claim_uids() == {"u1"}
    assert await second.prepare([ref]) == prepared
    assert api.reads == 1


async def test_unprepare_removes_spec_and_entry_and_is_idempotent(tmp_path: Path, api: Api) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(claim("u1", "gpu-0"))
    await driver.prepare([ref])
    assert await driver.unprepare([ref]) == {"u1": ""}
    assert driver.cdi.claim_uids() == set()
    assert driver.checkpoint.claims == {}
    assert await driver.unprepare([ref, ClaimRef("ns", "never", "never")]) == {
        "u1": "",
        "never": "",
    }
    reloaded = make_driver(tmp_path, api)
    await reloaded.start()
    assert reloaded.checkpoint.claims == {}


async def test_prepare_of_a_dynamic_mig_device_gives_the_instances_uuid(
    tmp_path: Path, api: Api
) -> None:
    """Dynamic MIG: the claim names a placement device; the container sees the MIG UUID the
    status-updater records for the instance (GI id from the placement)."""
    dyn = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "H100", "count": 1}], "mig": {"dynamic": True}}}}
    )
    topology = build_node_topology(NODE, dyn.pools["p"], dyn, kwok=False)
    devices = {d.name: d for d in dradevices.node_devices(topology)}
    driver = make_driver(tmp_path, api, devices=devices)
    await driver.start()
    ref = api.add(claim("u1", "gpu-0-mig-3g40gb-9-4"))
    result = (await driver.prepare([ref]))["u1"]
    assert result.error == ""
    (device,) = result.devices
    assert device.uuid == mig_uuid(topology.gpus[0].id, 1, 0)


class FailingSaves:
    """Stands in for the checkpoint write: blocks each save until released, then fails it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, path: Path, data: bytes) -> None:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(10)
        raise OSError(28, "No space left on device")


async def _until(event: threading.Event) -> None:
    for _ in range(1000):
        if event.is_set():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")


async def test_concurrent_prepare_never_answers_a_claim_whose_save_failed(
    tmp_path: Path, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(claim("u1", "gpu-0"))
    saves = FailingSaves()
    monkeypatch.setattr(ckpt, "write_atomically", saves)
    first = asyncio.create_task(driver.prepare([ref]))
    await _until(saves.entered)  # the first prepare is saving the claim
    second = asyncio.create_task(driver.prepare([ref]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not second.done()  # it waits for the save instead of answering from memory
    assert driver.checkpoint.claims == {}  # nothing published before it is saved
    saves.release.set()
    for result in (await first, await second):
        assert result["u1"].error == "cannot write checkpoint: [Errno 28] No space left on device"
    assert saves.calls == 2  # the second prepare tried to save the claim itself
    assert driver.checkpoint.claims == {}
    assert driver._claim_locks == {}

    monkeypatch.undo()  # the disk has room again
    result = (await driver.prepare([ref]))["u1"]
    assert result.error == ""
    assert set(driver.checkpoint.claims) == {"u1"}
    assert "u1" in (tmp_path / "plugin" / "checkpoint.json").read_text()


async def test_failed_unprepare_save_keeps_the_claim_prepared(
    tmp_path: Path, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(claim("u1", "gpu-0"))
    prepared = await driver.prepare([ref])
    saves = FailingSaves()
    saves.release.set()
    monkeypatch.setattr(ckpt, "write_atomically", saves)
    assert "cannot write checkpoint" in (await driver.unprepare([ref]))["u1"]
    assert set(driver.checkpoint.claims) == {"u1"}
    assert driver.cdi.claim_uids() == {"u1"}
    assert await driver.prepare([ref]) == prepared  # still prepared, as the disk says
    monkeypatch.undo()
    assert await driver.unprepare([ref]) == {"u1": ""}
    assert driver.checkpoint.claims == {}


async def test_claim_locks_do_not_outlive_their_users(tmp_path: Path, api: Api) -> None:
    """Claims that are never unprepared (failed, cached, or unprepared after a restart) leave
    no lock behind; a lock exists only while someone holds or waits for it."""
    driver = make_driver(tmp_path, api)
    await driver.start()
    refs = [api.add(claim(f"u{i}", f"gpu-{i % 2}")) for i in range(50)]
    refs.append(api.add(claim("bad", "gpu-9")))
    await driver.prepare(refs)
    await driver.prepare(refs[:10])  # cached answers
    await driver.prepare([refs[0], refs[0]])  # the same claim twice in a batch
    assert driver._claim_locks == {}
    async with driver._locked(["u1", "u2"]):
        assert set(driver._claim_locks) == {"u1", "u2"}
        waiting = asyncio.create_task(driver.prepare([refs[1]]))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert driver._claim_locks["u1"].users == 2
    assert (await waiting)["u1"].error == ""
    assert driver._claim_locks == {}


# -- sharing configs (fgo_common.sharing has the rules; here: what prepare does with them) ----


def with_configs(body: dict[str, Any], *params: dict[str, Any]) -> dict[str, Any]:
    body["status"]["allocation"]["devices"]["config"] = [
        {"source": "FromClaim", "opaque": {"driver": "gpu.nvidia.com", "parameters": p}}
        for p in params
    ]
    return body


def device_env(driver: Driver, uid: str) -> dict[str, list[str]]:
    spec = json.loads(driver.cdi.path(uid).read_text())
    return {d["name"]: d["containerEdits"]["env"] for d in spec["devices"]}


async def test_reference_sharing_configs_become_the_references_variables(
    tmp_path: Path, api: Api
) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    example = {"apiVersion": "gpu.resource.example.com/v1alpha1", "kind": "GpuConfig"}
    ts = api.add(
        with_configs(claim("ts", "gpu-0"), {**example, "sharing": {"strategy": "TimeSlicing"}})
    )
    sp = api.add(
        with_configs(
            claim("sp", "gpu-1"),
            {**example, "sharing": {"strategy": "SpacePartitioning",
                                    "spacePartitioningConfig": {"partitionCount": 10}}},
        )
    )  # fmt: skip
    results = await driver.prepare([ts, sp])
    assert {uid: r.error for uid, r in results.items()} == {"ts": "", "sp": ""}
    assert device_env(driver, "ts")["ts-gpu-0"][1:] == [
        "GPU_DEVICE_gpu_0=gpu-0",
        "GPU_DEVICE_gpu_0_SHARING_STRATEGY=TimeSlicing",
        "GPU_DEVICE_gpu_0_TIMESLICE_INTERVAL=Default",
    ]
    assert device_env(driver, "sp")["sp-gpu-1"][1:] == [
        "GPU_DEVICE_gpu_1=gpu-1",
        "GPU_DEVICE_gpu_1_SHARING_STRATEGY=SpacePartitioning",
        "GPU_DEVICE_gpu_1_PARTITION_COUNT=10",
    ]
    (device,) = driver.checkpoint.claims["ts"].devices
    assert dict(device.sharing) == {"strategy": "TimeSlicing", "interval": "Default"}


async def test_mps_gets_nvidias_pipe_directory_and_unprepare_removes_it(
    tmp_path: Path, api: Api
) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    config = {
        "apiVersion": "resource.nvidia.com/v1beta1",
        "kind": "GpuConfig",
        "sharing": {"strategy": "MPS", "mpsConfig": {"defaultActiveThreadPercentage": 30}},
    }
    ref = api.add(with_configs(claim("m1", "gpu-0", "gpu-1"), config))
    assert (await driver.prepare([ref]))["m1"].error == ""
    env = device_env(driver, "m1")
    assert env["m1-gpu-0"][2:] == ["CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps"]
    spec = json.loads(driver.cdi.path("m1").read_text())
    mounts = spec["devices"][0]["containerEdits"]["mounts"]
    assert [m["containerPath"] for m in mounts] == ["/dev/shm", "/tmp/nvidia-mps"]
    assert all(m["options"] == ["rw", "nosuid", "nodev", "bind"] for m in mounts)
    (daemon,) = {d.mps_daemon_id for d in driver.checkpoint.claims["m1"].devices}
    root = tmp_path / "plugin" / "mps" / daemon
    assert {p.name for p in root.iterdir()} == {"pipe", "shm", "log"}
    assert mounts[1]["hostPath"] == str(root / "pipe")

    # A restart that lost the spec rewrites it with the same edits, from the checkpoint.
    driver.cdi.remove("m1")
    again = make_driver(tmp_path, api)
    await again.start()
    assert device_env(again, "m1") == env
    assert await again.unprepare([ref]) == {"m1": ""}
    assert not root.exists()


async def test_an_invalid_config_fails_only_its_claim_and_prepares_nothing(
    tmp_path: Path, api: Api
) -> None:
    driver = make_driver(tmp_path, api)
    await driver.start()
    bad = api.add(
        with_configs(
            claim("bad", "gpu-0"),
            {
                "apiVersion": "resource.nvidia.com/v1beta1",
                "kind": "GpuConfig",
                "sharing": {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Eon"}},
            },
        )
    )
    unknown = api.add(
        with_configs(claim("unknown", "gpu-1"), {"apiVersion": "resource.nvidia.com/v1beta1",
                                                  "kind": "TpuConfig"})
    )  # fmt: skip
    good = api.add(claim("good", "gpu-1"))
    results = await driver.prepare([bad, unknown, good])
    assert results["bad"].error == (
        "prepare devices failed: error validating GPU config: unknown time-slice interval: Eon"
    )
    assert results["unknown"].error.startswith(
        'prepare devices failed: error decoding config parameters: no kind "TpuConfig"'
    )
    assert results["good"].error == ""
    assert driver.cdi.claim_uids() == {"good"}
    assert set(driver.checkpoint.claims) == {"good"}
