"""Small helpers that keep the profile tables readable."""

from __future__ import annotations

from fgo_common.profiles.model import MigPlacement, MigProfile

# NVML compute-instance profile ids of the full-size CI in a GI with this many compute slices
# (NVML_COMPUTE_INSTANCE_PROFILE_{1,2,3,4,7,8,6}_SLICE = 0..6); `nvidia-smi mig -lcip` marks it `*`.
CI_PROFILE_FOR_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}


def placements(starts: tuple[int, ...] | range, size: int) -> tuple[MigPlacement, ...]:
    return tuple(MigPlacement(start=s, size=size) for s in starts)


def mig(
    name: str,
    *,
    gi: int,
    nvml_index: int,
    count: int,
    memory_mib: int,
    memory_slices: int,
    compute_slices: int,
    sm: int,
    ce: int,
    dec: int,
    enc: int,
    jpg: int,
    ofa: int,
    starts: tuple[int, ...] | range,
    p2p: bool = False,
) -> MigProfile:
    """One GI profile; its placements all have the profile's memory-slice count as size."""
    return MigProfile(
        name=name,
        gi_profile_id=gi,
        ci_profile_id=CI_PROFILE_FOR_SLICES[compute_slices],
        max_instances=count,
        memory_mib=memory_mib,
        memory_slices=memory_slices,
        compute_slices=compute_slices,
        sm_count=sm,
        copy_engines=ce,
        decoders=dec,
        encoders=enc,
        jpeg=jpg,
        ofa=ofa,
        p2p=p2p,
        placements=placements(starts, memory_slices),
        nvml_profile_index=nvml_index,
    )


def sourced(*entries: tuple[str, str]) -> dict[str, str]:
    """Expand ``("field_a field_b", "where from")`` pairs into a per-field source map.

    Keying sources by single field lets a test check that every value has one.
    """
    out: dict[str, str] = {}
    for fields, source in entries:
        for name in fields.split():
            if name in out:
                raise ValueError(f"field {name!r} has two sources")
            out[name] = source
    return out
