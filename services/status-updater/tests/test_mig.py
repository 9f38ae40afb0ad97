"""MIG in the reconciler: static layouts, mig-manager state walk, MIG device holders."""

from __future__ import annotations

import base64
import json
from typing import Any

from fgo_common.names import DRA_NAMES
from fgo_common.topology import HOLDER_DRA, NodeTopology
from fgo_status_updater import mig
from fgo_status_updater.reconcile import NodeInputs, NodeOutcome, ReconcileOptions, reconcile_node
from su_helpers import claim, config, container, node, pod

MIG_CONFIG = """
nodePoolLabelKey: run.ai/simulated-gpu-node-pool
migStrategy: {strategy}
migConfigs:
  halves: [{{devices: all, mig-enabled: true, mig-devices: {{3g.40gb: 2}}}}]
nodePools:
  default:
    gpus: [{{type: H100, count: 2}}]
    mig: {{config: all-1g.10gb}}
"""
NOW = 1795860600.0
DELAY = 5.0


def cfg(strategy: str = "mixed") -> Any:
    return config(MIG_CONFIG.format(strategy=strategy))


def run(
    pods: list[dict[str, Any]],
    previous: NodeTopology | None = None,
    *,
    the_node: dict[str, Any] | None = None,
    claims: list[dict[str, Any]] | None = None,
    strategy: str = "mixed",
    now: float = NOW,
) -> NodeOutcome:
    out = reconcile_node(
        NodeInputs(
            node_name="node-a",
            node=the_node if the_node is not None else node(),
            config=cfg(strategy),
            previous=previous,
            pods=pods,
            claims={
                f"{c['metadata']['namespace']}/{c['metadata']['name']}": c for c in claims or []
            },
            now=now,
        ),
        ReconcileOptions(mig_reconfigure_seconds=DELAY),
    )
    assert out.record is not None
    # What the controller stores and reads back next time.
    out.record = NodeTopology.from_yaml(out.record.to_yaml())
    return out


def labelled(value: str | None = None, **notes: str) -> dict[str, Any]:
    n = node()
    if value is not None:
        n["metadata"]["labels"]["nvidia.com/mig.config"] = value
    n["metadata"]["annotations"].update(notes)
    return n


def mig_holders(record: NodeTopology) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for gpu in record.gpus:
        for device in gpu.mig_devices:
            for h in device.holders:
                out.setdefault(h.pod, []).append((gpu.index, device.profile))
    return out


def mig_pod(name: str, resource: str = "nvidia.com/mig-1g.10gb", n: int = 1, **kw: Any) -> Any:
    return pod(name, containers=[container("main", extra={resource: n})], **kw)


def test_static_pool_layout_and_mixed_allocation_with_usage() -> None:
    out = run([mig_pod("a", n=2), mig_pod("b")])
    record = out.record
    assert record is not None and record.mig_config is None
    assert all(g.mig_enabled and len(g.mig_devices) == 7 for g in record.gpus)
    assert mig_holders(record) == {"a": [(0, "1g.10gb")] * 2, "b": [(0, "1g.10gb")]}
    held = [d for d in record.gpus[0].mig_devices if d.holders]
    assert all(d.usage and d.usage[d.holders[0].pod_uid].fb_used_mib <= d.memory_mib for d in held)
    # Kept on the next reconcile, and a second pass changes nothing.
    again = run([mig_pod("a", n=2), mig_pod("b")], record)
    assert again.record is not None
    assert again.record.to_dict() == record.to_dict()


def test_single_strategy_gives_nvidia_com_gpu_as_mig_devices() -> None:
    out = run([pod("a", gpus=3)], strategy="single")
    assert out.record is not None
    assert mig_holders(out.record) == {"a": [(0, "1g.10gb")] * 3}
    assert not any(g.status.holders for g in out.record.gpus)


def test_insufficient_mig_devices_reported() -> None:
    out = run([mig_pod("a", n=15)])
    assert any(f.reason == "InsufficientMigDevices" for f in out.findings)
    assert out.record is not None
    assert len(mig_holders(out.record)["a"]) == 14


def test_kubelet_choice_of_mig_devices_wins() -> None:
    first = run([])
    assert first.record is not None
    chosen = first.record.gpus[1].mig_devices[4].uuid
    note = {"fake-gpu-operator/allocated-devices": f"nvidia.com/mig-1g.10gb={chosen}"}
    out = run([mig_pod("a", annotations=note)], first.record)
    assert out.record is not None
    holders = [d.uuid for g in out.record.gpus for d in g.mig_devices if d.holders]
    assert holders == [chosen]


def test_dra_claim_of_a_mig_device_is_recorded() -> None:
    first = run([])
    assert first.record is not None
    gpu = first.record.gpus[1]
    device = gpu.mig_devices[2]
    name = DRA_NAMES.mig_device_name(
        gpu.minor, device.profile, device.gi_profile_id, device.placement_start
    )
    out = run([pod("a", claims=[("gpu", "c1")])], first.record, claims=[claim("c1", [name])])
    assert out.record is not None
    held = [
        (g.index, d.uuid, d.holders) for g in out.record.gpus for d in g.mig_devices if d.holders
    ]
    assert [(i, u) for i, u, _ in held] == [(1, device.uuid)]
    assert held[0][2][0].kind == HOLDER_DRA and held[0][2][0].claim == "default/c1"
    assert not any(g.status.holders for g in out.record.gpus)  # not the whole GPU


