"""What this container sees: the node's record, filtered to its GPUs, sampled at one instant.

Every number comes from the node's topology record (mounted by the node agent), the built-in
profile of the GPU's product, and :func:`fgo_common.telemetry.sample_gpu` at the current time, so
nvidia-smi and the metrics exporter print the same values for the same moment.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field

from fgo_common.nodestate import NodeStateError, read_node_state
from fgo_common.profiles import GpuProfile, MigProfile
from fgo_common.telemetry import (
    BUCKET_SECONDS,
    GpuSample,
    pod_utilization,
    process_memory_mib,
    profile_for,
    sample_gpu,
    sample_mig_device,
)
from fgo_common.topology import (
    HOLDER_RESERVATION,
    GpuRecord,
    Holder,
    MigDevice,
    NodeTopology,
    PodUsage,
)

from fgo_nvidia_smi.settings import Settings

FALLBACK_DRIVER = "580.159.04"
MPS_STRATEGY = "MPS"  # fgo_common.sharing.MPS (not imported: nvidia-smi's start-up stays lean)
MPS_SERVER_NAME = "nvidia-cuda-mps-server"
FALLBACK_CUDA = "13.0"


class DriverUnavailableError(RuntimeError):
    """The simulated driver cannot be reached: the node state is missing or unreadable."""


@dataclass(slots=True)
class Process:
    """A compute process as NVML lists it: one per pod holding the GPU (or MIG device)."""

    pid: int
    name: str
    used_mib: int
    gi_id: int | None = None
    ci_id: int | None = None
    type: str = "C"
    sm_util: int | None = None  # this process's share of SM activity (pmon)


@dataclass(slots=True)
class MigView:
    index: int  # MIG device index on its parent GPU (NVML order: by GPU-instance id)
    device: MigDevice
    profile: MigProfile | None
    sample: GpuSample
    bar1_total_mib: int
    processes: list[Process] = field(default_factory=list)

    @property
    def bar1_used_mib(self) -> int:
        return min(self.bar1_total_mib, self.sample.bar1_used_mib)


@dataclass(slots=True)
class GpuView:
    index: int  # index as this container enumerates it (0..n-1 in PCI order)
    record: GpuRecord
    profile: GpuProfile
    sample: GpuSample
    migs: list[MigView] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    t: float = 0.0
    seed: int = 0
    # Share of the GPU's memory a fractional (Run:ai) pod is limited to: its memory hook makes
    # NVML report that much as the total.
    fraction: float = 1.0

    def history(self, count: int) -> list[GpuSample]:
        """The model's samples over the last ``count`` telemetry buckets, newest first (what
        the driver's sample buffers summarise for ``-q -d UTILIZATION,POWER``)."""
        return [self.sample] + [
            sample_gpu(self.record, self.profile, self.t - i * BUCKET_SECONDS, seed=self.seed)
            for i in range(1, count)
        ]

    @property
    def mig_enabled(self) -> bool:
        return self.record.mig_enabled

    @property
    def compute_mode(self) -> str:
        """NVIDIA's DRA driver puts a GPU it prepares for MPS into EXCLUSIVE_PROCESS (only the
        MPS server opens it); time-slicing keeps DEFAULT."""
        mps = any(h.sharing == MPS_STRATEGY for h in self.record.status.holders)
        return "Exclusive_Process" if mps else "Default"

    @property
    def name(self) -> str:
        return self.record.product or self.profile.name

    @property
    def uuid(self) -> str:
        return self.record.id

    @property
    def bus_id(self) -> str:
        fallback = f"00000000:{0x18 + self.record.index:02X}:00.0"
        return normalise_bus_id(self.record.bus_id) or fallback

    @property
    def memory_total_mib(self) -> int:
        # The epsilon keeps a share taken from the record (fbUsed / memory) at exactly fbUsed.
        return int((self.record.memory_mib or self.profile.memory_mib) * self.fraction + 1e-6)

    @property
    def memory_used_mib(self) -> int:
        # On a MIG GPU the model already sums its instances' framebuffer use.
        used = self.sample.fb_used_mib
        if self.fraction < 1.0:
            used = min(used, self.memory_total_mib - self.memory_reserved_mib)
        return used

    @property
    def memory_reserved_mib(self) -> int:
        return int(self.sample.fb_reserved_mib * self.fraction)

    @property
    def memory_free_mib(self) -> int:
        return max(0, self.memory_total_mib - self.memory_reserved_mib - self.memory_used_mib)

    @property
    def all_processes(self) -> list[Process]:
        out = list(self.processes)
        for mig in self.migs:
            out.extend(mig.processes)
        return out

    # Identity values NVML reports that the record does not carry: derived from the UUID so
    # they are stable for the GPU's lifetime and differ between GPUs.
    @property
    def serial(self) -> str:
        return str(1_000_000_000_000 + _stable_int(self.uuid, "serial") % 900_000_000_000)

    @property
    def pdi(self) -> str:
        return f"0x{_stable_int(self.uuid, 'pdi') % 2**64:016x}"

    @property
    def board_id(self) -> str:
        # NVML's board id on PCIe systems is (bus << 8 | device) of the GPU's own function.
        try:
            _, bus, devfn = self.bus_id.split(":")
            return f"0x{int(bus, 16) << 8 | int(devfn.split('.')[0], 16):x}"
        except ValueError:
            return "N/A"

    @property
    def module_id(self) -> int:
        return self.record.minor + 1


