"""nvidia-smi in a Run:ai/KAI fractional pod: no plugin allocated it anything, so no
visible-devices variable; it finds its GPU in the record through its pod UID (``FGO_POD_UID``
from the chart's MutatingAdmissionPolicy, or Run:ai's ``POD_UUID``) and sees its memory share."""

from __future__ import annotations

from fgo_common.topology import (
    HOLDER_RESERVATION,
    GpuStatus,
    Holder,
    NodeTopology,
    PodUsage,
    UtilizationRange,
)
from fgo_nvidia_smi.settings import Settings
from fgo_nvidia_smi.state import select_by_pod
from smi_fixtures import hgx_node
from smi_testlib import Runner

MEMORY = "--query-gpu=index,uuid,memory.total,memory.reserved"
CSV = "--format=csv,noheader,nounits"


def shared_node(*, share_mib: int = 40779) -> NodeTopology:
    """hgx_node with GPU 3 held by a reservation pod and shared by two fractional pods."""
    node = hgx_node()
    gpu = node.gpus[3]
    gpu.status = GpuStatus(
        holders=[
            Holder("runai-reservation", "reserve-3", "c", pod_uid="uid-r", kind=HOLDER_RESERVATION)
        ],
        usage={
            "uid-r": PodUsage(fb_used_mib=0, namespace="runai-reservation", pod="reserve-3"),
            "uid-half": PodUsage(
                UtilizationRange(40, 40), fb_used_mib=share_mib, namespace="team", pod="frac-a"
            ),
            "uid-quarter": PodUsage(
                UtilizationRange(10, 10), fb_used_mib=20389, namespace="team", pod="frac-b"
            ),
        },
    )
    return node


def test_select_by_pod_finds_the_shared_gpu_and_its_share() -> None:
    node = shared_node()
    selection, shares = select_by_pod("uid-half", node)
    assert selection.whole == frozenset({3}) and selection.migs == {}
    assert shares == {3: 40779 / 81559}
    # A whole-GPU holder (device plugin) has no share; an unknown UID sees nothing.
    selection, shares = select_by_pod("uid-train", node)
    assert selection.whole == frozenset({1, 2}) and shares == {}
    assert select_by_pod("uid-nobody", node)[0].whole == frozenset()


def test_select_by_pod_on_a_mig_device() -> None:
    selection, shares = select_by_pod("uid-infer", hgx_node())
    assert selection.whole == frozenset() and shares == {}
    assert list(selection.migs) == [7] and len(selection.migs[7]) == 1


def test_fractional_pod_sees_only_its_gpu_with_its_share(smi: Runner) -> None:
    node = shared_node()
    uuid = node.gpus[3].id
    out = smi(MEMORY, CSV, node=node, FGO_POD_UID="uid-half").out
    # Enumerated from 0 inside the container; total = the pod's 40779 MiB of 81559, reserved
    # scaled by the same share (480 x 0.49999 = 239).
    assert out == f"0, {uuid}, 40779, 239\n"
    quarter = smi(MEMORY, CSV, node=node, FGO_POD_UID="uid-quarter").out
    assert quarter == f"0, {uuid}, 20389, 119\n"
    # Run:ai's own name for the variable (what the reference tool read).
    assert smi(MEMORY, CSV, node=node, POD_UUID="uid-half").out == out
    # The table shows the share and the GPU's processes (the reservation pod is none).
    table = smi(node=node, FGO_POD_UID="uid-half", HOSTNAME="frac-a").out
    assert "/  40779MiB" in table
    assert table.count(" C ") == 2


def test_the_environment_wins_over_the_record(smi: Runner) -> None:
    node = shared_node()
    uuid3 = node.gpus[3].id
    # KAI's binder injects NVIDIA_VISIBLE_DEVICES and RUNAI_NUM_OF_GPUS / GPU_PORTION: both win.
    out = smi(
        MEMORY,
        CSV,
        node=node,
        FGO_POD_UID="uid-quarter",
        NVIDIA_VISIBLE_DEVICES=uuid3,
        GPU_PORTION="0.5",
    ).out
    assert out == f"0, {uuid3}, 40779, 240\n"
    # A whole-GPU value in the environment means no scaling, not the record's share.
    whole = smi(MEMORY, CSV, node=node, FGO_POD_UID="uid-quarter", RUNAI_NUM_OF_GPUS="1").out
    assert whole == f"0, {uuid3}, 81559, 480\n"


def test_a_pod_the_record_does_not_name_sees_no_gpu(smi: Runner) -> None:
    result = smi("-L", node=shared_node(), FGO_POD_UID="uid-unknown")
    assert (result.code, result.out) == (6, "No devices were found\n")
    # Without a pod UID and without a visible-devices variable: every GPU, as before.
    assert smi("-L", node=shared_node()).out.count("GPU ") == 8


def test_a_share_the_record_cannot_give_leaves_the_gpu_whole(smi: Runner) -> None:
    # fbUsed 0 (or the GPU's whole memory) says nothing about the share: no scaling.
    for fb in (0, 81559):
        node = shared_node(share_mib=fb)
        assert smi(MEMORY, CSV, node=node, FGO_POD_UID="uid-half").out.split(", ")[2] == "81559"


def test_settings_read_the_pod_uid_and_both_share_names() -> None:
    s = Settings.from_env({"FGO_POD_UID": " u1 ", "POD_UUID": "u2", "GPU_PORTION": "0.25"})
    assert (s.pod_uid, s.gpu_fraction, s.fraction_from_env) == ("u1", 0.25, True)
    s = Settings.from_env({"POD_UUID": "u2", "RUNAI_NUM_OF_GPUS": "0.5", "GPU_PORTION": "0.25"})
    assert (s.pod_uid, s.gpu_fraction) == ("u2", 0.5)
    s = Settings.from_env({"RUNAI_NUM_OF_GPUS": "abc"})
    assert (s.pod_uid, s.gpu_fraction, s.fraction_from_env) == ("", 1.0, False)