def test_label_walks_pending_then_success_and_requeues() -> None:
    base = run([]).record
    out = run([], base, the_node=labelled("all-balanced"), now=NOW + 1)
    assert out.record is not None and out.record.mig_config is not None
    assert out.record.mig_config.state == mig.PENDING
    assert out.requeue_after == DELAY
    assert [len(g.mig_devices) for g in out.record.gpus] == [7, 7]  # not yet
    patch = mig.node_patch(labelled("all-balanced"), out.record)
    assert patch == {"labels": {"nvidia.com/mig.config.state": "pending"}}
    early = run([], out.record, the_node=labelled("all-balanced"), now=NOW + 3)
    assert early.record is not None and early.record.mig_config is not None
    assert early.record.mig_config.state == mig.PENDING
    assert early.requeue_after == DELAY - 2
    done = run([], early.record, the_node=labelled("all-balanced"), now=NOW + 1 + DELAY)
    assert done.record is not None and done.record.mig_config is not None
    assert done.record.mig_config.state == mig.SUCCESS
    assert done.record.mig_config.applied == "all-balanced"
    assert done.requeue_after is None
    profiles = sorted(d.profile for d in done.record.gpus[0].mig_devices)
    assert profiles == ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"]
    assert base is not None
    assert done.record.generation > base.generation
    assert any(f.reason == "MigConfigApplied" for f in done.findings)


def test_custom_config_and_disable() -> None:
    base = run([]).record
    step = run([], base, the_node=labelled("halves"), now=NOW)
    done = run([], step.record, the_node=labelled("halves"), now=NOW + DELAY)
    assert done.record is not None
    assert [d.profile for d in done.record.gpus[0].mig_devices] == ["3g.40gb", "3g.40gb"]
    step = run([], done.record, the_node=labelled("all-disabled"), now=NOW + 10)
    off = run([], step.record, the_node=labelled("all-disabled"), now=NOW + 10 + DELAY)
    assert off.record is not None
    assert not any(g.mig_enabled or g.mig_devices for g in off.record.gpus)


def test_reconfiguration_refused_while_a_mig_device_is_held() -> None:
    pods = [mig_pod("a")]
    base = run(pods).record
    step = run(pods, base, the_node=labelled("all-balanced"), now=NOW)
    refused = run(pods, step.record, the_node=labelled("all-balanced"), now=NOW + DELAY)
    assert refused.record is not None and refused.record.mig_config is not None
    assert refused.record.mig_config.state == mig.FAILED
    assert "default/a" in refused.record.mig_config.reason
    assert [len(g.mig_devices) for g in refused.record.gpus] == [7, 7]  # unchanged
    assert any(f.reason == "MigConfigFailed" for f in refused.findings)
    patch = mig.node_patch(labelled("all-balanced"), refused.record)
    assert patch["labels"] == {"nvidia.com/mig.config.state": "failed"}
    assert "default/a" in str(patch["annotations"]["fake-gpu-operator/mig.config.reason"])
    # Like mig-manager, it is not retried when the pod leaves; a new label value is.
    later = run([], refused.record, the_node=labelled("all-balanced"), now=NOW + 20)
    assert later.record is not None and later.record.mig_config is not None
    assert later.record.mig_config.state == mig.FAILED


def test_impossible_label_fails_at_once() -> None:
    out = run([], run([]).record, the_node=labelled("all-7g.99gb"))
    assert out.record is not None and out.record.mig_config is not None
    assert out.record.mig_config.state == mig.FAILED
    assert "unknown MIG layout" in out.record.mig_config.reason
    assert out.requeue_after is None


def test_runai_annotation_handshake() -> None:
    request = (
        "version: v1\nmig-configs:\n  selected:\n"
        "    - devices: ['1']\n      mig-enabled: true\n"
        "      mig-devices: [{name: 3g.40gb, position: 0, size: 4}]\n"
    )
    the_node = labelled(None, **{"run.ai/mig.config": request})
    step = run([], run([]).record, the_node=the_node, now=NOW)
    done = run([], step.record, the_node=the_node, now=NOW + DELAY)
    assert done.record is not None
    assert not done.record.gpus[0].mig_enabled
    assert [(d.profile, d.placement_start) for d in done.record.gpus[1].mig_devices] == [
        ("3g.40gb", 0)
    ]
    patch = mig.node_patch(the_node, done.record)
    assert patch["labels"] == {"nvidia.com/mig.config.state": "success"}
    mapping = json.loads(base64.b64decode(str(patch["annotations"]["run.ai/mig-mapping"])))
    device = done.record.gpus[1].mig_devices[0]
    assert mapping == {
        "1": [{"position": 0, "device_uuid": device.uuid, "gpu_instance_id": device.gi_id}]
    }


