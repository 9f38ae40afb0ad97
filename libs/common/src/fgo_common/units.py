"""Memory quantities as users write them, normalised to MiB (what NVML reports)."""

from __future__ import annotations

import re
from fractions import Fraction

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

# Decimal units are taken as NVIDIA marketing sizes ("12GB" on a K80 means 12 GiB-ish); we follow
# Kubernetes quantity semantics exactly instead, so the conversion is predictable.
_UNIT_BYTES: dict[str, int] = {
    "": 1024 * 1024,  # a bare number is MiB
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}

ALLOWED_MEMORY_UNITS = (
    "MiB (bare integer)",
    "B",
    "KB",
    "Ki",
    "MB",
    "Mi",
    "MiB",
    "GB",
    "Gi",
    "GiB",
    "TB",
    "Ti",
    "TiB",
)


# No GPU comes near this (1 PiB); anything larger is a typo, and refusing it keeps every
# later computation on ordinary integers.
MAX_MEMORY_MIB = 1024**3


class MemoryParseError(ValueError):
    """A memory quantity that is not a positive size in a known unit."""


def _shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages end up in Events and logs."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_memory_mib(value: object) -> int:
    """Return ``value`` in MiB (rounded down). Integers are MiB; strings carry a unit.

    >>> parse_memory_mib("80Gi"), parse_memory_mib("81559MiB"), parse_memory_mib(11441)
    (81920, 81559, 11441)
    """
    if isinstance(value, bool):
        raise MemoryParseError(
            f"expected a size such as 11441, '12GB' or '80Gi', got {_shown(value)}"
        )
    if isinstance(value, int):
        mib = value
    elif isinstance(value, float) and value.is_integer():
        mib = int(value)
    elif isinstance(value, str):
        match = _MEMORY_RE.match(value)
        if not match:
            raise MemoryParseError(
                f"cannot parse {_shown(value)} as a memory size; use a number with one of the "
                f"units {', '.join(ALLOWED_MEMORY_UNITS)}"
            )
        number, unit = match.groups()
        factor = _UNIT_BYTES.get(unit.lower())
        if factor is None:
            raise MemoryParseError(
                f"unknown memory unit {unit!r} in {_shown(value)}; allowed units: "
                f"{', '.join(ALLOWED_MEMORY_UNITS)}"
            )
        if len(number.split(".")[0].lstrip("0")) > 20:
            raise MemoryParseError(f"memory {_shown(value)} is larger than 1 PiB; check the unit")
        if len(number) > 40:
            raise MemoryParseError(f"memory {_shown(value)} has too many digits")
        # Exact arithmetic: a float would turn a 400-digit number into inf and then NaN.
        mib = int(Fraction(number) * factor // (1024 * 1024))
    else:
        raise MemoryParseError(
            f"expected a size such as 11441, '12GB' or '80Gi', got {_shown(value)}"
        )
    if mib <= 0:
        raise MemoryParseError(f"memory must be positive, got {_shown(value)}")
    if mib > MAX_MEMORY_MIB:
        raise MemoryParseError(f"memory {_shown(value)} is larger than 1 PiB; check the unit")
    return mib