@dataclass(slots=True)
class Snapshot:
    """Everything one invocation prints, taken at one instant."""

    node: NodeTopology
    gpus: list[GpuView]
    t: float
    driver_version: str
    cuda_version: str
    # GPUs the container can see, before any `-i` narrows what is printed ("Attached GPUs").
    attached: int = 0


def normalise_bus_id(bus_id: str) -> str:
    """NVML form ``00000000:18:00.0`` (8-digit domain, upper-case hex) of any common spelling."""
    text = bus_id.strip()
    if not text:
        return ""
    parts = text.split(":")
    try:
        if len(parts) == 3:
            domain, bus, devfn = parts
        elif len(parts) == 2:
            domain, (bus, devfn) = "0", parts
        else:
            return text.upper()
        device, _, function = devfn.partition(".")
        return (
            f"{int(domain, 16):08X}:{int(bus, 16):02X}:{int(device, 16):02X}."
            f"{int(function or '0', 16):X}"
        )
    except ValueError:
        return text.upper()


def _stable_int(*parts: object) -> int:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _process_pid(pod_uid: str) -> int:
    # Host PIDs (NVML reports them regardless of the container's PID namespace): plausible,
    # stable for the pod's lifetime, the same on every GPU the pod's process uses.
    return 1000 + _stable_int(pod_uid, "pid") % 3_000_000


def own_process_name() -> str:
    """Our pod's workload as NVML names it: the container's main command (argv[0])."""
    try:
        with open("/proc/1/cmdline", "rb") as handle:  # noqa: PTH123 - pathlib costs start-up
            raw = handle.read()
    except OSError:
        return ""
    return raw.split(b"\0", 1)[0].decode(errors="replace").strip()


@dataclass(frozen=True, slots=True)
class _ProcContext:
    hostname: str  # our pod's name: its processes carry the container's real command
    own_name: str
    bucket: int
    seed: int


def _processes(
    gpu_id: str,
    usages: dict[str, PodUsage],
    holders: list[Holder],
    ctx: _ProcContext,
    memory: dict[str, int],
    *,
    gi_id: int | None = None,
    ci_id: int | None = None,
) -> list[Process]:
    """One process per pod using the device (reservation pods run nothing); ``memory`` is
    each pod's framebuffer from the telemetry model (keyed by pod UID)."""
    out: list[Process] = []
    seen: set[str] = set()

    def add(key: str, pod: str, usage: PodUsage | None, uid: str) -> None:
        seen.add(key)
        name = ctx.own_name if ctx.hostname and pod == ctx.hostname and ctx.own_name else "python"
        util = pod_utilization(usage, gpu_id, key, ctx.bucket, ctx.seed) if usage else 0
        out.append(
            Process(
                pid=_process_pid(key),
                name=name,
                used_mib=memory.get(uid, 0) if usage else 0,
                gi_id=gi_id,
                ci_id=ci_id,
                sm_util=util,
            )
        )

    for holder in holders:
        key = holder.pod_uid or holder.pod
        if key in seen:
            continue
        if holder.kind == HOLDER_RESERVATION:
            seen.add(key)  # and its usage entry, if any, is no process either
            continue
        add(key, holder.pod, usages.get(holder.pod_uid), holder.pod_uid)
    # Usage entries without a holder record (written by the reference implementation).
    for uid, usage in sorted(usages.items()):
        if uid not in seen:
            add(uid, usage.pod, usage, uid)
    if any(h.sharing == MPS_STRATEGY for h in holders):
        # Under MPS the clients' work runs in the MPS server's context: NVML lists the server
        # as the compute process and each client as "M+C". The server's own framebuffer is not
        # in the telemetry model, so it shows none rather than an invented figure.
        for process in out:
            process.type = "M+C"
        out.append(
            Process(
                pid=_process_pid(f"{gpu_id}/mps-server"),
                name=MPS_SERVER_NAME,
                used_mib=0,
                gi_id=gi_id,
                ci_id=ci_id,
                sm_util=0,
            )
        )
    out.sort(key=lambda p: p.pid)
    return out


