"""GetPreferredAllocation's choice (pure logic): NUMA locality, best fit, must-include."""

from __future__ import annotations

from dp_helpers import topology
from fgo_device_plugin.preferred import preferred_allocation
from fgo_device_plugin.resources import PluginDevice, node_resources

RECORD = topology(8)  # GPUs 0-3 on NUMA 0, 4-7 on NUMA 1
DEVICES = {d.id: d for d in node_resources(RECORD)["nvidia.com/gpu"].devices}
U = [g.id for g in RECORD.gpus]


def pick(available: list[int], size: int, must: list[int] = ()) -> list[int]:  # type: ignore[assignment]
    chosen = preferred_allocation(DEVICES, [U[i] for i in available], [U[i] for i in must], size)
    return [U.index(c) for c in chosen]


def test_all_free_picks_lowest_indices_on_one_numa_node() -> None:
    assert pick(list(range(8)), 2) == [0, 1]
    assert pick(list(range(8)), 4) == [0, 1, 2, 3]


def test_best_fit_numa_node_keeps_a_whole_one_free() -> None:
    # NUMA 0 has 2 free, NUMA 1 has 4: a 2-GPU request goes to NUMA 0.
    assert pick([2, 3, 4, 5, 6, 7], 2) == [2, 3]
    # A 3-GPU request only fits NUMA 1.
    assert pick([2, 3, 4, 5, 6, 7], 3) == [4, 5, 6]


def test_spanning_numa_nodes_uses_as_few_as_possible() -> None:
    assert pick([0, 4, 5, 6], 4) == [4, 5, 6, 0]
    assert sorted(pick(list(range(8)), 6)) == [0, 1, 2, 3, 4, 5]


def test_must_include_first_then_their_numa_node() -> None:
    assert pick(list(range(8)), 2, must=[5]) == [5, 4]
    assert pick(list(range(8)), 3, must=[6, 1]) == [6, 1, 4]


def test_never_more_than_size_nor_unavailable() -> None:
    assert pick([1, 2], 4) == [1, 2]
    assert pick(list(range(8)), 1, must=[3, 4]) == [3]
    chosen = pick([0, 5, 6], 2)
    assert set(chosen) <= {0, 5, 6}
    assert chosen == [5, 6]


def test_unknown_ids_come_last_in_kubelet_order() -> None:
    chosen = preferred_allocation(DEVICES, ["x-1", U[7], "x-0"], [], 3)
    assert chosen == [U[7], "x-1", "x-0"]


def test_devices_without_numa_in_rank_order() -> None:
    devices = {f"d{i}": PluginDevice(f"d{i}", True, None, (i, 0)) for i in range(4)}
    assert preferred_allocation(devices, ["d3", "d1", "d2"], [], 2) == ["d1", "d2"]