def test_unhealthy_mig_devices_are_not_picked() -> None:
    first = run([])
    assert first.record is not None
    first.record.gpus[0].mig_devices[0].health = "Unhealthy"
    out = run([mig_pod("a")], first.record)
    assert out.record is not None
    (held,) = [d for g in out.record.gpus for d in g.mig_devices if d.holders]
    assert held.uuid != first.record.gpus[0].mig_devices[0].uuid


def test_bad_runai_annotation_fails_with_a_reason() -> None:
    the_node = labelled(None, **{"run.ai/mig.config": "mig-configs: {other: []}"})
    out = run([], run([]).record, the_node=the_node)
    assert out.record is not None and out.record.mig_config is not None
    assert out.record.mig_config.state == mig.FAILED
    assert "run.ai/mig.config" in out.record.mig_config.reason


RUNAI_REQUEST = (
    "version: v1\nmig-configs:\n  selected:\n"
    "    - devices: ['1']\n      mig-enabled: true\n"
    "      mig-devices: [{name: 3g.40gb, position: 0, size: 4}]\n"
)


def _runai_applied() -> tuple[dict[str, Any], NodeTopology]:
    """A node whose ``run.ai/mig.config`` was applied, with the mapping written back."""
    the_node = labelled(None, **{"run.ai/mig.config": RUNAI_REQUEST})
    step = run([], run([]).record, the_node=the_node, now=NOW)
    done = run([], step.record, the_node=the_node, now=NOW + DELAY)
    assert done.record is not None
    mapping = mig.node_patch(the_node, done.record)["annotations"]["run.ai/mig-mapping"]
    assert mapping is not None
    the_node["metadata"]["annotations"]["run.ai/mig-mapping"] = mapping
    the_node["metadata"]["labels"]["nvidia.com/mig.config.state"] = "success"
    return the_node, done.record


def _layout(record: NodeTopology) -> list[list[tuple[str, int, str]]]:
    return [[(d.profile, d.placement_start, d.uuid) for d in g.mig_devices] for g in record.gpus]


def test_runai_annotation_with_unconvertible_values_fails_and_keeps_the_layout() -> None:
    # Values the mig-parted parser converts with int() used to raise out of the reconcile
    # (ValueError / TypeError), so the node was never reconciled again and got no Event.
    the_node, applied = _runai_applied()
    for position in ("x", "[1]"):
        bad = RUNAI_REQUEST.replace("position: 0", f"position: {position}")
        node_now = labelled(None, **{"run.ai/mig.config": bad})
        node_now["metadata"]["annotations"]["run.ai/mig-mapping"] = the_node["metadata"][
            "annotations"
        ]["run.ai/mig-mapping"]
        out = run([], applied, the_node=node_now, now=NOW + 2 * DELAY)
        assert out.record is not None and out.record.mig_config is not None
        assert out.record.mig_config.state == mig.FAILED
        assert out.record.mig_config.reason.startswith("run.ai/mig.config@")
        assert [f.reason for f in out.findings] == ["MigConfigFailed"]
        assert _layout(out.record) == _layout(applied)
        # The mapping still describes the layout in place: left as it is.
        assert "run.ai/mig-mapping" not in mig.node_patch(node_now, out.record).get(
            "annotations", {}
        )


def test_runai_mapping_is_removed_when_another_layout_replaces_it() -> None:
    the_node, applied = _runai_applied()
    # Annotation removed: the pool's layout comes back, the mapping goes.
    gone = dict(
        the_node,
        metadata={
            **the_node["metadata"],
            "annotations": {
                k: v
                for k, v in the_node["metadata"]["annotations"].items()
                if k != "run.ai/mig.config"
            },
        },
    )
    back = run([], applied, the_node=gone, now=NOW + 2 * DELAY)
    assert back.record is not None and back.record.mig_config is None
    assert all(len(g.mig_devices) == 7 for g in back.record.gpus)  # all-1g.10gb again
    patch = mig.node_patch(gone, back.record)
    assert patch["annotations"]["run.ai/mig-mapping"] is None
    assert patch["labels"] == {"nvidia.com/mig.config.state": None}

    # The mig-manager label wins over the annotation; once its layout is applied the mapping
    # goes too (while it is pending the run.ai layout is still in place and keeps it).
    both = labelled("halves", **the_node["metadata"]["annotations"])
    both["metadata"]["labels"]["nvidia.com/mig.config.state"] = "success"
    pending = run([], applied, the_node=both, now=NOW + 2 * DELAY)
    assert pending.record is not None and pending.record.mig_config is not None
    assert pending.record.mig_config.state == mig.PENDING
    assert "run.ai/mig-mapping" not in mig.node_patch(both, pending.record).get("annotations", {})
    done = run([], pending.record, the_node=both, now=NOW + 3 * DELAY)
    assert done.record is not None and done.record.mig_config is not None
    assert done.record.mig_config.applied == "halves"
    assert all(
        [d.profile for d in g.mig_devices] == ["3g.40gb", "3g.40gb"] for g in done.record.gpus
    )
    assert mig.node_patch(both, done.record)["annotations"]["run.ai/mig-mapping"] is None
