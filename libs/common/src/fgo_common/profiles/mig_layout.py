"""MIG layouts: turn requested GPU instances into the concrete layout a real GPU would show.

A layout says, for one GPU, which GPU instances (GIs) exist: their profile, GI id, compute
instance id, placement (first memory slice and slice count), memory and SMs. Every service that
shows MIG devices (status-updater writing the topology, nvidia-smi, the exporter, the device
and DRA plugins) derives them from one layout, so they agree on ids and placements.

GI ids follow what nvidia-smi shows on real A100/H100 GPUs (``nvidia-smi mig -lgi``):

* the full GPU (8 memory slices) is GI 0;
* an eighth (1 slice) at start ``s`` is GI ``7 + s`` (all-1g.5gb on A100: GIs 7..13 at 0..6;
  a lone 1g at 6:1 is GI 13 on A100 and H100 NVL);
* a quarter (2 slices) at start ``s`` is GI ``3 + s / 2`` (2g at 4:2 is GI 5 on A100; 2g at
  0/2/4 are GIs 3/4/5 on H100 NVL);
* halves (4 slices) take GIs 1 and 2, rightmost first: two 3g.40gb on H100 are GI 1 at 4:4
  and GI 2 at 0:4, 3g + 4g are GI 1 at 4:4 and GI 2 at 0:4, and a lone 4g at 0:4 is GI 1.

Every GI gets one full-size compute instance, CI 0, as ``nvidia-smi mig -cgi ... -C`` and
mig-parted create. Where a request gives no placement, the driver's habit of filling from the
highest free slice is followed (a lone 1g lands at 6, a lone 3g at 4), placing bigger instances
first; a search makes sure a layout is found whenever one exists.

Named layouts are those of NVIDIA mig-parted's default config (``config-default.yaml``):
``all-disabled``, ``all-enabled``, ``all-<profile>`` (as many of one profile as fit, with ``+``
written ``.``: ``all-1g.10gb.me``) and ``all-balanced`` (per product, keyed like mig-parted by
PCI device id).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fgo_common.profiles.model import GpuProfile, MigPlacement, MigProfile


class MigLayoutError(ValueError):
    """A requested layout that no real GPU of this product would accept.

    ``reason`` is a short machine-readable code; the message says what is wrong and why.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class MigRequest:
    """One requested GPU instance: a profile name and, optionally, its first memory slice."""

    profile: str
    start: int | None = None


@dataclass(frozen=True, slots=True)
class MigInstance:
    """A placed GPU instance with its default compute instance."""

    profile: MigProfile
    gi_id: int
    ci_id: int
    placement: MigPlacement

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def gi_profile_id(self) -> int:
        return self.profile.gi_profile_id

    @property
    def ci_profile_id(self) -> int:
        return self.profile.ci_profile_id

    @property
    def memory_mib(self) -> int:
        return self.profile.memory_mib

    @property
    def sm_count(self) -> int:
        return self.profile.sm_count

    @property
    def memory_slices(self) -> range:
        return range(self.placement.start, self.placement.start + self.placement.size)


@dataclass(frozen=True, slots=True)
class MigLayout:
    """The MIG state of one GPU: mode and instances, ordered by GI id (as ``nvidia-smi -L``)."""

    product: str
    mig_enabled: bool
    instances: tuple[MigInstance, ...] = ()

    @property
    def memory_slices_used(self) -> int:
        return sum(i.placement.size for i in self.instances)

    @property
    def compute_slices_used(self) -> int:
        return sum(i.profile.compute_slices for i in self.instances)


RequestLike = MigRequest | str | tuple[str, int | None]

# mig-parted config-default.yaml "all-balanced", one entry per device-filter (PCI device id).
BALANCED_BY_DEVICE_ID: dict[int, dict[str, int]] = {
    0x20B010DE: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},  # A100-SXM4-40GB
    0x20B210DE: {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},  # A100-SXM4-80GB
    0x233010DE: {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},  # H100 80GB HBM3
    0x233510DE: {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1},  # H200 141GB
    0x290110DE: {"1g.23gb": 2, "2g.45gb": 1, "3g.90gb": 1},  # B200
    0x294110DE: {"1g.23gb": 2, "2g.47gb": 1, "3g.93gb": 1},  # GB200
    # GB300: mig-parted's pattern for its profiles (the profile's device id is an estimate).
    0x31C210DE: {"1g.35gb": 2, "2g.70gb": 1, "3g.139gb": 1},
}


def memory_slice_count(gpu: GpuProfile) -> int:
    """Memory slices of the GPU: the end of the widest placement (8 on every MIG GPU here)."""
    return max((p.start + p.size for m in gpu.mig_profiles for p in m.placements), default=0)


def compute_slice_count(gpu: GpuProfile) -> int:
    """Compute (SM) slices: those of the full-GPU profile (7 on A100/H100/B200)."""
    return max((m.compute_slices for m in gpu.mig_profiles), default=0)


