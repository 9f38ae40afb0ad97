"""Golden transcripts of MIG-enabled output, for layouts built the way the status-updater builds
them (pool config -> ``fgo_common.migstate`` -> record), so GI ids, placements and MIG UUIDs are
the ones every other service shows.

The reference capture has no MIG-enabled GPU (``mig_lgi.txt``: "No MIG-enabled devices found"),
so these transcripts are ours: their layout follows NVIDIA's documented formats (checked here
against the capture's frame lines where one exists) and the values are pinned by the capture's
time stamp. After an intended change, regenerate with ``FGO_UPDATE_GOLDEN=1`` and review the
diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import Holder, NodeTopology, PodUsage, UtilizationRange
from smi_testlib import REFERENCE, Runner

GOLDEN = Path(__file__).parent / "golden_mig"


def balanced_node() -> NodeTopology:
    """2 x H100: GPU 0 all-balanced with a pod on its 3g.40gb, GPU 1 in all-1g.10gb (custom
    config selecting GPUs by index, as mig-parted does)."""
    config = parse_cluster_config(
        {
            "migStrategy": "mixed",
            "migConfigs": {
                "split": [
                    {
                        "devices": [0],
                        "mig-enabled": True,
                        "mig-devices": {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},
                    },
                    {"devices": [1], "mig-enabled": True, "mig-devices": {"1g.10gb": 7}},
                ]
            },
            "nodePools": {
                "p": {"gpus": [{"type": "H100", "count": 2}], "mig": {"config": "split"}}
            },
        }
    )
    node = build_node_topology("mig-node", config.pools["p"], config, kwok=False)
    device = next(d for d in node.gpus[0].mig_devices if d.profile == "3g.40gb")
    device.holders.append(Holder("team-a", "train-0", "main", "uid-train-0"))
    device.usage["uid-train-0"] = PodUsage(
        UtilizationRange(80, 80), 20_000, namespace="team-a", pod="train-0", since=1_795_700_000
    )
    return node


CASES = {
    "smi_L.txt": ("-L",),
    "mig_lgi.txt": ("mig", "-lgi"),
    "mig_lci.txt": ("mig", "-lci"),
    "smi.txt": (),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_mig_enabled_output_matches_golden(smi: Runner, name: str) -> None:
    result = smi(*CASES[name], node=balanced_node())
    assert result.code == 0, result.err
    path = GOLDEN / name
    if os.environ.get("FGO_UPDATE_GOLDEN"):
        path.write_text(result.out)
    assert result.out == path.read_text()


def test_golden_layout_is_the_real_one() -> None:
    """The facts the transcripts rest on: mig-parted's balanced H100 layout, GI ids as a real
    H100 numbers them, and one MIG UUID per instance everywhere."""
    node = balanced_node()
    placed = sorted((d.profile, d.gi_id, d.placement_start) for d in node.gpus[0].mig_devices)
    assert placed == [("1g.10gb", 7, 0), ("1g.10gb", 8, 1), ("2g.20gb", 4, 2), ("3g.40gb", 1, 4)]
    listing = (GOLDEN / "smi_L.txt").read_text()
    for gpu in node.gpus:
        assert f"(UUID: {gpu.id})" in listing
        for device in gpu.mig_devices:
            assert f"(UUID: {device.uuid})" in listing


def test_table_frame_matches_the_capture() -> None:
    """The default table keeps the capture's frame: same width, same header block."""
    ours = (GOLDEN / "smi.txt").read_text().splitlines()
    capture = (REFERENCE / "smi.txt").read_text().splitlines()[1:-1]
    assert {len(line) for line in ours if line.startswith(("|", "+"))} <= {
        len(line) for line in capture if line.startswith(("|", "+"))
    }
    assert ours[1:8] == capture[1:8]  # banner and column headers
    assert "| MIG devices:" in "\n".join(ours)
