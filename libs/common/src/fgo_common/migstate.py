"""MIG state of a node's GPUs: which layout a config name means, and the record entries it gives.

``fgo_common.profiles.mig_layout`` plans the layout of one GPU (placements, GI ids); this module
turns a *config name* into per-GPU layouts the way NVIDIA mig-parted does, and writes them into
the topology record as :class:`~fgo_common.topology.MigDevice` entries with deterministic MIG
UUIDs (same node, same GPU, same GI/CI -> same UUID after any rebuild).

A config name is either one of mig-parted's default names (``all-disabled``, ``all-1g.10gb``,
``all-balanced`` ...) or a custom config in mig-parted's format::

    mig-configs:
      my-split:
        - devices: [0, 1]          # or "all"; GPU indexes of the node
          mig-enabled: true
          mig-devices: {"3g.40gb": 2}
        - devices: [2, 3]
          mig-enabled: false

``mig-devices`` may also be a list of ``{name, position}`` (the form Run:ai writes into its
``run.ai/mig.config`` annotation), which pins each instance's first memory slice. GPUs no entry
selects get MIG disabled. Pure functions only: the status-updater owns when a layout applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fgo_common.identity import mig_uuid
from fgo_common.profiles.mig_layout import (
    MigInstance,
    MigLayout,
    MigLayoutError,
    MigRequest,
    named_layout,
    plan_layout,
)
from fgo_common.profiles.model import GpuProfile
from fgo_common.topology import GpuRecord, MigDevice

DISABLED = "all-disabled"


@dataclass(frozen=True, slots=True)
class MigPartedEntry:
    """One entry of a mig-parted config: the GPUs it selects and what they get."""

    devices: tuple[int, ...] | None  # None: "all"
    mig_enabled: bool
    requests: tuple[MigRequest, ...] = ()

    def selects(self, index: int) -> bool:
        return self.devices is None or index in self.devices


CustomConfigs = Mapping[str, tuple[MigPartedEntry, ...]]


def parse_mig_parted(
    raw: object, path: str = "migConfigs"
) -> dict[str, tuple[MigPartedEntry, ...]]:
    """Parse mig-parted's ``mig-configs`` (or a whole ``{version, mig-configs}`` document).

    Raises ``MigLayoutError`` (reason ``invalid-config``) whose message starts with the path of
    the offending field.
    """
    if isinstance(raw, Mapping) and "mig-configs" in raw:
        path = f"{path}.mig-configs"
        raw = raw["mig-configs"]
    if not isinstance(raw, Mapping):
        raise _bad(path, f"must be a mapping of config name -> list of entries, got {raw!r}")
    out: dict[str, tuple[MigPartedEntry, ...]] = {}
    for name, entries in raw.items():
        cpath = f"{path}.{name}"
        if not isinstance(name, str) or not name:
            raise _bad(path, f"config names must be non-empty strings, got {name!r}")
        if not isinstance(entries, list) or not entries:
            raise _bad(cpath, "must be a non-empty list of {devices, mig-enabled, mig-devices}")
        out[name] = tuple(_entry(e, f"{cpath}[{i}]") for i, e in enumerate(entries))
    return out


def _bad(path: str, message: str) -> MigLayoutError:
    return MigLayoutError("invalid-config", f"{path}: {message}")


def _entry(raw: object, path: str) -> MigPartedEntry:
    if not isinstance(raw, Mapping):
        raise _bad(path, f"must be a mapping, got {raw!r}")
    unknown = set(raw) - {"devices", "mig-enabled", "mig-devices", "device-filter"}
    if unknown:
        raise _bad(path, f"unknown keys {sorted(map(str, unknown))}")
    devices_raw = raw.get("devices", "all")
    devices: tuple[int, ...] | None
    if devices_raw == "all":
        devices = None
    elif isinstance(devices_raw, list):
        try:
            devices = tuple(int(d) for d in devices_raw)
        except (TypeError, ValueError):
            raise _bad(f"{path}.devices", f"GPU indexes expected, got {devices_raw!r}") from None
    else:
        raise _bad(
            f"{path}.devices", f'must be "all" or a list of GPU indexes, got {devices_raw!r}'
        )
    enabled = raw.get("mig-enabled", False)
    if not isinstance(enabled, bool):
        raise _bad(f"{path}.mig-enabled", f"must be true or false, got {enabled!r}")
    wanted = raw.get("mig-devices") or {}
    requests: list[MigRequest] = []
    if isinstance(wanted, Mapping):
        for profile, count in wanted.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise _bad(f"{path}.mig-devices.{profile}", f"must be a count, got {count!r}")
            requests += [MigRequest(str(profile))] * count
    elif isinstance(wanted, list):
        for i, item in enumerate(wanted):
            if not isinstance(item, Mapping) or "name" not in item:
                raise _bad(f"{path}.mig-devices[{i}]", "must be {name, position}")
            position = item.get("position")
            start = None if position is None else int(position)
            requests.append(MigRequest(str(item["name"]), start))
    else:
        raise _bad(f"{path}.mig-devices", f"must be a mapping or a list, got {wanted!r}")
    if requests and not enabled:
        raise _bad(f"{path}.mig-devices", "lists MIG devices but mig-enabled is false")
    return MigPartedEntry(devices, enabled, tuple(requests))


def layouts_for(
    name: str, profiles: Sequence[GpuProfile], custom: CustomConfigs | None = None
) -> list[MigLayout]:
    """Per-GPU layouts (index order) config ``name`` gives GPUs of ``profiles``.

    Raises ``MigLayoutError`` if the name is unknown or any GPU cannot take its layout
    (product not MIG-capable, too many slices, overlapping placements ...); the message names
    the GPU index.
    """
    entries = (custom or {}).get(name)
    out = []
    for index, profile in enumerate(profiles):
        try:
            if entries is None:
                layout = named_layout(profile, name)
            else:
                layout = _custom_layout(profile, index, entries)
        except MigLayoutError as exc:
            raise MigLayoutError(exc.reason, f"MIG config {name!r}, GPU {index}: {exc}") from None
        out.append(layout)
    return out


def _custom_layout(profile: GpuProfile, index: int, entries: Sequence[MigPartedEntry]) -> MigLayout:
    chosen = None
    for entry in entries:
        if entry.selects(index):
            chosen = entry  # later entries win, as mig-parted applies them in order
    if chosen is None or not chosen.mig_enabled:
        return MigLayout(product=profile.name, mig_enabled=False)
    if not chosen.requests:
        if not profile.mig_capable:
            raise MigLayoutError("not-mig-capable", f"{profile.name} is not MIG-capable")
        return MigLayout(product=profile.name, mig_enabled=True)
    return plan_layout(profile, chosen.requests)


def mig_device_of(gpu: GpuRecord, instance: MigInstance) -> MigDevice:
    return MigDevice(
        uuid=mig_uuid(gpu.id, instance.gi_id, instance.ci_id),
        profile=instance.name,
        gi_id=instance.gi_id,
        ci_id=instance.ci_id,
        gi_profile_id=instance.gi_profile_id,
        ci_profile_id=instance.ci_profile_id,
        placement_start=instance.placement.start,
        placement_size=instance.placement.size,
        memory_mib=instance.memory_mib,
        sm_count=instance.sm_count,
    )


def apply_layouts(gpus: Sequence[GpuRecord], layouts: Sequence[MigLayout]) -> None:
    """Write ``layouts`` into ``gpus`` (same order); MIG devices start with no holders."""
    for gpu, layout in zip(gpus, layouts, strict=True):
        gpu.mig_enabled = layout.mig_enabled
        gpu.mig_devices = [mig_device_of(gpu, inst) for inst in layout.instances]


def layout_signature(gpus: Sequence[GpuRecord]) -> list[tuple[Any, ...]]:
    """What a layout change changes (for comparing records without holders)."""
    return [
        (g.id, g.mig_enabled, tuple((d.uuid, d.profile, d.placement_start) for d in g.mig_devices))
        for g in gpus
    ]


def gpu_in_use(gpu: GpuRecord) -> bool:
    """True while any pod holds the GPU or one of its MIG devices."""
    return bool(gpu.status.holders) or any(d.holders for d in gpu.mig_devices)


__all__ = [
    "DISABLED",
    "CustomConfigs",
    "MigPartedEntry",
    "apply_layouts",
    "gpu_in_use",
    "layout_signature",
    "layouts_for",
    "mig_device_of",
    "parse_mig_parted",
]
