"""Node label reconciliation logic, against an in-memory node table with merge-patch semantics
(the real apiserver is exercised by the integration tests)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from exporter_builders import enable_mig, node
from fgo_common.topology import NodeTopology
from fgo_status_exporter.gfd import GfdLabeler
from fgo_status_exporter.labeler import (
    OWNED_LABELS_ANNOTATION,
    NodeLabeler,
    desired_labels_fn,
    label_patch,
    owned_keys,
)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeNodes:
    def __init__(self, *names: str) -> None:
        self.nodes: dict[str, dict[str, Any]] = {
            n: {"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}} for n in names
        }
        self.reads = 0
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def read(self, name: str) -> dict[str, Any] | None:
        self.reads += 1
        node = self.nodes.get(name)
        return copy.deepcopy(node) if node is not None else None

    async def patch(self, name: str, body: dict[str, Any]) -> bool:
        if name not in self.nodes:
            return False
        self.patches.append((name, body))
        self.nodes[name] = merge_patch(self.nodes[name], body)
        return True

    def labels(self, name: str) -> dict[str, str]:
        return dict(self.nodes[name]["metadata"].get("labels") or {})


def make(records: dict[str, NodeTopology], api: FakeNodes) -> NodeLabeler:
    return NodeLabeler(
        desired=desired_labels_fn(records, GfdLabeler().labels),
        read_node=api.read,
        patch_node=api.patch,
        workers=2,
    )


async def test_labels_appear_and_sync_is_idempotent() -> None:
    api = FakeNodes("n1")
    records = {"n1": node("n1", "H100", 8)}
    labeler = make(records, api)
    await labeler.sync("n1")
    labels = api.labels("n1")
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["kubernetes.io/hostname"] == "n1"  # other writers' labels untouched
    assert owned_keys(api.nodes["n1"]) == set(GfdLabeler().labels(records["n1"]))
    await labeler.sync("n1")
    assert len(api.patches) == 1  # nothing changed, nothing written
    assert api.reads == 1  # and nothing re-read


async def test_change_updates_and_removes_stale_keys() -> None:
    api = FakeNodes("n1")
    records = {"n1": node("n1", "H100", 2, mig_strategy="mixed")}
    labeler = make(records, api)
    await labeler.sync("n1")
    assert "nvidia.com/mig-1g.10gb.count" not in api.labels("n1")
    mig = node("n1", "H100", 2, mig_strategy="mixed")
    enable_mig(mig, 0, [("1g.10gb", s) for s in range(7)])
    records["n1"] = mig
    await labeler.sync("n1")
    assert api.labels("n1")["nvidia.com/mig-1g.10gb.count"] == "7"
    records["n1"] = node("n1", "H100", 2, mig_strategy="mixed")
    await labeler.sync("n1")
    labels = api.labels("n1")
    assert not any(k.startswith("nvidia.com/mig-1g") for k in labels)
    assert labels["nvidia.com/gpu.count"] == "2"


async def test_node_leaving_the_pool_loses_every_label_we_wrote() -> None:
    api = FakeNodes("n1")
    api.nodes["n1"]["metadata"]["labels"]["team"] = "a"
    records = {"n1": node("n1", "K80", 1)}
    labeler = make(records, api)
    await labeler.sync("n1")
    del records["n1"]
    await labeler.sync("n1")
    assert api.labels("n1") == {"kubernetes.io/hostname": "n1", "team": "a"}
    assert OWNED_LABELS_ANNOTATION not in (api.nodes["n1"]["metadata"].get("annotations") or {})


async def test_restart_removes_keys_owned_before_it() -> None:
    api = FakeNodes("n1")
    records = {"n1": node("n1", "H100", 2, mig_strategy="mixed")}
    enable_mig(records["n1"], 0, [("1g.10gb", s) for s in range(7)])
    await make(records, api).sync("n1")
    # A new process (empty memory) sees a record without MIG: it reads the node, finds the
    # annotation, and removes the MIG keys the previous process wrote.
    records["n1"] = node("n1", "H100", 2, mig_strategy="mixed")
    fresh = make(records, api)
    await fresh.sync("n1")
    assert not any(k.startswith("nvidia.com/mig-1g") for k in api.labels("n1"))
    # And an up-to-date node costs a read but no write after a restart.
    writes = len(api.patches)
    await make(records, api).sync("n1")
    assert len(api.patches) == writes


async def test_missing_node_is_not_an_error() -> None:
    api = FakeNodes()
    labeler = make({"ghost": node("ghost", "H100", 1)}, api)
    await labeler.sync("ghost")
    assert api.patches == []
    assert "ghost" not in labeler.applied


async def test_workers_coalesce_marks_and_go_idle() -> None:
    names = [f"n{i}" for i in range(20)]
    api = FakeNodes(*names)
    records = {n: node(n, "H100", 1) for n in names}
    labeler = make(records, api)
    stop = asyncio.Event()
    runner = asyncio.create_task(labeler.run(stop))
    for _ in range(3):
        for name in names:
            labeler.mark(name)
    await asyncio.wait_for(labeler.idle.wait(), 5)
    assert len(api.patches) == len(names)
    assert all(api.labels(n)["nvidia.com/gpu.count"] == "1" for n in names)
    stop.set()
    await asyncio.wait_for(runner, 5)


async def test_failed_sync_is_counted_and_the_worker_survives() -> None:
    api = FakeNodes("n1", "n2")

    async def broken_read(name: str) -> dict[str, Any] | None:
        if name == "n1":
            raise ValueError("boom")  # not transient: no retry
        return await api.read(name)

    labeler = NodeLabeler(
        desired=desired_labels_fn(
            {"n1": node("n1", "H100", 1), "n2": node("n2", "H100", 1)}, GfdLabeler().labels
        ),
        read_node=broken_read,
        patch_node=api.patch,
        workers=1,
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(labeler.run(stop))
    labeler.mark("n1")
    labeler.mark("n2")
    await asyncio.wait_for(labeler.idle.wait(), 5)
    assert labeler.errors == 1
    assert "nvidia.com/gpu.product" in api.labels("n2")
    stop.set()
    await asyncio.wait_for(runner, 5)


def test_patch_shape() -> None:
    patch = label_patch({"a": "1"}, {"a", "b"})
    assert patch == {
        "metadata": {"labels": {"a": "1", "b": None}, "annotations": {OWNED_LABELS_ANNOTATION: "a"}}
    }
    assert label_patch({}, {"b"})["metadata"]["annotations"] == {OWNED_LABELS_ANNOTATION: None}


async def test_a_sync_cancelled_midway_is_redone_by_the_next_run() -> None:
    """Leader election cancels the labeler when the Lease is lost: a node whose patch was in
    flight must be patched when the labeler runs again, not forgotten."""
    api = FakeNodes("n1")
    entered, release = asyncio.Event(), asyncio.Event()
    patch = api.patch

    async def slow_patch(name: str, body: dict[str, Any]) -> bool:
        entered.set()
        await release.wait()
        return await patch(name, body)

    labeler = make({"n1": node("n1")}, api)
    labeler._patch = slow_patch
    stop = asyncio.Event()
    labeler.mark("n1")
    first = asyncio.create_task(labeler.run(stop))
    await asyncio.wait_for(entered.wait(), 5)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert api.patches == []

    release.set()
    second = asyncio.create_task(labeler.run(stop))
    await asyncio.wait_for(labeler.idle.wait(), 5)
    stop.set()
    await second
    assert [name for name, _ in api.patches] == ["n1"]
    assert api.labels("n1").get("nvidia.com/gpu.count")


async def test_a_failed_patch_is_retried_with_back_off_not_at_the_next_resync() -> None:
    """A refused patch used to wait for the next LABEL_RESYNC_SECONDS pass (600 s)."""
    api = FakeNodes("n1")
    refusals = 2

    async def flaky_patch(name: str, body: dict[str, Any]) -> bool:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise ValueError("refused")  # not transient: no retry inside the call
        return await api.patch(name, body)

    labeler = make({"n1": node("n1", "H100", 1)}, api)
    labeler._patch = flaky_patch
    stop = asyncio.Event()
    runner = asyncio.create_task(labeler.run(stop))
    labeler.mark("n1")
    async with asyncio.timeout(10):
        while not api.patches:
            await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(runner, 5)
    assert labeler.errors == 2
    assert api.labels("n1")["nvidia.com/gpu.count"] == "1"
