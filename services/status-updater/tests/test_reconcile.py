"""The node reconciler: GPU picking, keeping assignments, DRA, sharing, shrink, restart."""

from __future__ import annotations

from typing import Any

from fgo_common.telemetry import sample_gpu
from fgo_common.topology import HOLDER_DRA, HOLDER_RESERVATION, NodeTopology
from fgo_status_updater.reconcile import (
    NodeInputs,
    NodeOutcome,
    ReconcileOptions,
    pick_gpus,
    reconcile_node,
)
from fgo_status_updater.reconcile import _profile as profile_of
from su_helpers import claim, config, container, node, pod

CFG = config()
NOW = 1795860600.0


def run(
    pods: list[dict[str, Any]],
    previous: NodeTopology | None = None,
    *,
    the_node: dict[str, Any] | None = None,
    claims: list[dict[str, Any]] | None = None,
    cfg: Any = CFG,
    now: float = NOW,
    **kw: Any,
) -> NodeOutcome:
    inputs = NodeInputs(
        node_name="node-a",
        node=the_node if the_node is not None else node(),
        config=cfg,
        previous=previous,
        pods=pods,
        claims={f"{c['metadata']['namespace']}/{c['metadata']['name']}": c for c in claims or []},
        now=now,
        **kw,
    )
    return reconcile_node(inputs, ReconcileOptions())


def holdings(record: NodeTopology) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for gpu in record.gpus:
        for h in gpu.status.holders:
            out.setdefault(h.pod, []).append(gpu.index)
    return out


def roundtrip(record: NodeTopology | None) -> NodeTopology:
    assert record is not None
    return NodeTopology.from_yaml(record.to_yaml())


def test_fresh_node_record() -> None:
    out = run([])
    assert out.action == "write" and out.record is not None
    assert [g.index for g in out.record.gpus] == list(range(8))
    assert out.record.pool == "default" and out.record.kwok
    assert all(g.status.is_free for g in out.record.gpus)


def test_pick_prefers_one_numa_node_then_lowest_index() -> None:
    rec = run([]).record
    assert rec is not None
    gpus = rec.gpus  # NUMA 0: 0-3, NUMA 1: 4-7
    free = [gpus[i] for i in (1, 2, 4, 5, 6)]
    assert [g.index for g in pick_gpus(free, 2)] == [1, 2]
    assert [g.index for g in pick_gpus(free, 3)] == [4, 5, 6]  # only NUMA 1 fits three
    free = [gpus[i] for i in (3, 4)]
    assert [g.index for g in pick_gpus(free, 2)] == [3, 4]  # nothing fits: lowest indexes
    assert pick_gpus(free, 0) == []


def test_multi_gpu_pods_get_whole_numa_nodes_and_usage() -> None:
    pods = [pod("a", gpus=1), pod("b", gpus=4)]
    rec = run(pods).record
    assert rec is not None
    assert holdings(rec) == {"a": [0], "b": [4, 5, 6, 7]}
    gpu4 = rec.gpus[4]
    assert gpu4.status.holders[0].container == "main"
    assert gpu4.status.usage["uid-default-b"].utilization.max == 90  # default 50-90
    assert gpu4.status.usage["uid-default-b"].fb_used_mib == gpu4.memory_mib


def test_assignments_are_kept_and_restart_is_idempotent() -> None:
    first = run([pod("a", gpus=2)]).record
    # A second pod arrives; the first keeps its GPUs even though a fresh pick would differ.
    pods = [pod("z-old", gpus=1, created="2026-11-28T08:00:00Z"), pod("a", gpus=2)]
    stored = roundtrip(first)
    second = run(pods, stored).record
    assert second is not None
    assert holdings(second)["a"] == [0, 1]
    assert holdings(second)["z-old"] == [2]
    # Reconciling again from the stored record (a restart) changes nothing at all.
    again = run(pods, roundtrip(second)).record
    assert again is not None and again.to_dict() == second.to_dict()