def resolve_mig_profile(gpu: GpuProfile, name: str) -> MigProfile:
    """Find a MIG profile by any spelling users write.

    Accepts ``1g.10gb``, ``MIG 1g.10gb``, the resource form ``1g.10gb.me`` and
    ``nvidia.com/mig-1g.10gb``.
    """
    _require_mig(gpu)
    wanted = name.strip().removeprefix("nvidia.com/mig-").removeprefix("MIG ").strip()
    for profile in gpu.mig_profiles:
        if wanted in (profile.name, profile.resource_suffix):
            return profile
    allowed = ", ".join(p.name for p in gpu.mig_profiles)
    raise MigLayoutError(
        "unknown-profile", f"{gpu.name} has no MIG profile {name!r}; allowed: {allowed}"
    )


def plan_layout(gpu: GpuProfile, requests: Iterable[RequestLike]) -> MigLayout:
    """Validate ``requests`` for ``gpu`` and return the concrete layout.

    Raises ``MigLayoutError`` naming the problem: product not MIG-capable, profile unknown for
    this product, more instances of a profile than it allows, more slices than the GPU has,
    a placement that is not valid for the profile, overlapping placements, or no way to fit.
    """
    _require_mig(gpu)
    wanted = [_as_request(r) for r in requests]
    profiles = [resolve_mig_profile(gpu, r.profile) for r in wanted]
    _check_counts(gpu, profiles)
    fixed = _check_fixed_placements(gpu, wanted, profiles)
    placements = _fit(gpu, profiles, fixed)
    instances = _assign_ids(memory_slice_count(gpu), profiles, placements)
    return MigLayout(product=gpu.name, mig_enabled=True, instances=instances)


def layout_names(gpu: GpuProfile) -> list[str]:
    """Names :func:`named_layout` accepts for ``gpu`` (mig-parted's default config)."""
    if not gpu.mig_capable:
        return ["all-disabled"]
    names = ["all-disabled", "all-enabled"]
    names += [f"all-{p.resource_suffix}" for p in gpu.mig_profiles]
    if gpu.pci_device_id in BALANCED_BY_DEVICE_ID:
        names.append("all-balanced")
    return names


def smallest_layout_name(gpu: GpuProfile) -> str:
    """The ``all-1g.<N>gb`` name of the product's smallest plain profile (``all-1g.5gb`` ...)."""
    _require_mig(gpu)
    plain = [p for p in gpu.mig_profiles if "+" not in p.name and "-" not in p.name]
    smallest = min(plain, key=lambda p: (p.compute_slices, p.memory_mib))
    return f"all-{smallest.resource_suffix}"


def named_layout(gpu: GpuProfile, name: str) -> MigLayout:
    """The layout mig-parted's default config ``name`` gives one GPU of this product."""
    if name == "all-disabled":
        return MigLayout(product=gpu.name, mig_enabled=False)
    _require_mig(gpu)
    if name == "all-enabled":
        return MigLayout(product=gpu.name, mig_enabled=True)
    if name == "all-balanced":
        balanced = BALANCED_BY_DEVICE_ID.get(gpu.pci_device_id)
        if balanced is None:
            raise MigLayoutError(
                "unknown-layout",
                f"mig-parted's all-balanced has no entry for {gpu.name} "
                f"(device id 0x{gpu.pci_device_id:08X})",
            )
        return plan_layout(gpu, [p for p, n in balanced.items() for _ in range(n)])
    if name.startswith("all-"):
        suffix = name.removeprefix("all-")
        for profile in gpu.mig_profiles:
            if suffix == profile.resource_suffix:
                return plan_layout(gpu, [profile.name] * profile.max_instances)
    raise MigLayoutError(
        "unknown-layout",
        f"unknown MIG layout {name!r} for {gpu.name}; known: {', '.join(layout_names(gpu))}",
    )


def named_layouts(gpu: GpuProfile, name: str, gpu_count: int) -> list[MigLayout]:
    """Per-GPU layouts for a node of ``gpu_count`` GPUs (mig-parted applies to ``devices: all``)."""
    layout = named_layout(gpu, name)
    return [layout] * gpu_count


