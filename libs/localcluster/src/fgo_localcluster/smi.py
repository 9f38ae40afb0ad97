"""``fgo nvidia-smi``: the packaged nvidia-smi, fed exactly what a GPU container gets.

In a GPU pod, nvidia-smi reads three inputs that the node agent injects (docs/nvidia-smi.md):

* the node's record: ``topology.json`` in ``FGO_STATE_DIR``, the device/DRA plugin's copy of
  ConfigMap ``<TOPOLOGY_CM_NAME>-<node>`` in the operator's namespace;
* the visible-devices variable (``VISIBLE_DEVICES_ENV_NAME``, by default
  ``NVIDIA_VISIBLE_DEVICES``): from the device plugin's Allocate, the GPUs the kubelet gave the
  container, which the status-updater records as the pod's holders (on KWOK nodes it picks them
  itself); from the DRA plugin's CDI spec, every GPU/MIG UUID of the claim (a container
  with several claims ends up with the last claim's list);
* ``FGO_SEED``, the chart's ``telemetrySeed``;
* in a Run:ai/KAI fractional pod (no plugin allocated it anything), ``FGO_POD_UID`` from the
  chart's MutatingAdmissionPolicy instead of a visible-devices list: nvidia-smi finds the pod's
  GPU and memory share in the record by it.

KWOK nodes run no containers, so ``kubectl exec ... nvidia-smi`` cannot work there. This module
reads the same three inputs from the API (the record, the pod, its ResourceClaims, the chart's
workloads for the settings) and runs the workspace's ``nvidia-smi`` (the fgo-nvidia-smi
package's entry point, the code the images bundle) locally with them. It works the same for pods
on real nodes. The one difference: inside a pod, the process row of the pod itself is named
after the container's command (``/proc/1/cmdline``); here every process is ``python``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgo_common import dradevices
from fgo_common.names import DRA_NAMES
from fgo_common.nodestate import STATE_DIR_ENV, write_node_state
from fgo_common.topology import (
    HOLDER_DEVICE_PLUGIN,
    TOPOLOGY_DATA_KEY,
    Holder,
    NodeTopology,
    node_topology_configmap_name,
)

Obj = dict[str, Any]

SEED_ENV = "FGO_SEED"
DEFAULT_VISIBLE_ENV = "NVIDIA_VISIBLE_DEVICES"
# Everything nvidia-smi reads from its environment (services/nvidia-smi settings.py): none of
# the caller's values may leak into what the pod would see.
SMI_INPUT_ENVS = (
    "FGO_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    STATE_DIR_ENV,
    SEED_ENV,
    "RUNAI_NUM_OF_GPUS",
    "GPU_PORTION",
    "FGO_POD_UID",
    "POD_UUID",
    "HOSTNAME",
)
# Set in the pod spec by Run:ai / KAI for fractional pods; nvidia-smi scales the memory by it.
POD_SPEC_ENVS = ("RUNAI_NUM_OF_GPUS", "GPU_PORTION")
# How a fractional pod names itself to nvidia-smi (docs/runai.md): FGO_POD_UID from the
# chart's MutatingAdmissionPolicy (downward API metadata.uid), or Run:ai's POD_UUID.
POD_UID_ENVS = ("FGO_POD_UID", "POD_UUID")
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"


class SmiError(RuntimeError):
    """The pod or node cannot be shown (not scheduled, no record, no GPU); says why."""


@dataclass(frozen=True)
class OperatorSettings:
    """What the chart configured that nvidia-smi's inputs depend on."""

    topology_prefix: str = "topology"
    seed: str = "0"
    plugin_visible_env: str = DEFAULT_VISIBLE_ENV
    dra_visible_env: str = DEFAULT_VISIBLE_ENV
    dra_driver: str = DRA_NAMES.driver


def _literal_env(container: Obj) -> dict[str, str]:
    return {
        str(e["name"]): str(e.get("value", ""))
        for e in container.get("env") or []
        if "valueFrom" not in e and "name" in e
    }


def operator_settings(workloads: Iterable[Obj]) -> OperatorSettings:
    """From the env of the operator's Deployments and DaemonSets (as the chart rendered them)."""
    prefix, seed = "topology", "0"
    plugin_env = dra_env = DEFAULT_VISIBLE_ENV
    for workload in workloads:
        spec = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in spec.get("containers") or []:
            env = _literal_env(container)
            image = str(container.get("image", ""))
            repository = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
            prefix = env.get("TOPOLOGY_CM_NAME") or prefix
            seed = env.get(SEED_ENV) or seed
            if repository == "device-plugin":
                plugin_env = env.get("VISIBLE_DEVICES_ENV_NAME") or plugin_env
            elif repository == "dra-plugin":
                dra_env = env.get("VISIBLE_DEVICES_ENV_NAME") or dra_env
    return OperatorSettings(prefix, seed, plugin_env, dra_env)