@dataclass(frozen=True, slots=True)
class Selection:
    """Which GPUs (whole, or only some of their MIG devices) the container may see."""

    whole: frozenset[int]  # record indices of fully visible GPUs
    migs: dict[int, frozenset[str]]  # record index -> visible MIG UUIDs (upper-case)


def parse_visible(spec: str | None, node: NodeTopology) -> Selection:
    """Interpret ``NVIDIA_VISIBLE_DEVICES`` as the NVIDIA container runtime does.

    Unset or ``all`` -> every GPU; ``none``/``void``/empty -> none; otherwise a comma list of GPU
    UUIDs, MIG UUIDs, GPU indices or ``<gpu>:<mig>`` index pairs. Unknown entries are skipped.
    """
    all_indices = frozenset(g.index for g in node.gpus)
    if spec is None:
        return Selection(all_indices, {})
    text = spec.strip()
    if text.lower() == "all":
        return Selection(all_indices, {})
    whole: set[int] = set()
    migs: dict[int, set[str]] = {}
    by_uuid = {g.id.upper(): g for g in node.gpus}
    by_index = {g.index: g for g in node.gpus}
    mig_owner: dict[str, GpuRecord] = {}
    for g in node.gpus:
        for m in g.mig_devices:
            mig_owner[m.uuid.upper()] = g
    for token in (t.strip() for t in text.split(",")):
        if not token or token.lower() in ("none", "void"):
            continue
        key = token.upper()
        if key in by_uuid:
            whole.add(by_uuid[key].index)
        elif key in mig_owner:
            migs.setdefault(mig_owner[key].index, set()).add(key)
        elif (token.isascii() and token.isdigit()) and int(token) in by_index:
            whole.add(int(token))
        elif ":" in token:
            gpu_part, _, mig_part = token.partition(":")
            gpu = (
                by_index.get(int(gpu_part)) if (gpu_part.isascii() and gpu_part.isdigit()) else None
            )
            if gpu is not None and (mig_part.isascii() and mig_part.isdigit()):
                ordered = sorted(gpu.mig_devices, key=lambda m: (m.gi_id, m.ci_id))
                position = int(mig_part)
                if position < len(ordered):
                    migs.setdefault(gpu.index, set()).add(ordered[position].uuid.upper())
    return Selection(frozenset(whole), {k: frozenset(v) for k, v in migs.items()})


def select_by_pod(pod_uid: str, node: NodeTopology) -> tuple[Selection, dict[int, float]]:
    """The GPUs (or MIG devices) the record says pod ``pod_uid`` uses, and its memory share.

    For a pod no plugin allocated anything to (a Run:ai/KAI fractional pod: its reservation pod
    holds the GPU), the container has no visible-devices variable but knows its UID. It uses
    a GPU when the record has a usage entry or a holder for that UID. Its share of a GPU that
    a reservation pod holds is its usage entry's memory over the GPU's (what the status-updater
    derived from ``gpu-fraction`` / ``gpu-memory``); a GPU it holds itself is whole.
    """
    whole: set[int] = set()
    migs: dict[int, set[str]] = {}
    shares: dict[int, float] = {}
    for gpu in node.gpus:
        holders = [h for h in gpu.status.holders if h.pod_uid == pod_uid]
        usage = gpu.status.usage.get(pod_uid)
        if holders or usage is not None:
            whole.add(gpu.index)
            own = any(h.kind != HOLDER_RESERVATION for h in holders)
            memory = gpu.memory_mib or profile_for(gpu).memory_mib
            if usage is not None and not own and 0 < usage.fb_used_mib < memory:
                shares[gpu.index] = usage.fb_used_mib / memory
            continue
        for mig in gpu.mig_devices:
            if pod_uid in mig.usage or any(h.pod_uid == pod_uid for h in mig.holders):
                migs.setdefault(gpu.index, set()).add(mig.uuid.upper())
    return Selection(frozenset(whole), {k: frozenset(v) for k, v in migs.items()}), shares


