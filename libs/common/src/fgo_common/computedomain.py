"""ComputeDomains (NVIDIA's multi-node NVLink / IMEX API): the names NVIDIA's DRA driver uses
and what an IMEX channel device looks like, shared by the compute-domain-controller (which
publishes channels for KWOK nodes) and any node plugin that publishes them for real nodes.

Names follow NVIDIA's driver (api/nvidia.com/resource/v1beta1, driver compute-domain.nvidia.com)
where it defines them and the reference implementation where only it does (finalizer, template
labels); docs/computedomains.md lists which is which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

GROUP = "resource.nvidia.com"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ComputeDomain"
PLURAL = "computedomains"

DRIVER = "compute-domain.nvidia.com"
CHANNEL_DEVICE_CLASS = "compute-domain-default-channel.nvidia.com"
DAEMON_DEVICE_CLASS = "compute-domain-daemon.nvidia.com"
CHANNEL_CONFIG_KIND = "ComputeDomainChannelConfig"
DAEMON_CONFIG_KIND = "ComputeDomainDaemonConfig"
CHANNEL_REQUEST = "channel"  # the request name in the workload template (reference)

# GPU feature discovery's label for the NVLink partition a node's GPUs are in:
# "<cluster uuid>.<clique id>" (NVML's fabric info), absent without multi-node NVLink.
CLIQUE_LABEL = "nvidia.com/gpu.clique"

# The reference implementation's vocabulary (NVIDIA's controller uses its own DaemonSets).
# The finalizer is on the ComputeDomain only (see workload_template for why not the template).
FINALIZER = "computedomain.resource.nvidia.com/finalizer"
TEMPLATE_DOMAIN_LABEL = "resource.nvidia.com/computeDomain"
TEMPLATE_TARGET_LABEL = "resource.nvidia.com/computeDomainTarget"
TEMPLATE_TARGET_WORKLOAD = "workload"
CLAIM_DOMAIN_LABEL = "nvidia.com/computeDomain"

ALLOCATION_MODES = ("Single", "All")
STATUS_READY = "Ready"
STATUS_NOT_READY = "NotReady"
# The kubelet plugin enumerates this many channels (NVIDIA's maximum per IMEX domain); only
# channel 0 is published, as NVIDIA and the reference do.
MAX_CHANNELS = 2048

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def channel_device(channel_id: int = 0) -> Obj:
    """One IMEX channel as a ResourceSlice device of driver compute-domain.nvidia.com
    (attributes ``type=channel`` and ``id``, which the default-channel DeviceClass selects)."""
    return {
        "name": f"channel-{channel_id}",
        "attributes": {"type": {"string": "channel"}, "id": {"int": channel_id}},
    }


def kwok_channel_slice_base(node_name: str) -> str:
    """``kwok-<node>-compute-domain-channel``: the reference's name for a KWOK node's slice."""
    return f"kwok-{node_name}-compute-domain-channel"


def clique_label_value(cluster_uuid: str, clique_id: int) -> str:
    return f"{cluster_uuid}.{clique_id}"


_TRAILING_NUMBER = re.compile(r"(\d+)$")


def clique_of_node(node_name: str, clique_size: int) -> int:
    """The NVLink clique of a node of a pool with ``nvlinkDomain.cliqueSize``: nodes are
    grouped by the number their name ends with (1..size -> clique 0, size+1..2*size -> 1, ...;
    0 counts as 1), so a node's clique depends on its name alone and never moves when other
    nodes come or go. A name without a trailing number is in clique 0."""
    found = _TRAILING_NUMBER.search(node_name)
    ordinal = int(found.group(1)) if found else 1
    return (max(ordinal, 1) - 1) // clique_size


class SpecError(ValueError):
    """A ComputeDomain whose spec the controller cannot act on (the message names the field)."""


@dataclass(frozen=True, slots=True)
class ComputeDomainSpec:
    num_nodes: int
    template_name: str
    allocation_mode: str


def parse_spec(cd: Obj) -> ComputeDomainSpec:
    """The fields the controller acts on. The CRD refuses all of these already; the check is
    repeated because a CRD installed by someone else (an older NVIDIA chart) may be laxer."""
    spec = cd.get("spec")
    if not isinstance(spec, dict):
        raise SpecError("spec: missing")
    num_nodes = spec.get("numNodes")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int):
        raise SpecError(f"spec.numNodes: {num_nodes!r} is not an integer")
    if num_nodes < 0:
        raise SpecError(f"spec.numNodes: {num_nodes} is negative (must be zero or greater)")
    channel = spec.get("channel")
    if not isinstance(channel, dict):
        raise SpecError("spec.channel: missing")
    template = channel.get("resourceClaimTemplate")
    name = template.get("name") if isinstance(template, dict) else None
    if not isinstance(name, str) or not name:
        raise SpecError("spec.channel.resourceClaimTemplate.name: missing")
    if not _DNS_SUBDOMAIN.match(name):
        raise SpecError(
            f"spec.channel.resourceClaimTemplate.name: {name!r} is not a valid object name"
        )
    mode = channel.get("allocationMode") or "Single"
    if mode not in ALLOCATION_MODES:
        raise SpecError(
            f"spec.channel.allocationMode: {mode!r} is not one of {', '.join(ALLOCATION_MODES)}"
        )
    return ComputeDomainSpec(num_nodes, name, str(mode))


def channel_config(domain_id: str, allocation_mode: str) -> Obj:
    """The opaque parameters of driver compute-domain.nvidia.com in the workload's claims."""
    return {
        "apiVersion": API_VERSION,
        "kind": CHANNEL_CONFIG_KIND,
        "domainID": domain_id,
        "allocationMode": allocation_mode,
    }


