"""GPU feature discovery labels of a node, computed from its topology record.

Named and valued as NVIDIA's GFD (k8s-device-plugin ``internal/lm``) labels a real node with the
same GPUs: ``gpu.product`` is the NVML name sanitised, ``gpu.memory`` the MiB NVML reports, the
CUDA driver/runtime versions split (plus GFD's deprecated duplicates), and the MIG families per
strategy: ``single`` rewrites product/count/memory to the one MIG profile present (or
``<model>-MIG-INVALID`` with zero counts when the layout cannot be served that way), ``mixed``
adds ``nvidia.com/mig-<profile>.*`` per profile. ``nvidia.com/gpu.present`` (set by the GPU
Operator on real clusters) and ``run.ai/fake.gpu`` are added so selectors written for either
keep working.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import structlog
from fgo_common.computedomain import CLIQUE_LABEL
from fgo_common.names import (
    FAKE_GPU_LABEL,
    GFD_LABELS,
    RESOURCE_NAMES,
    GfdLabels,
    ResourceNames,
    gfd_sanitise,
    gpu_family,
    mig_resource_suffix,
)
from fgo_common.profiles import BUILTIN_CATALOG, GpuProfile, MigProfile, ProfileCatalog
from fgo_common.telemetry import profile_for
from fgo_common.topology import GpuRecord, MigDevice, NodeSharing, NodeTopology

log = structlog.get_logger(__name__)

MAX_LABEL_VALUE = 63
_LABEL_VALUE_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


def label_value(text: str) -> str:
    """Fit ``text`` into a Kubernetes label value (GFD does not, and a real node then refuses the
    whole update; we cut to 63 characters and trim non-alphanumeric ends instead)."""
    if len(text) <= MAX_LABEL_VALUE:
        return text
    return _LABEL_VALUE_EDGE.sub("", text[:MAX_LABEL_VALUE])


@dataclass(frozen=True, slots=True)
class _MigAttrs:
    """What GFD reads from one MIG device to label its profile."""

    name: str  # profile name as NVML reports it ("1g.10gb", "1g.10gb+me")
    memory: int
    multiprocessors: int
    slices_gi: int
    slices_ci: int
    copy: int
    decoder: int
    encoder: int
    jpeg: int
    ofa: int

    def values(self) -> tuple[int, ...]:
        return (self.memory, self.multiprocessors, self.slices_gi, self.slices_ci, self.copy,
                self.decoder, self.encoder, self.jpeg, self.ofa)  # fmt: skip


def _mig_attrs(device: MigDevice, profile: GpuProfile) -> _MigAttrs:
    spec: MigProfile | None
    try:
        spec = profile.mig_profile(device.profile)
    except KeyError:
        spec = None
    return _MigAttrs(
        name=device.profile.removeprefix("MIG "),
        memory=spec.memory_mib if spec else device.memory_mib,
        multiprocessors=device.sm_count or (spec.sm_count if spec else 0),
        slices_gi=spec.compute_slices if spec else device.placement_size,
        slices_ci=spec.compute_slices if spec else device.placement_size,
        copy=spec.copy_engines if spec else 0,
        decoder=spec.decoders if spec else 0,
        encoder=spec.encoders if spec else 0,
        jpeg=spec.jpeg if spec else 0,
        ofa=spec.ofa if spec else 0,
    )


def _split_driver(version: str) -> tuple[str, str, str] | None:
    parts = version.split(".")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def _split_cuda(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        major = int(parts[0])
        minor = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None
    return major, minor


class GfdLabeler:
    """Computes a node's GFD label set; pure (no API access)."""

    def __init__(
        self,
        names: GfdLabels = GFD_LABELS,
        resources: ResourceNames = RESOURCE_NAMES,
        catalog: ProfileCatalog = BUILTIN_CATALOG,
    ) -> None:
        self.names = names
        self.resources = resources
        self.catalog = catalog

    def _resource_labels(
        self,
        resource: str,
        product_parts: list[str],
        count: int,
        replicas: int,
        memory: int | None,
        *,
        sharing: NodeSharing | None = None,
    ) -> dict[str, str]:
        n = self.names
        # Device-plugin sharing (the record's): replicas and strategy of the resource, and GFD's
        # "-SHARED" product suffix when the replicas keep the resource's own name.
        entry = sharing.resource(resource) if sharing is not None and replicas else None
        strategy = "none"
        parts = [gfd_sanitise(p) for p in product_parts if p]
        if sharing is not None and entry is not None and entry.replicas > 1:
            replicas, strategy = entry.replicas, sharing.strategy
            if entry.advertised == entry.name:
                parts.append(n.shared_product_marker)
        out = {
            n.key(resource, n.product): label_value("-".join(parts)),
            n.key(resource, n.count): str(count),
            n.key(resource, n.replicas): str(replicas),
            n.key(resource, n.sharing_strategy): strategy,
        }
        if memory:
            out[n.key(resource, n.memory)] = str(memory)
        return out

    def _mig_attribute_labels(self, resource: str, attrs: _MigAttrs) -> dict[str, str]:
        return {
            self.names.key(resource, suffix): str(value)
            for suffix, value in zip(self.names.mig_attribute_suffixes, attrs.values(), strict=True)
        }

    def labels(self, node: NodeTopology) -> dict[str, str]:
        """The labels GFD (plus the operator's ``gpu.present``) would put on ``node``."""
        if not node.gpus:
            return {}
        n = self.names
        gpu_resource = self.resources.gpu
        gpus = sorted(node.gpus, key=lambda g: g.index)
        profiles = {g.id: profile_for(g, self.catalog) for g in gpus}
        first = profiles[gpus[0].id]
        out: dict[str, str] = {
            n.gpu_present: "true",
            FAKE_GPU_LABEL: "true",
            n.mode: "compute",  # every simulated product is a datacenter 3D controller
            # GFD computes it only when MPS sharing is configured; our GPUs all support MPS.
            n.mps_capable: str(node.sharing is not None and node.sharing.strategy == "mps").lower(),
            n.vgpu_present: "false",
            n.mig_capable: str(any(p.mig_capable for p in profiles.values())).lower(),
            n.mig_strategy: node.mig_strategy or "none",
        }
        out.update(self._version_labels(node.driver_version or first.driver_version,
                                        node.cuda_version or first.cuda_version))  # fmt: skip

        # Full-GPU labels: GFD labels the product of the GPUs (if a node mixes products it writes
        # each in turn and the last wins; we pick GPU 0's product, deterministically).
        model = gpus[0].product
        same = [g for g in gpus if g.product == model]
        mig_on = [g for g in same if g.mig_enabled]
        # MIG-enabled parents are labelled without sharing (replicas 0) unless a full GPU of the
        # same product overrides them, as GFD's labeler order does.
        replicas = 0 if len(mig_on) == len(same) and node.mig_strategy != "none" else 1
        out.update(self._resource_labels(gpu_resource, [model], len(same), replicas,
                                         gpus[0].memory_mib, sharing=node.sharing))  # fmt: skip
        major, minor = first.compute_capability
        if major:
            out[n.key(gpu_resource, n.family)] = gpu_family(major, minor)
            out[n.key(gpu_resource, n.compute_major)] = str(major)
            out[n.key(gpu_resource, n.compute_minor)] = str(minor)

        if node.mig_strategy == "single":
            out.update(self._single(gpus, profiles, model, node.sharing))
        elif node.mig_strategy == "mixed":
            out.update(self._mixed(gpus, profiles, model, node.sharing))
        if node.nvlink_clique:
            # GFD's imex labeler: the GPUs' fabric cluster UUID and clique id (NVML fabric info).
            out[CLIQUE_LABEL] = node.nvlink_clique
        return out

    def _version_labels(self, driver: str, cuda: str) -> dict[str, str]:
        n = self.names
        out: dict[str, str] = {}
        split = _split_driver(driver)
        if split is None:
            if driver:
                log.warning("gfd.bad_driver_version", driver_version=driver)
        else:
            major, minor, rev = split
            out.update({
                n.driver_major: major, n.driver_minor: minor, n.driver_revision: rev,
                n.driver_full: driver,
                n.old_driver_major: major, n.old_driver_minor: minor, n.old_driver_rev: rev,
            })  # fmt: skip
        runtime = _split_cuda(cuda) if cuda else None
        if runtime is not None:
            cmajor, cminor = runtime
            out.update({
                n.runtime_major: str(cmajor), n.runtime_minor: str(cminor),
                n.runtime_full: f"{cmajor}.{cminor}",
                n.old_runtime_major: str(cmajor), n.old_runtime_minor: str(cminor),
            })  # fmt: skip
        return out

    def _mig_devices(
        self, gpus: list[GpuRecord], profiles: dict[str, GpuProfile]
    ) -> list[_MigAttrs]:
        return [
            _mig_attrs(device, profiles[gpu.id])
            for gpu in gpus
            if gpu.mig_enabled
            for device in sorted(gpu.mig_devices, key=lambda d: d.gi_id)
        ]

    def _single(
        self,
        gpus: list[GpuRecord],
        profiles: dict[str, GpuProfile],
        model: str,
        sharing: NodeSharing | None = None,
    ) -> dict[str, str]:
        n, resource = self.names, self.resources.gpu
        enabled = [g for g in gpus if g.mig_enabled]
        if not enabled:
            return {}  # no MIG-enabled GPU: the same as strategy none
        reason = ""
        if any(not g.mig_devices for g in enabled):
            reason = "a MIG-enabled GPU has no MIG devices"
        elif len(enabled) != len(gpus):
            reason = "MIG-enabled and MIG-disabled GPUs on one node"
        devices = self._mig_devices(gpus, profiles)
        kinds = Counter(d.name for d in devices)
        if not reason and len(kinds) != 1:
            reason = "more than one MIG profile on the node"
        if reason:
            log.warning("gfd.mig_single_invalid", reason=reason)
            return {
                n.key(resource, n.product): label_value(
                    "-".join(
                        [gfd_sanitise(enabled[0].product), n.mig_product_marker,
                         n.mig_invalid_marker]
                    )
                ),
                n.key(resource, n.count): "0",
                n.key(resource, n.replicas): "0",
                n.key(resource, n.memory): "0",
            }  # fmt: skip
        attrs = devices[0]
        out = self._resource_labels(
            resource,
            [model, n.mig_product_marker, attrs.name],
            len(devices),
            1,
            None,
            sharing=sharing,
        )
        out.update(self._mig_attribute_labels(resource, attrs))
        return out

    def _mixed(
        self,
        gpus: list[GpuRecord],
        profiles: dict[str, GpuProfile],
        model: str,
        sharing: NodeSharing | None = None,
    ) -> dict[str, str]:
        n = self.names
        out: dict[str, str] = {}
        devices = self._mig_devices(gpus, profiles)
        counts = Counter(d.name for d in devices)
        firsts: dict[str, _MigAttrs] = {}
        for d in devices:
            firsts.setdefault(d.name, d)
        for name, attrs in sorted(firsts.items()):
            resource = self.resources.mig_prefix + mig_resource_suffix(name)
            out.update(
                self._resource_labels(
                    resource,
                    [model, n.mig_product_marker, name],
                    counts[name],
                    1,
                    None,
                    sharing=sharing,
                )
            )
            out.update(self._mig_attribute_labels(resource, attrs))
        return out