def load_node(settings: Settings) -> NodeTopology:
    try:
        return read_node_state(settings.state_dir)
    except NodeStateError as exc:
        raise DriverUnavailableError(str(exc)) from exc


def build_snapshot(node: NodeTopology, settings: Settings, t: float | None = None) -> Snapshot:
    now = settings.fixed_time if settings.fixed_time is not None else time.time()
    if t is not None:
        now = t
    shares: dict[int, float] = {}
    if settings.visible_devices is None and settings.pod_uid:
        # No plugin named our GPUs (a fractional pod): the record's entries for our UID do.
        selection, shares = select_by_pod(settings.pod_uid, node)
    else:
        selection = parse_visible(settings.visible_devices, node)
    ctx = _ProcContext(
        hostname=settings.hostname or os.uname().nodename,
        own_name=own_process_name() if node.gpus else "",
        bucket=math.floor(now / BUCKET_SECONDS),
        seed=settings.seed,
    )
    views: list[GpuView] = []
    driver = node.driver_version
    cuda = node.cuda_version
    for gpu in sorted(node.gpus, key=lambda g: (normalise_bus_id(g.bus_id), g.index)):
        whole = gpu.index in selection.whole
        mig_subset = selection.migs.get(gpu.index)
        if not whole and mig_subset is None:
            continue
        profile = profile_for(gpu)
        driver = driver or profile.driver_version
        cuda = cuda or profile.cuda_version
        gpu_sample = sample_gpu(gpu, profile, now, seed=settings.seed)
        migs: list[MigView] = []
        if gpu.mig_enabled:
            ordered = sorted(gpu.mig_devices, key=lambda m: (m.gi_id, m.ci_id))
            for position, mig in enumerate(ordered):
                if not whole and mig_subset is not None and mig.uuid.upper() not in mig_subset:
                    continue
                mig_profile = _find_mig_profile(profile, mig.profile)
                slices = mig.placement_size or (mig_profile.memory_slices if mig_profile else 1)
                view = MigView(
                    index=position,
                    device=mig,
                    profile=mig_profile,
                    sample=sample_mig_device(
                        gpu, mig, profile, now, seed=settings.seed, parent=gpu_sample
                    ),
                    bar1_total_mib=max(0, profile.bar1_mib * slices // 8 - 1),
                )
                view.processes = _processes(
                    mig.uuid,
                    mig.usage,
                    mig.holders,
                    ctx,
                    process_memory_mib(gpu, profile, mig),
                    gi_id=mig.gi_id,
                    ci_id=mig.ci_id,
                )
                migs.append(view)
        view_gpu = GpuView(
            index=len(views),
            record=gpu,
            profile=profile,
            sample=gpu_sample,
            migs=migs,
            t=now,
            seed=settings.seed,
            fraction=(
                settings.gpu_fraction
                if settings.fraction_from_env
                else shares.get(gpu.index, settings.gpu_fraction)
            ),
        )
        if whole and not gpu.mig_enabled:
            view_gpu.processes = _processes(
                gpu.id,
                gpu.status.usage,
                gpu.status.holders,
                ctx,
                _within(process_memory_mib(gpu, profile), view_gpu.memory_used_mib),
            )
        views.append(view_gpu)
    return Snapshot(
        node=node,
        gpus=views,
        t=now,
        driver_version=driver or FALLBACK_DRIVER,
        cuda_version=cuda or FALLBACK_CUDA,
        attached=len(views),
    )


def _within(memory: dict[str, int], used_mib: int) -> dict[str, int]:
    """Process memory that fits a fractional pod's view of Used (the model's order: memory the
    model granted first stays first)."""
    out: dict[str, int] = {}
    left = max(0, used_mib)
    for uid, mib in memory.items():
        out[uid] = min(mib, left)
        left -= out[uid]
    return out


def _find_mig_profile(profile: GpuProfile, name: str) -> MigProfile | None:
    for candidate in profile.mig_profiles:
        if name in (candidate.name, candidate.resource_suffix):
            return candidate
    return None