def test_completed_and_deleted_pods_release_and_bank_energy() -> None:
    a = pod("a", gpus=1, annotations={"run.ai/simulated-gpu-utilization": "100"})
    stored = roundtrip(run([a]).record)
    gpu0 = stored.gpus[0]
    before = sample_gpu(gpu0, profile_of(gpu0), NOW + 60).energy_mj
    done = dict(a, status={"phase": "Succeeded"})
    rec = run([done], stored, now=NOW + 60).record
    assert rec is not None
    assert rec.gpus[0].status.is_free and not rec.gpus[0].status.usage
    assert rec.gpus[0].status.energy_banked_j > 0
    after = sample_gpu(rec.gpus[0], profile_of(rec.gpus[0]), NOW + 60).energy_mj
    assert after >= before  # energy never goes down
    assert run([], stored, now=NOW + 60).record.gpus[0].status.is_free  # type: ignore[union-attr]


def test_sw_power_capping_time_is_banked_when_a_capped_pod_leaves() -> None:
    """The SW Power Capping counter, like energy, never goes down: a pod at 100 % (capped on
    this GPU) leaves, its capped time stays in the counter and survives a restart (roundtrip)."""
    a = pod("a", gpus=1, annotations={"run.ai/simulated-gpu-utilization": "100"})
    stored = roundtrip(run([a]).record)
    gpu0 = stored.gpus[0]
    before = sample_gpu(gpu0, profile_of(gpu0), NOW + 600).sw_power_cap_ns
    assert before > 0, "a pod at 100 % must have spent time capped"
    done = dict(a, status={"phase": "Succeeded"})
    rec = run([done], stored, now=NOW + 600).record
    assert rec is not None and rec.gpus[0].status.is_free
    assert rec.gpus[0].status.sw_cap_banked_ns == before
    restored = roundtrip(rec).gpus[0]
    for t in (NOW + 600, NOW + 3600):
        assert sample_gpu(restored, profile_of(restored), t).sw_power_cap_ns == before


def test_init_container_gpus_counted() -> None:
    p = pod("p", containers=[container("app", 1)], init=[container("warm", 3)])
    rec = run([p]).record
    assert rec is not None
    assert holdings(rec) == {"p": [0, 1, 2]}
    assert [h.container for g in rec.gpus[:3] for h in g.status.holders] == ["app", "warm", "warm"]


def test_shared_dra_claim_stays_held_while_any_pod_runs() -> None:
    c = claim("shared", ["gpu-5"])
    a = pod("a", claims=[("gpu", "shared")])
    b = pod("b", claims=[("gpu", "shared")])
    rec = run([a, b], claims=[c]).record
    assert rec is not None
    gpu5 = rec.gpus[5]
    assert [h.pod for h in gpu5.status.holders] == ["a", "b"]
    assert all(h.kind == HOLDER_DRA and h.claim == "default/shared" for h in gpu5.status.holders)
    assert set(gpu5.status.usage) == {"uid-default-a", "uid-default-b"}
    # One pod goes: the GPU stays held by the other.
    rec2 = run([b], roundtrip(rec), claims=[c]).record
    assert rec2 is not None
    assert [h.pod for h in rec2.gpus[5].status.holders] == ["b"]
    assert run([], roundtrip(rec2), claims=[c]).record.gpus[5].status.is_free  # type: ignore[union-attr]