def container_name(pod: Obj, wanted: str | None) -> str:
    """``wanted`` if the pod has it, else the one ``kubectl exec`` picks: the default-container
    annotation, else the first container."""
    names = [str(c.get("name", "")) for c in (pod.get("spec") or {}).get("containers") or []]
    meta = pod.get("metadata") or {}
    if wanted is not None:
        if wanted not in names:
            raise SmiError(
                f"pod {meta.get('namespace')}/{meta.get('name')} has no container {wanted!r} "
                f"(it has: {', '.join(names)})"
            )
        return wanted
    annotated = (meta.get("annotations") or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    if annotated in names:
        return str(annotated)
    if not names:
        raise SmiError(f"pod {meta.get('namespace')}/{meta.get('name')} has no containers")
    return names[0]


def plugin_devices(topology: NodeTopology, pod: Obj, container: str) -> list[str]:
    """UUIDs the device plugin's Allocate gave ``container``: the pod's device-plugin holders in
    the record (GPUs and MIG devices), in index order."""
    meta = pod.get("metadata") or {}
    uid, ns, name = meta.get("uid", ""), meta.get("namespace", ""), meta.get("name", "")

    def mine(holder: Holder) -> bool:
        if holder.kind != HOLDER_DEVICE_PLUGIN:
            return False
        # Holders written without a UID (by the reference) are matched by namespace/name.
        same_pod = (
            holder.pod_uid == uid
            if holder.pod_uid
            else (holder.namespace, holder.pod) == (ns, name)
        )
        return same_pod and (not holder.container or holder.container == container)

    out: list[str] = []
    for gpu in sorted(topology.gpus, key=lambda g: g.index):
        if any(mine(h) for h in gpu.status.holders):
            out.append(gpu.id)
        out.extend(m.uuid for m in gpu.mig_devices if any(mine(h) for h in m.holders))
    return out


def container_claims(pod: Obj, container: str) -> list[tuple[str, frozenset[str] | None]]:
    """(ResourceClaim name, requests used or None for all) for each claim ``container`` uses,
    in the container's order; the claim of a DRA-served extended resource comes last."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    generated = {
        str(s.get("name")): s.get("resourceClaimName")
        for s in status.get("resourceClaimStatuses") or []
    }
    by_pod_claim = {
        str(ref.get("name")): ref.get("resourceClaimName") or generated.get(str(ref.get("name")))
        for ref in spec.get("resourceClaims") or []
    }
    target: Obj = next((c for c in spec.get("containers") or [] if c.get("name") == container), {})
    out: list[tuple[str, frozenset[str] | None]] = []
    for used in (target.get("resources") or {}).get("claims") or []:
        claim = by_pod_claim.get(str(used.get("name")))
        if claim:
            request = used.get("request")
            out.append((str(claim), frozenset([str(request)]) if request else None))
    extended = status.get("extendedResourceClaimStatus") or {}
    requests = frozenset(
        str(m.get("requestName"))
        for m in extended.get("requestMappings") or []
        if m.get("containerName") == container
    )
    if extended.get("resourceClaimName") and requests:
        out.append((str(extended["resourceClaimName"]), requests))
    return out


def claim_devices(
    claim: Obj,
    requests: frozenset[str] | None,
    topology: NodeTopology,
    driver: str = DRA_NAMES.driver,
) -> list[str]:
    """The visible-devices list the DRA plugin's CDI spec gives a container using ``requests``
    of ``claim``: every GPU/MIG UUID of the claim on this node (empty if none of those requests
    has a device of ours: then no CDI edit applies)."""
    # Either naming (DEVICE_NAMING of the DRA publishers): gpu-<minor> or gpu-<uuid>.
    uuid_of = {
        d.name: d.uuid
        for options in (dradevices.DeviceOptions(), dradevices.DeviceOptions(naming="reference"))
        for d in dradevices.node_devices(topology, options)
    }
    allocation = (claim.get("status") or {}).get("allocation") or {}
    ours = [
        r
        for r in (allocation.get("devices") or {}).get("results") or []
        if r.get("driver") == driver and r.get("pool") == topology.node_name
    ]
    # A subrequest result is named "<request>/<subrequest>".
    used = [
        r for r in ours if requests is None or str(r.get("request", "")).split("/")[0] in requests
    ]
    if not used:
        return []
    return list(
        dict.fromkeys(uuid_of[str(r["device"])] for r in ours if r.get("device") in uuid_of)
    )


def pod_env(
    pod: Obj,
    container: str,
    topology: NodeTopology,
    claims: dict[str, Obj],
    settings: OperatorSettings,
) -> dict[str, str]:
    """nvidia-smi's environment in ``container`` of ``pod`` (without ``FGO_STATE_DIR``)."""
    env: dict[str, str] = {SEED_ENV: settings.seed}
    spec_container: Obj = next(
        (c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == container),
        {},
    )
    literal = _literal_env(spec_container)
    env.update({k: literal[k] for k in POD_SPEC_ENVS if k in literal})
    lists: dict[str, list[str]] = {}
    devices = plugin_devices(topology, pod, container)
    if devices:
        lists[settings.plugin_visible_env] = devices
    claim_list: list[str] = []
    for name, requests in container_claims(pod, container):
        claim = claims.get(name)
        found = claim_devices(claim, requests, topology, settings.dra_driver) if claim else []
        if found:
            claim_list = found  # each claim's CDI edit sets the whole variable: the last wins
    if claim_list:
        lists.setdefault(settings.dra_visible_env, []).extend(claim_list)
    if not lists:
        uid_env = _pod_uid_env(spec_container, pod)
        if uid_env is not None and shares_gpu(topology, str(uid_env[1])):
            # A fractional pod: no plugin allocated it anything; it finds its GPU by its UID.
            env[uid_env[0]] = uid_env[1]
            return env
        meta = pod.get("metadata") or {}
        if uid_env is None and shares_gpu(topology, str(meta.get("uid", ""))):
            raise SmiError(
                f"pod {meta.get('namespace')}/{meta.get('name')} shares a GPU (a fractional "
                "pod), but its containers have no FGO_POD_UID: the chart's "
                "MutatingAdmissionPolicy (runai.nvidiaSmi, Kubernetes 1.36+) did not mutate it, "
                "so nvidia-smi is not mounted into it (docs/runai.md)"
            )
        raise SmiError(
            f"container {container} of pod {meta.get('namespace')}/{meta.get('name')} holds no "
            f"GPU in node {topology.node_name}'s record (yet): nvidia-smi is only mounted into "
            "GPU containers"
        )
    env.update({name: ",".join(dict.fromkeys(ids)) for name, ids in lists.items()})
    return env


def _pod_uid_env(container: Obj, pod: Obj) -> tuple[str, str] | None:
    """(name, value) of the container's pod-UID variable, resolved as the kubelet would."""
    uid = str((pod.get("metadata") or {}).get("uid", ""))
    for entry in container.get("env") or []:
        name = entry.get("name")
        if name not in POD_UID_ENVS:
            continue
        if "valueFrom" not in entry:
            return str(name), str(entry.get("value", ""))
        field = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if field == "metadata.uid" and uid:
            return str(name), uid
    return None


def shares_gpu(topology: NodeTopology, pod_uid: str) -> bool:
    """Does the record name ``pod_uid`` on any GPU or MIG device (usage entry or holder)?"""
    for gpu in topology.gpus:
        if pod_uid in gpu.status.usage or any(h.pod_uid == pod_uid for h in gpu.status.holders):
            return True
        for mig in gpu.mig_devices:
            if pod_uid in mig.usage or any(h.pod_uid == pod_uid for h in mig.holders):
                return True
    return False


def smi_command(explicit: Path | None = None) -> list[str]:
    """The nvidia-smi to run: ``explicit``, else the workspace's entry point next to this
    Python (``uv run`` puts it there), else the module through this Python."""
    if explicit is not None:
        return [str(explicit)]
    script = Path(sys.executable).parent / "nvidia-smi"
    if script.is_file():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from fgo_nvidia_smi.main import main; sys.exit(main())",
    ]


