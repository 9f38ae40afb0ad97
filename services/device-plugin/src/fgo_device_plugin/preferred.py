"""GetPreferredAllocation: which of the available devices the kubelet should pick.

Devices that share a NUMA node talk to the same CPU socket and (on HGX boards) the same PCIe
switches, so a multi-GPU container is best kept on one NUMA node. The choice, in order:

1. every must-include device (the kubelet's own choice, e.g. for init containers);
2. more devices from the NUMA nodes those already occupy;
3. if one NUMA node can supply all that is still needed, the one with the fewest free devices
   (best fit: keeps whole NUMA nodes free for later big requests), lowest rank first;
4. otherwise whole NUMA nodes, largest first, so the request spans as few as possible;
5. within a NUMA node, lowest rank (GPU index, then MIG placement) first.

Devices without NUMA information form one group. IDs we do not know are used last, in the
kubelet's order; the answer never holds more than ``size`` devices nor anything unavailable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fgo_device_plugin.resources import PluginDevice

_NO_NUMA = -1


def preferred_allocation(
    devices: Mapping[str, PluginDevice],
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> list[str]:
    chosen: list[str] = []
    seen: set[str] = set()
    for device_id in must_include:
        if device_id not in seen and len(chosen) < size:
            chosen.append(device_id)
            seen.add(device_id)
    if len(chosen) >= size:
        return chosen

    def numa(device_id: str) -> int:
        device = devices.get(device_id)
        return _NO_NUMA if device is None or device.numa_node is None else device.numa_node

    def rank(device_id: str) -> tuple[int, int]:
        return devices[device_id].rank

    groups: dict[int, list[str]] = {}
    unknown: list[str] = []
    for device_id in available:
        if device_id not in seen:
            seen.add(device_id)
            if device_id in devices:
                groups.setdefault(numa(device_id), []).append(device_id)
            else:
                unknown.append(device_id)
    for members in groups.values():
        members.sort(key=rank)

    def take(group: int) -> None:
        members = groups.pop(group, [])
        chosen.extend(members[: size - len(chosen)])

    # 2. Stay on the NUMA nodes the must-include devices already use, in their order.
    for group in dict.fromkeys(numa(d) for d in chosen):
        if len(chosen) >= size:
            return chosen
        take(group)

    while len(chosen) < size and groups:
        need = size - len(chosen)
        fitting = [g for g, members in groups.items() if len(members) >= need]
        if fitting:
            # 3. Best fit, then the group holding the lowest-ranked device.
            best = min(fitting, key=lambda g: (len(groups[g]), rank(groups[g][0]), g))
        else:
            # 4. Largest group first; ties by lowest rank.
            best = min(groups, key=lambda g: (-len(groups[g]), rank(groups[g][0]), g))
        take(best)
    chosen.extend(unknown[: max(0, size - len(chosen))])
    return chosen