def dynamic_gi_id(total_slices: int, placement: MigPlacement) -> int:
    """The GI id a dynamically created instance at ``placement`` gets: a function of the
    placement alone, so the status-updater and a node plugin preparing the claim agree on it
    (and on the MIG UUID derived from it) without talking to each other.

    The binary-tree rule of :func:`plan_layout`; the two halves, whose ids a real driver hands
    out in creation order, are pinned to the ids they have when both exist (GI 1 at the upper
    half, GI 2 at the lower one).
    """
    if placement.size * 2 == total_slices:
        return 1 if placement.start else 2
    level = (total_slices // placement.size).bit_length() - 1
    return (1 << level) - 1 + placement.start // placement.size


def dynamic_instance(gpu: GpuProfile, profile: MigProfile, placement: MigPlacement) -> MigInstance:
    """The instance dynamic MIG creates for ``profile`` at ``placement`` (CI 0 spans it)."""
    return MigInstance(
        profile=profile,
        gi_id=dynamic_gi_id(memory_slice_count(gpu), placement),
        ci_id=0,
        placement=placement,
    )


def possible_instances(gpu: GpuProfile) -> list[MigInstance]:
    """Every instance a dynamic-MIG GPU of this product can create: each profile at each of
    its valid placements, by profile (as ``mig -lgip``) then placement."""
    if not gpu.mig_capable:
        return []
    return [
        dynamic_instance(gpu, profile, placement)
        for profile in gpu.mig_profiles
        for placement in profile.placements
    ]


def _require_mig(gpu: GpuProfile) -> None:
    if not gpu.mig_capable:
        raise MigLayoutError("not-mig-capable", f"{gpu.name} is not MIG-capable")


def _as_request(request: RequestLike) -> MigRequest:
    if isinstance(request, MigRequest):
        return request
    if isinstance(request, str):
        return MigRequest(request)
    name, start = request
    return MigRequest(name, start)


def _check_counts(gpu: GpuProfile, profiles: Sequence[MigProfile]) -> None:
    for profile, count in Counter(profiles).items():
        if count > profile.max_instances:
            raise MigLayoutError(
                "too-many-instances",
                f"{count} x {profile.name} requested but {gpu.name} allows at most "
                f"{profile.max_instances}",
            )
    if len(profiles) > gpu.mig_max_gpu_instances:
        raise MigLayoutError(
            "too-many-instances",
            f"{len(profiles)} GPU instances requested but {gpu.name} allows at most "
            f"{gpu.mig_max_gpu_instances}",
        )
    memory = sum(p.memory_slices for p in profiles)
    compute = sum(p.compute_slices for p in profiles)
    memory_total, compute_total = memory_slice_count(gpu), compute_slice_count(gpu)
    if memory > memory_total or compute > compute_total:
        raise MigLayoutError(
            "too-many-slices",
            f"requested instances need {memory} memory and {compute} compute slices but "
            f"{gpu.name} has {memory_total} memory and {compute_total} compute slices",
        )


def _describe(profile: MigProfile, placement: MigPlacement) -> str:
    return f"{profile.name} at {placement.start}:{placement.size}"


def _check_fixed_placements(
    gpu: GpuProfile, requests: Sequence[MigRequest], profiles: Sequence[MigProfile]
) -> dict[int, MigPlacement]:
    fixed: dict[int, MigPlacement] = {}
    for index, (request, profile) in enumerate(zip(requests, profiles, strict=True)):
        if request.start is None:
            continue
        match = [p for p in profile.placements if p.start == request.start]
        if not match:
            starts = ", ".join(str(p.start) for p in profile.placements)
            raise MigLayoutError(
                "invalid-placement",
                f"{profile.name} cannot start at memory slice {request.start} on {gpu.name}; "
                f"valid starts: {starts}",
            )
        for other, placed in fixed.items():
            if _overlaps(match[0], placed):
                raise MigLayoutError(
                    "overlap",
                    f"{_describe(profile, match[0])} overlaps {_describe(profiles[other], placed)}",
                )
        fixed[index] = match[0]
    return fixed


def _overlaps(a: MigPlacement, b: MigPlacement) -> bool:
    return a.start < b.start + b.size and b.start < a.start + a.size


def _fit(
    gpu: GpuProfile, profiles: Sequence[MigProfile], fixed: dict[int, MigPlacement]
) -> list[MigPlacement]:
    """Place the unplaced requests around the fixed ones; biggest first, highest slice first."""
    todo = sorted(
        (i for i in range(len(profiles)) if i not in fixed),
        key=lambda i: (-profiles[i].memory_slices, -profiles[i].compute_slices, i),
    )
    chosen = dict(fixed)

    def search(position: int) -> bool:
        if position == len(todo):
            return True
        index = todo[position]
        for candidate in sorted(profiles[index].placements, key=lambda p: -p.start):
            if any(_overlaps(candidate, placed) for placed in chosen.values()):
                continue
            chosen[index] = candidate
            if search(position + 1):
                return True
            del chosen[index]
        return False

    if not search(0):
        wanted = ", ".join(sorted(p.name for p in profiles))
        raise MigLayoutError(
            "no-fit", f"no placement of [{wanted}] fits the memory slices of {gpu.name}"
        )
    return [chosen[i] for i in range(len(profiles))]


def _assign_ids(
    total: int, profiles: Sequence[MigProfile], placements: Sequence[MigPlacement]
) -> tuple[MigInstance, ...]:
    pairs = list(zip(profiles, placements, strict=True))
    ids: dict[int, int] = {}
    halves = sorted(
        (i for i, (_, pl) in enumerate(pairs) if pl.size * 2 == total),
        key=lambda i: -pairs[i][1].start,
    )
    for rank, index in enumerate(halves):
        ids[index] = 1 + rank
    for index, (_, placement) in enumerate(pairs):
        if index in ids:
            continue
        # Binary tree of memory slices: level L holds 2**L nodes numbered from 2**L - 1.
        level = (total // placement.size).bit_length() - 1
        ids[index] = (1 << level) - 1 + placement.start // placement.size
    instances = [
        MigInstance(profile=profile, gi_id=ids[i], ci_id=0, placement=placement)
        for i, (profile, placement) in enumerate(pairs)
    ]
    return tuple(sorted(instances, key=lambda inst: inst.gi_id))