async def run_smi(
    topology: NodeTopology,
    env: dict[str, str],
    args: list[str],
    smi: Path | None = None,
    *,
    stdout: int | None = None,
) -> int:
    """Run nvidia-smi with ``topology`` as its node state and ``env`` as its inputs; stdio is
    inherited (or stdout goes to the file descriptor ``stdout``), its exit status returned."""
    with tempfile.TemporaryDirectory(prefix="fgo-nvidia-smi-") as state_dir:
        await asyncio.to_thread(write_node_state, state_dir, topology)
        full = {k: v for k, v in os.environ.items() if k not in SMI_INPUT_ENVS}
        full.update(env)
        full[STATE_DIR_ENV] = state_dir
        proc = await asyncio.create_subprocess_exec(
            *smi_command(smi), *args, env=full, stdout=stdout
        )
        return await proc.wait()


def record_of(configmap: Obj, node: str) -> NodeTopology:
    text = (configmap.get("data") or {}).get(TOPOLOGY_DATA_KEY)
    if text is None:
        raise SmiError(f"ConfigMap {configmap['metadata']['name']} has no {TOPOLOGY_DATA_KEY}")
    return NodeTopology.from_yaml(text, node)


def record_name(settings: OperatorSettings, node: str) -> str:
    return node_topology_configmap_name(settings.topology_prefix, node)