def _with_config(body: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    body["status"]["allocation"]["devices"]["config"] = [
        {"source": "FromClaim", "opaque": {"driver": "gpu.nvidia.com", "parameters": parameters}}
    ]
    return body


def test_a_claims_sharing_strategy_is_recorded_on_its_holders() -> None:
    """docs/sharing.md: nvidia-smi and the metrics learn from the record that pods share a GPU
    through MPS (or time-slicing), so the record carries the strategy per holder."""
    mps = _with_config(
        claim("shared", ["gpu-5"]),
        {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig",
         "sharing": {"strategy": "MPS"}},
    )  # fmt: skip
    plain = claim("plain", ["gpu-2"])
    pods = [
        pod("a", claims=[("gpu", "shared")]),
        pod("b", claims=[("gpu", "shared")]),
        pod("c", claims=[("gpu", "plain")]),
    ]
    out = run(pods, claims=[mps, plain])
    rec = out.record
    assert rec is not None and out.findings == []
    assert [h.sharing for h in rec.gpus[5].status.holders] == ["MPS", "MPS"]
    assert [h.sharing for h in rec.gpus[2].status.holders] == [""]
    assert [h.sharing for h in roundtrip(rec).gpus[5].status.holders] == ["MPS", "MPS"]


def test_an_invalid_sharing_config_is_a_warning_and_the_gpu_is_still_held() -> None:
    bad = _with_config(
        claim("bad", ["gpu-1"]),
        {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig",
         "sharing": {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Eon"}}},
    )  # fmt: skip
    out = run([pod("a", claims=[("gpu", "bad")])], claims=[bad])
    assert out.record is not None
    assert holdings(out.record) == {"a": [1]}
    assert out.record.gpus[1].status.holders[0].sharing == ""
    (finding,) = out.findings
    assert finding.reason == "InvalidDeviceConfig"
    assert "unknown time-slice interval: Eon" in finding.message


def test_claims_of_other_drivers_and_unknown_devices() -> None:
    other = claim("fpga", ["gpu-1"], driver="fpga.example.com")
    missing = claim("big", ["gpu-12"])
    a = pod("a", claims=[("x", "fpga")])
    b = pod("b", claims=[("y", "big")])
    out = run([a, b], claims=[other, missing])
    assert out.record is not None
    assert holdings(out.record) == {}
    assert [f.reason for f in out.findings] == ["UnknownDraDevice"]


def test_claims_naming_gpus_the_reference_way_are_tracked() -> None:
    """kwok-dra-plugin / dra-plugin with DEVICE_NAMING=reference publish gpu-<uuid>; a claim
    of such a device holds the GPU, and so does one named gpu-<minor> (allocated before the
    naming was switched), on the same node at once."""
    base = run([]).record
    assert base is not None
    uuid_name = "gpu-" + base.gpus[3].id.lower().removeprefix("gpu-")
    ref = pod("ref", claims=[("g", "by-uuid")])
    old = pod("old", claims=[("g", "by-minor")])
    claims = [claim("by-uuid", [uuid_name]), claim("by-minor", ["gpu-5"])]
    out = run([ref, old], roundtrip(base), claims=claims)
    assert out.record is not None
    assert holdings(out.record) == {"ref": [3], "old": [5]}
    assert out.findings == []


def test_a_reference_name_of_no_gpu_of_the_node_is_reported() -> None:
    stranger = "gpu-0b5c4d8e-1111-5222-8333-444455556666"
    out = run([pod("p", claims=[("g", "c")])], claims=[claim("c", [stranger])])
    assert out.record is not None and holdings(out.record) == {}
    assert [f.reason for f in out.findings] == ["UnknownDraDevice"]
    assert stranger in out.findings[0].message


def test_dra_wins_over_a_conflicting_device_plugin_pick() -> None:
    dp = pod("dp", gpus=1, created="2026-11-28T08:00:00Z")
    stored = roundtrip(run([dp]).record)
    assert holdings(stored) == {"dp": [0]}
    dra = pod("dra", claims=[("g", "c")])
    rec = run([dp, dra], stored, claims=[claim("c", ["gpu-0"])]).record
    assert rec is not None
    assert holdings(rec) == {"dra": [0], "dp": [1]}


def test_kubelet_choice_from_annotation_wins_and_bad_one_is_reported() -> None:
    base = run([]).record
    assert base is not None
    ids = [g.id for g in base.gpus]
    p = pod(
        "p",
        gpus=2,
        annotations={"fake-gpu-operator/allocated-devices": f"nvidia.com/gpu={ids[6]},{ids[3]}"},
    )
    out = run([p], roundtrip(base), the_node=node(kwok=False))
    assert out.record is not None and holdings(out.record) == {"p": [3, 6]}
    assert out.findings == []
    for bad in (f"nvidia.com/gpu={ids[6]}", "nvidia.com/gpu=GPU-nope,GPU-nah", "garbage"):
        q = pod("q", gpus=2, annotations={"fake-gpu-operator/allocated-devices": bad})
        out = run([q], roundtrip(base), the_node=node(kwok=False))
        assert out.record is not None and holdings(out.record) == {"q": [0, 1]}
        assert [f.reason for f in out.findings] == ["InvalidAllocatedDevices"]


def test_annotation_moves_an_earlier_pick() -> None:
    p = pod("p", gpus=1)
    stored = roundtrip(run([p], the_node=node(kwok=False)).record)
    assert holdings(stored) == {"p": [0]}
    p["metadata"]["annotations"]["fake-gpu-operator/allocated-devices"] = (
        f"nvidia.com/gpu={stored.gpus[2].id}"
    )
    rec = run([p], stored, the_node=node(kwok=False)).record
    assert rec is not None and holdings(rec) == {"p": [2]}


def test_pool_shrink_keeps_held_gpus_until_released() -> None:
    pods = [pod("a", gpus=1), pod("b", gpus=4)]
    stored = roundtrip(run(pods).record)
    shrunk = config(
        "nodePools: {default: {gpus: [{type: H100, count: 2}]}, small: {gpus: [{type: T4, count: 1}]}}"
    )
    out = run(pods, stored, cfg=shrunk)
    rec = out.record
    assert rec is not None
    assert [g.index for g in rec.gpus] == [0, 1, 4, 5, 6, 7]
    assert holdings(rec) == {"a": [0], "b": [4, 5, 6, 7]}
    assert all(not g.healthy for g in rec.gpus[2:])
    assert [f.reason for f in out.findings] == ["PoolShrinkBelowAllocation"]
    assert rec.generation == stored.generation + 1
    # A new pod cannot land on a retiring GPU.
    c = pod("c", gpus=1)
    rec2 = run([*pods, c], roundtrip(rec), cfg=shrunk).record
    assert rec2 is not None and holdings(rec2)["c"] == [1]
    # Once b goes, its GPUs leave the record.
    rec3 = run([pods[0], c], roundtrip(rec2), cfg=shrunk).record
    assert rec3 is not None and [g.index for g in rec3.gpus] == [0, 1]
    # And growing the pool again brings them back healthy.
    rec4 = run([pods[0], c], roundtrip(rec3)).record
    assert rec4 is not None and all(g.healthy for g in rec4.gpus) and len(rec4.gpus) == 8


def test_relabel_to_another_pool_and_label_removal() -> None:
    stored = roundtrip(run([pod("a", gpus=1)]).record)
    rec = run([pod("a", gpus=1)], stored, the_node=node(pool="small")).record
    assert rec is not None
    assert rec.pool == "small" and rec.gpu_product == "Tesla K80" and len(rec.gpus) == 2
    assert holdings(rec) == {"a": [0]}
    assert run([], stored, the_node=node(pool=None)).action == "delete"
    gone = reconcile_node(NodeInputs("node-a", None, CFG, stored))
    assert gone.action == "delete"
    assert reconcile_node(NodeInputs("node-a", node(), None, stored)).action == "keep"


def test_unknown_pool() -> None:
    out = run([], the_node=node(pool="nope"))
    assert out.action == "delete"
    assert [f.reason for f in out.findings] == ["UnknownNodePool"]
    assert "nope" in out.findings[0].message and out.findings[0].obj.kind == "Node"
    # A node that had a record keeps its GPUs and keeps tracking allocations.
    stored = roundtrip(run([pod("a", gpus=1)]).record)
    out = run([pod("a", gpus=1), pod("b", gpus=1)], stored, the_node=node(pool="nope"))
    assert out.record is not None and out.record.pool == "default"
    assert holdings(out.record) == {"a": [0], "b": [1]}


def test_fractional_pods_share_the_reservation_gpu() -> None:
    res = pod(
        "runai-reservation-gpu-x",
        namespace="runai-reservation",
        gpus=1,
        labels={"runai-gpu-group": "g1"},
    )
    frac_a = pod("frac-a", labels={"runai-gpu-group": "g1"}, annotations={"gpu-fraction": "0.5"})
    frac_b = pod(
        "frac-b",
        labels={"runai-gpu-group": "g1"},
        annotations={"gpu-fraction": "0.25", "run.ai/simulated-gpu-utilization": "30"},
    )
    out = run([res, frac_a, frac_b])
    rec = out.record
    assert rec is not None
    gpu0 = rec.gpus[0]
    assert [(h.pod, h.kind) for h in gpu0.status.holders] == [
        ("runai-reservation-gpu-x", HOLDER_RESERVATION)
    ]
    assert set(gpu0.status.usage) == {"uid-default-frac-a", "uid-default-frac-b"}
    assert gpu0.status.usage["uid-default-frac-a"].fb_used_mib == gpu0.memory_mib // 2
    assert out.reservation_patches == [("runai-reservation", "runai-reservation-gpu-x", gpu0.id)]
    # Once the annotation is there, no further patch; a deprecated runai-gpu pod finds it too.
    res["metadata"]["annotations"]["run.ai/reserve_for_gpu_index"] = gpu0.id
    old_style = pod("old", annotations={"runai-gpu": gpu0.id})
    out2 = run([res, frac_a, old_style], roundtrip(rec))
    assert out2.reservation_patches == []
    assert out2.record is not None
    assert set(out2.record.gpus[0].status.usage) == {"uid-default-frac-a", "uid-default-old"}


def test_reservation_pod_with_preset_index_gets_that_gpu() -> None:
    res = pod(
        "r",
        namespace="runai-reservation",
        gpus=1,
        annotations={"run.ai/reserve_for_gpu_index": "3"},
    )
    rec = run([res]).record
    assert rec is not None and holdings(rec) == {"r": [3]}


def test_other_devices_are_counted() -> None:
    p = pod("p", containers=[container("a", 0, {"example.com/fpga": 3})])
    rec = run(
        [p, pod("q", phase="Failed", containers=[container("b", 0, {"example.com/fpga": 1})])]
    ).record
    assert rec is not None
    assert [(d.name, d.count, d.allocated) for d in rec.other_devices] == [
        ("example.com/fpga", 4, 3)
    ]


def test_overcommit_is_reported_not_invented() -> None:
    out = run([pod("a", gpus=6), pod("b", gpus=4)])
    assert out.record is not None
    assert len(holdings(out.record)["b"]) == 2
    assert [f.reason for f in out.findings] == ["InsufficientGpus"]


def test_usage_since_comes_from_the_pod_and_survives_reconciles() -> None:
    p = pod("p", gpus=1, start="2026-11-28T10:00:00Z")
    rec = run([p]).record
    assert rec is not None
    assert rec.gpus[0].status.usage["uid-default-p"].since == 1795860000.0
    rec2 = run([p], roundtrip(rec), now=NOW + 500).record
    assert rec2 is not None and rec2.to_dict() == roundtrip(rec).to_dict()


def test_reference_written_holder_without_uid_is_adopted() -> None:
    base = run([]).record
    assert base is not None
    raw = base.to_dict()
    raw["gpus"][5]["status"]["allocatedBy"] = {
        "namespace": "default",
        "pod": "old",
        "container": "main",
    }
    stored = NodeTopology.from_dict(raw)
    rec = run([pod("old", gpus=1)], stored).record
    assert rec is not None and holdings(rec) == {"old": [5]}
    assert rec.gpus[5].status.holders[0].pod_uid == "uid-default-old"


def test_same_name_new_pod_is_a_new_holder() -> None:
    stored = roundtrip(run([pod("p", gpus=1, uid="one")]).record)
    rec = run(
        [pod("blocker", gpus=1, created="2026-11-28T07:00:00Z"), pod("p", gpus=1, uid="two")],
        stored,
    ).record
    assert rec is not None
    # "two" is not "one": the old assignment is released and picks are made afresh by age.
    assert holdings(rec) == {"blocker": [0], "p": [1]}
