"""Build the GPU part of a node's topology record from its pool config.

Identity is a function of (node, index) only, so rebuilding a node's record (after a pool change,
a restart or a re-label) gives every surviving GPU the same UUID, bus id and NUMA node.
"""

from __future__ import annotations

from fgo_common import migstate
from fgo_common.computedomain import clique_label_value, clique_of_node
from fgo_common.config import ClusterConfig, DeviceOverride, PoolConfig
from fgo_common.identity import gpu_uuid, numa_node, pci_bus_id
from fgo_common.topology import GpuRecord, NodeTopology


def numa_layout(pool: PoolConfig) -> list[int]:
    """NUMA node of each GPU of ``pool`` (explicit ``numa.gpusPerZone`` or an even split)."""
    count = pool.gpu_count
    if pool.numa and pool.numa.gpus_per_zone:
        return [zone for zone, n in enumerate(pool.numa.gpus_per_zone) for _ in range(n)]
    if pool.numa:
        # An explicit zone count: an even split, the remainder to the lowest zones (the
        # reference's NodeResourceTopology layout; no zone is left empty).
        base, extra = divmod(count, pool.numa.zones)
        sizes = [base + (1 if z < extra else 0) for z in range(pool.numa.zones)]
        return [zone for zone, n in enumerate(sizes) for _ in range(n)]
    zones = 2 if count >= 4 else 1
    return [numa_node(i, count, zones) for i in range(count)]


def build_gpus(node_name: str, pool: PoolConfig) -> list[GpuRecord]:
    numa = numa_layout(pool)
    gpus = []
    for index, profile in enumerate(pool.gpu_profiles()):
        # The profile form may set a GPU's bus id, minor number and (from its PCIe topology)
        # NUMA node; the UUID stays a function of (node, index).
        device = pool.devices[index] if index < len(pool.devices) else DeviceOverride()
        gpus.append(
            GpuRecord(
                id=gpu_uuid(node_name, index),
                index=index,
                product=profile.name,
                memory_mib=profile.memory_mib,
                profile=profile.key,
                bus_id=device.bus_id or pci_bus_id(index),
                numa_node=numa[index] if device.numa_node is None else device.numa_node,
                minor=-1 if device.minor is None else device.minor,
            )
        )
    return gpus


def build_node_topology(
    node_name: str, pool: PoolConfig, config: ClusterConfig, *, kwok: bool
) -> NodeTopology:
    """A fresh record (no allocations) for ``node_name`` in ``pool``, with the pool's static
    MIG layout (``mig.config``) applied; the config parser has already checked it fits."""
    gpus = build_gpus(node_name, pool)
    if pool.mig_config:
        layouts = migstate.layouts_for(pool.mig_config, pool.gpu_profiles(), config.mig_configs)
        migstate.apply_layouts(gpus, layouts)
    first = pool.groups[0].profile
    clique = ""
    if pool.nvlink_domain is not None:
        domain = pool.nvlink_domain
        clique = clique_label_value(
            domain.cluster_uuid, clique_of_node(node_name, domain.clique_size)
        )
    return NodeTopology(
        node_name=node_name,
        pool=pool.name,
        gpu_product=first.name,
        gpu_memory_mib=first.memory_mib,
        profile=first.key,
        driver_version=pool.effective_driver_version,
        cuda_version=pool.effective_cuda_version,
        mig_strategy=config.mig_strategy,
        other_devices=list(pool.other_devices),
        gpus=gpus,
        kwok=kwok,
        mig_dynamic=pool.mig_dynamic,
        nvlink_clique=clique,
    )
