"""Dynamic MIG in the reconciler: DRA claims create and destroy MIG instances."""

from __future__ import annotations

from typing import Any

from fgo_common import dradevices
from fgo_common.identity import mig_uuid
from fgo_common.topology import HOLDER_DRA, NodeTopology
from fgo_status_updater.reconcile import NodeInputs, NodeOutcome, ReconcileOptions, reconcile_node
from su_helpers import claim, config, node, pod

DYNAMIC_CONFIG = """
nodePoolLabelKey: run.ai/simulated-gpu-node-pool
migStrategy: mixed
nodePools:
  default:
    gpus: [{type: H100, count: 2}]
    mig: {dynamic: true}
"""
NOW = 1795860600.0


def run(
    pods: list[dict[str, Any]],
    previous: NodeTopology | None = None,
    *,
    claims: list[dict[str, Any]] | None = None,
    the_node: dict[str, Any] | None = None,
) -> NodeOutcome:
    out = reconcile_node(
        NodeInputs(
            node_name="node-a",
            node=the_node if the_node is not None else node(),
            config=config(DYNAMIC_CONFIG),
            previous=previous,
            pods=pods,
            claims={
                f"{c['metadata']['namespace']}/{c['metadata']['name']}": c for c in claims or []
            },
            now=NOW,
        ),
        ReconcileOptions(),
    )
    assert out.record is not None
    out.record = NodeTopology.from_yaml(out.record.to_yaml())
    return out


def published(record: NodeTopology) -> dict[str, dradevices.PublishedDevice]:
    return {d.name: d for d in dradevices.node_devices(record)}


def test_dynamic_pool_starts_without_mig_and_marks_the_record() -> None:
    record = run([]).record
    assert record is not None
    assert record.mig_dynamic
    assert not any(g.mig_enabled or g.mig_devices for g in record.gpus)


def test_claims_create_instances_that_match_the_published_devices() -> None:
    first = run([]).record
    assert first is not None
    offered = published(first)
    names = ["gpu-1-mig-3g40gb-9-4", "gpu-1-mig-1g10gb-19-0", "gpu-1-mig-1g10gb-19-1"]
    claims = [claim(f"c{i}", [n]) for i, n in enumerate(names)]
    pods = [pod(f"p{i}", claims=[("gpu", f"c{i}")]) for i in range(len(names))]
    out = run(pods, first, claims=claims)
    record = out.record
    assert record is not None
    gpu0, gpu1 = record.gpus
    assert not gpu0.mig_enabled
    assert gpu1.mig_enabled
    by_profile = {(d.profile, d.placement_start): d for d in gpu1.mig_devices}
    assert set(by_profile) == {("3g.40gb", 4), ("1g.10gb", 0), ("1g.10gb", 1)}
    for name in names:
        device = next(
            d
            for d in gpu1.mig_devices
            if name.endswith(f"-{d.gi_profile_id}-{d.placement_start}")
            and d.profile.replace(".", "") in name
        )
        # The UUID the publisher announced is the one the record now shows ...
        assert offered[name].uuid == device.uuid == mig_uuid(gpu1.id, device.gi_id, device.ci_id)
        # ... and the claim's pod holds it.
        assert [h.kind for h in device.holders] == [HOLDER_DRA]
    assert by_profile[("3g.40gb", 4)].gi_id == 1
    assert sorted(d.gi_id for d in gpu1.mig_devices) == [1, 7, 8]
    assert not gpu1.status.holders  # the whole GPU is not held


def test_instance_disappears_with_its_pod_and_mig_mode_goes_off() -> None:
    first = run([]).record
    name = "gpu-0-mig-1g10gb-19-6"
    held = run([pod("a", claims=[("gpu", "c")])], first, claims=[claim("c", [name])]).record
    assert held is not None and held.gpus[0].mig_enabled
    # Still in the record while the pod runs, with the same UUID.
    again = run([pod("a", claims=[("gpu", "c")])], held, claims=[claim("c", [name])]).record
    assert again is not None
    assert [d.uuid for d in again.gpus[0].mig_devices] == [d.uuid for d in held.gpus[0].mig_devices]
    released = run([], again, claims=[claim("c", [name])]).record
    assert released is not None
    assert not released.gpus[0].mig_enabled and not released.gpus[0].mig_devices


def test_full_gpu_claim_on_a_dynamic_node_holds_the_gpu() -> None:
    first = run([]).record
    record = run([pod("a", claims=[("gpu", "c")])], first, claims=[claim("c", ["gpu-1"])]).record
    assert record is not None
    assert [h.pod for h in record.gpus[1].status.holders] == ["a"]
    assert not record.gpus[1].mig_enabled


def test_overlapping_allocation_creates_only_the_first_instance() -> None:
    first = run([]).record
    claims = [claim("c0", ["gpu-0-mig-3g40gb-9-4"]), claim("c1", ["gpu-0-mig-1g10gb-19-5"])]
    pods = [pod("a", claims=[("gpu", "c0")]), pod("b", claims=[("gpu", "c1")])]
    out = run(pods, first, claims=claims)
    assert out.record is not None
    assert [(d.profile, d.placement_start) for d in out.record.gpus[0].mig_devices] == [
        ("3g.40gb", 4)
    ]
    assert any(f.reason == "OverlappingMigAllocation" for f in out.findings)


def test_mig_manager_label_fails_on_a_dynamic_node() -> None:
    labelled = node()
    labelled["metadata"]["labels"]["nvidia.com/mig.config"] = "all-1g.10gb"
    out = run([], the_node=labelled)
    assert out.record is not None and out.record.mig_config is not None
    assert out.record.mig_config.state == "failed"
    assert "dynamic MIG" in out.record.mig_config.reason
    assert not any(g.mig_enabled for g in out.record.gpus)