def workload_template(cd: Obj, spec: ComputeDomainSpec, api_version: str) -> Obj:
    """The ResourceClaimTemplate of a ComputeDomain's workload: one request ``channel`` for
    exactly one device of the default-channel class, with the channel config naming the
    domain; controlled by the ComputeDomain (garbage-collected with it).

    No finalizer on it (the reference puts one): kube-apiserver 1.36 refuses every metadata
    update of a template whose opaque parameters were sent with other JSON spacing than Go's
    ("spec: field is immutable", the raw parameter bytes differ after the patch), so it could
    never be taken off again. The ComputeDomain's finalizer keeps the deletion order."""
    meta = cd["metadata"]
    name = str(meta["name"])
    return {
        "apiVersion": api_version,
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": spec.template_name,
            "namespace": meta["namespace"],
            "labels": {
                TEMPLATE_DOMAIN_LABEL: name,
                TEMPLATE_TARGET_LABEL: TEMPLATE_TARGET_WORKLOAD,
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": name,
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "metadata": {"labels": {CLAIM_DOMAIN_LABEL: name}},
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": CHANNEL_REQUEST,
                            "exactly": {
                                "deviceClassName": CHANNEL_DEVICE_CLASS,
                                "allocationMode": "ExactCount",
                                "count": 1,
                            },
                        }
                    ],
                    "config": [
                        {
                            "requests": [CHANNEL_REQUEST],
                            "opaque": {
                                "driver": DRIVER,
                                "parameters": channel_config(
                                    str(meta["uid"]), spec.allocation_mode
                                ),
                            },
                        }
                    ],
                }
            },
        },
    }


def claim_domain_id(claim: Obj) -> str:
    """The ``domainID`` of the channel config in a claim (its spec's, else its allocation's)."""
    configs = [
        *(((claim.get("spec") or {}).get("devices") or {}).get("config") or []),
        *(
            (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get(
                "config"
            )
            or []
        ),
    ]
    for entry in configs:
        opaque = (entry or {}).get("opaque") or {}
        params = opaque.get("parameters") or {}
        if opaque.get("driver") == DRIVER and params.get("kind") == CHANNEL_CONFIG_KIND:
            return str(params.get("domainID") or "")
    return ""


def claim_channel_nodes(claim: Obj) -> set[str]:
    """Nodes (pools) whose channels an allocated claim holds."""
    results = (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get(
        "results"
    ) or []
    return {str(r.get("pool")) for r in results if r.get("driver") == DRIVER and r.get("pool")}


def node_address(node: Obj) -> str:
    """The Node's InternalIP (else its first address, else empty): NVIDIA's ``ipAddress`` is
    the IMEX daemon's pod IP, which a simulated node without daemons does not have."""
    addresses = (node.get("status") or {}).get("addresses") or []
    for kind in ("InternalIP", "ExternalIP"):
        for entry in addresses:
            if entry.get("type") == kind and entry.get("address"):
                return str(entry["address"])
    return ""


def status_nodes(
    joined: set[str], nodes: dict[str, Obj], previous: list[Obj] | None = None
) -> list[Obj]:
    """``status.nodes`` for the nodes in ``joined`` that still exist, sorted by name. Each keeps
    the ``index`` it had; a new node gets the lowest index free in its clique, so (cliqueID,
    index) stays unique and stable as NVIDIA's API requires."""
    before = {str(n.get("name")): n for n in previous or [] if isinstance(n, dict)}
    present = sorted(n for n in joined if n in nodes)
    clique_of = {
        n: str(((nodes[n].get("metadata") or {}).get("labels") or {}).get(CLIQUE_LABEL, ""))
        for n in present
    }
    used: dict[str, set[int]] = {}
    index_of: dict[str, int] = {}
    for name in present:
        old = before.get(name)
        if old is not None and str(old.get("cliqueID", "")) == clique_of[name]:
            index = old.get("index")
            if isinstance(index, int) and index not in used.setdefault(clique_of[name], set()):
                index_of[name] = index
                used[clique_of[name]].add(index)
    for name in present:
        if name in index_of:
            continue
        taken = used.setdefault(clique_of[name], set())
        index = next(i for i in range(len(taken) + 1) if i not in taken)
        index_of[name] = index
        taken.add(index)
    return [
        {
            "name": name,
            "ipAddress": node_address(nodes[name]),
            "cliqueID": clique_of[name],
            "index": index_of[name],
            "status": STATUS_READY,
        }
        for name in present
    ]


def overall_status(num_nodes: int, joined_nodes: int) -> str:
    """Ready once ``numNodes`` nodes hold a channel (at once for numNodes 0), as the
    reference; NVIDIA counts ready IMEX daemons, which on a simulated node are its channel."""
    return STATUS_READY if joined_nodes >= num_nodes else STATUS_NOT_READY


def device_class_selector(device_type: str) -> str:
    """NVIDIA's CEL for the compute-domain DeviceClasses (the default channel is channel 0)."""
    attrs = f"device.attributes['{DRIVER}']"
    cel = f"device.driver == '{DRIVER}' && {attrs}.type == '{device_type}'"
    return f"{cel} && {attrs}.id == 0" if device_type == "channel" else cel


def device_classes(api_version: str = "resource.k8s.io/v1") -> list[Obj]:
    """``compute-domain-daemon.nvidia.com`` and ``compute-domain-default-channel.nvidia.com``
    as NVIDIA's chart installs them (the chart renders the same; a chart test compares)."""
    return [
        {
            "apiVersion": api_version,
            "kind": "DeviceClass",
            "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": device_class_selector(kind)}}]},
        }
        for name, kind in ((DAEMON_DEVICE_CLASS, "daemon"), (CHANNEL_DEVICE_CLASS, "channel"))
    ]
