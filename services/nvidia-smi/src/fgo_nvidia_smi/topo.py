"""``nvidia-smi topo -m``: the GPU-to-GPU connection matrix with CPU and NUMA affinity.

Layout (tabs, the underline escape codes the driver always writes, the legend) follows
../shared/reference/nvidia-smi-h100/topo.txt. Links: products with NVLink are fully connected
through NVSwitch (``NV<links>``); otherwise PCIe paths by NUMA node: ``SYS`` across sockets, ``PIX``
for the two GPUs behind one PCIe switch, ``NODE`` between switches of one socket.
"""

from __future__ import annotations

import os

from fgo_nvidia_smi.state import GpuView, Snapshot

LEGEND = """
Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks
"""  # noqa: E501 - the driver's own line lengths


def link(a: GpuView, b: GpuView) -> str:
    if a.record.index == b.record.index:
        return " X "
    links = min(a.profile.nvlink_links, b.profile.nvlink_links)
    if links > 0 and a.profile.key == b.profile.key:
        return f"NV{links}"
    if a.record.numa_node != b.record.numa_node:
        return "SYS"
    if a.record.index // 2 == b.record.index // 2:
        return "PIX"
    return "NODE"


def cpu_affinity(numa: int, numa_nodes: int, cpus: int) -> str:
    per = max(1, cpus // max(1, numa_nodes))
    first = min(numa * per, cpus - 1)
    last = min(first + per - 1, cpus - 1)
    return str(first) if first == last else f"{first}-{last}"


def render_topo(snapshot: Snapshot) -> str:
    gpus = snapshot.gpus
    numa_nodes = max((g.numa_node for g in snapshot.node.gpus), default=0) + 1
    cpus = os.cpu_count() or 1
    names = "\t".join(f"GPU{g.index}" for g in gpus)
    lines = [f"\t\x1b[4m{names}\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m"]
    for a in gpus:
        cells = "\t".join(link(a, b) for b in gpus)
        affinity = cpu_affinity(a.record.numa_node, numa_nodes, cpus)
        lines.append(f"GPU{a.index}\t{cells}\t{affinity}\t{a.record.numa_node}\t\tN/A")
    return "\n".join(lines) + "\n" + LEGEND
