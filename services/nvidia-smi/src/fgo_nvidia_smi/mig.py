"""``nvidia-smi mig -lgip / -lgi / -lci``: MIG profile and instance tables.

``-lgip`` reproduces ../shared/reference/nvidia-smi-h100/mig_lgip.txt exactly for an H100; the
instance tables use the same driver generation's column layout.
"""

from __future__ import annotations

from fgo_common.profiles import MigProfile

from fgo_nvidia_smi.cli import RC_OK, NotSimulatedError, Options
from fgo_nvidia_smi.state import GpuView, MigView, Snapshot

NO_MIG_ENABLED = "No MIG-enabled devices found.\n"
NO_MIG_SUPPORTED = "No MIG-supported devices found.\n"

LGIP_RULE = "+" + "-" * 79 + "+"
LGIP_HEADER = (
    LGIP_RULE,
    "| GPU instance profiles:                                                        |",
    "| GPU   Name               ID    Instances   Memory     P2P    SM    DEC   ENC  |",
    "|                                Free/Total   GiB              CE    JPEG  OFA  |",
    "|" + "=" * 79 + "|",
)
LGI_RULE = "+" + "-" * 57 + "+"
LGI_HEADER = (
    LGI_RULE,
    "| GPU instances:                                          |",
    "| GPU   Name               Profile  Instance   Placement  |",
    "|                            ID       ID       Start:Size |",
    "|" + "=" * 57 + "|",
)
LCI_RULE = "+" + "-" * 68 + "+"
LCI_HEADER = (
    LCI_RULE,
    "| Compute instances:                                                 |",
    "| GPU     GPU       Name             Profile   Instance   Placement  |",
    "|       Instance                       ID        ID       Start:Size |",
    "|         ID                                                         |",
    "|" + "=" * 68 + "|",
)


def ordered_profiles(gpu: GpuView) -> list[MigProfile]:
    """NVML enumerates profiles by slice count, then by profile index (1g before 1g+me ...)."""
    indexed = list(enumerate(gpu.profile.mig_profiles))

    def key(item: tuple[int, MigProfile]) -> tuple[int, int]:
        position, prof = item
        nvml_index = prof.nvml_profile_index if prof.nvml_profile_index >= 0 else position
        return (prof.compute_slices, nvml_index)

    return [prof for _, prof in sorted(indexed, key=key)]


def free_instances(gpu: GpuView, prof: MigProfile) -> int:
    """How many more instances of ``prof`` fit beside the GPU instances that exist."""
    used: set[int] = set()
    for dev in gpu.record.mig_devices if gpu.mig_enabled else ():
        used.update(range(dev.placement_start, dev.placement_start + dev.placement_size))
    free = 0
    for place in prof.placements:
        slots = set(range(place.start, place.start + place.size))
        if not slots & used:
            used |= slots
            free += 1
    return min(free, prof.max_instances)


def _by_profile(gpu: GpuView) -> list[MigView]:
    """Instances grouped the way NVML enumerates them: per profile (in -lgip order), then by id."""
    rank = {prof.name: pos for pos, prof in enumerate(ordered_profiles(gpu))}
    return sorted(
        gpu.migs,
        key=lambda m: (rank.get(m.device.profile, len(rank)), m.device.gi_id, m.device.ci_id),
    )


def _lgip(gpus: list[GpuView]) -> str:
    capable = [g for g in gpus if g.profile.mig_capable]
    if not capable:
        return NO_MIG_SUPPORTED
    lines = list(LGIP_HEADER)
    for gpu in capable:
        for prof in ordered_profiles(gpu):
            inst = f"{free_instances(gpu, prof)}/{prof.max_instances}"
            mem = f"{prof.memory_mib / 1024:.2f}"
            p2p = "Yes" if prof.p2p else "No"
            lines.append(
                f"|{gpu.index:>4}  {'MIG ' + prof.name:<18}{prof.gi_profile_id:>4}     "
                f"{inst:<11}{mem:<11}{p2p:<7}{prof.sm_count:<7}{prof.decoders:<6}"
                f"{prof.encoders:<4}|"
            )
            lines.append(f"|{'':62}{prof.copy_engines:>2}{'':5}{prof.jpeg:<6}{prof.ofa:<4}|")
            lines.append(LGIP_RULE)
    return "\n".join(lines) + "\n"


def _lgi(gpus: list[GpuView], opts: Options) -> str:
    enabled = [g for g in gpus if g.mig_enabled]
    if not enabled:
        return NO_MIG_ENABLED
    lines = list(LGI_HEADER)
    for gpu in enabled:
        seen: set[int] = set()
        for mig in _by_profile(gpu):
            dev = mig.device
            if dev.gi_id in seen or (opts.gi is not None and dev.gi_id not in opts.gi):
                continue
            seen.add(dev.gi_id)
            place = f"{dev.placement_start}:{dev.placement_size}"
            lines.append(
                f"|{gpu.index:>4}  {'MIG ' + dev.profile:<18}{dev.gi_profile_id:>6}"
                f"{dev.gi_id:>9}{'':10}{place:<8}|"
            )
            lines.append(LGI_RULE)
    if len(lines) == len(LGI_HEADER):
        lines.append(LGI_RULE)
    return "\n".join(lines) + "\n"


def _lci(gpus: list[GpuView], opts: Options) -> str:
    enabled = [g for g in gpus if g.mig_enabled]
    if not enabled:
        return NO_MIG_ENABLED
    lines = list(LCI_HEADER)
    for gpu in enabled:
        for mig in _by_profile(gpu):
            dev = mig.device
            if opts.gi is not None and dev.gi_id not in opts.gi:
                continue
            if opts.ci is not None and dev.ci_id not in opts.ci:
                continue
            slices = mig.profile.compute_slices if mig.profile else 1
            place = f"0:{slices}"
            lines.append(
                f"|{gpu.index:>4}{dev.gi_id:>7}{'':7}{'MIG ' + dev.profile:<18}"
                f"{dev.ci_profile_id:>4}{dev.ci_id:>10}{'':10}{place:<8}|"
            )
            lines.append(LCI_RULE)
    if len(lines) == len(LCI_HEADER):
        lines.append(LCI_RULE)
    return "\n".join(lines) + "\n"


def render_mig(snapshot: Snapshot, opts: Options) -> tuple[str, int]:
    if opts.action == "lgip":
        return _lgip(snapshot.gpus), RC_OK
    if opts.action == "lgi":
        return _lgi(snapshot.gpus, opts), RC_OK
    if opts.action == "lci":
        return _lci(snapshot.gpus, opts), RC_OK
    raise NotSimulatedError(f"nvidia-smi mig -{opts.action}")
