"""Deterministic GPU identity: UUIDs and PCI bus ids derived from (node, index).

The UUID scheme is the reference implementation's (UUID v5 with the nil namespace over
"<node>-<index>"), so a node keeps the same GPU UUIDs when it moves from the reference to us.
"""

from __future__ import annotations

import uuid

_NIL = uuid.UUID(int=0)

# Bus numbers of an 8-GPU HGX board as real H100/A100 servers enumerate them (two PCIe switches
# per CPU socket, two GPUs per switch); see ../shared/reference/nvidia-smi-h100/topo.txt and the
# upstream h100 profile. Nodes with more GPUs continue on further buses.
_HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)


def gpu_uuid(node_name: str, index: int) -> str:
    """``GPU-<uuid5>`` for GPU ``index`` of ``node_name`` (stable across re-creation)."""
    return "GPU-" + str(uuid.uuid5(_NIL, f"{node_name}-{index}"))


def mig_uuid(parent_uuid: str, gi_id: int, ci_id: int) -> str:
    """``MIG-<uuid5>`` for a MIG device, derived from its parent GPU and instance ids."""
    return "MIG-" + str(uuid.uuid5(_NIL, f"{parent_uuid}/gi{gi_id}/ci{ci_id}"))


def pci_bus_id(index: int) -> str:
    """NVML-style bus id (``00000000:18:00.0``) of GPU ``index`` on a simulated board."""
    # Beyond a standard board, keep bus numbers unique and valid.
    bus = _HGX_BUSES[index] if index < len(_HGX_BUSES) else 0x01 + index
    return f"00000000:{bus:02X}:00.0"


def numa_node(index: int, gpu_count: int, numa_nodes: int = 2) -> int:
    """NUMA node of GPU ``index``: GPUs split evenly across sockets in index order."""
    if gpu_count <= 1 or numa_nodes <= 1:
        return 0
    per_node = -(-gpu_count // numa_nodes)
    return min(index // per_node, numa_nodes - 1)
