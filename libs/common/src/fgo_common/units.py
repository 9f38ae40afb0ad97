"""Memory quantities as users write them, normalised to MiB (what NVML reports)."""

from __future__ import annotations

import math
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


# --- Kubernetes quantities (CPU and memory of pods, nodes and NodeResourceTopology zones) -------

_QUANTITY_RE = re.compile(
    r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:([eE][+-]?\d{1,3})|([numkMGTPE]|[KMGTPE]i))?$"
)
_QUANTITY_SUFFIX: dict[str, Fraction] = {
    "": Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(1000),
    "M": Fraction(1000**2),
    "G": Fraction(1000**3),
    "T": Fraction(1000**4),
    "P": Fraction(1000**5),
    "E": Fraction(1000**6),
    "Ki": Fraction(1024),
    "Mi": Fraction(1024**2),
    "Gi": Fraction(1024**3),
    "Ti": Fraction(1024**4),
    "Pi": Fraction(1024**5),
    "Ei": Fraction(1024**6),
}
MAX_CPU_MILLIS = 100_000 * 1000  # 100 000 CPUs: anything larger is a typo
MAX_MEMORY_BYTES = 1024**5  # 1 PiB


class QuantityError(ValueError):
    """Not a Kubernetes quantity (``resource.Quantity`` syntax)."""


def parse_quantity(value: object) -> Fraction:
    """A Kubernetes quantity (``"1500m"``, ``"64Gi"``, ``"1e3"``, ``16``) as an exact fraction."""
    if isinstance(value, bool):
        raise QuantityError(f"not a quantity: {_shown(value)}")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"not a quantity: {_shown(value)}")
        return Fraction(str(value))
    if not isinstance(value, str) or len(value) > 64:
        raise QuantityError(f"not a quantity: {_shown(value)}")
    match = _QUANTITY_RE.match(value.strip())
    if not match:
        raise QuantityError(f"not a quantity: {_shown(value)}")
    sign, number, exponent, suffix = match.groups()
    amount = Fraction(number if not number.endswith(".") else number[:-1])
    if exponent:
        amount *= Fraction(10) ** int(exponent[1:])
    else:
        amount *= _QUANTITY_SUFFIX[suffix or ""]
    return -amount if sign == "-" else amount


def quantity_millis(value: object) -> int:
    """A CPU quantity in millicores, rounded up as Kubernetes does (``0.1m`` is ``1m``)."""
    amount = parse_quantity(value) * 1000
    return -((-amount.numerator) // amount.denominator)


def quantity_bytes(value: object) -> int:
    """A memory quantity in bytes, rounded up as Kubernetes does."""
    amount = parse_quantity(value)
    return -((-amount.numerator) // amount.denominator)


def format_millis(millis: int) -> str:
    """Millicores in the canonical form of a Kubernetes quantity: ``16``, ``1500m``."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_bytes(n_bytes: int) -> str:
    """Bytes in the canonical form of a Kubernetes quantity: ``64Gi``, ``1536Mi``, ``1000``."""
    if n_bytes == 0:
        return "0"
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        factor = int(_QUANTITY_SUFFIX[suffix])
        if n_bytes % factor == 0:
            return f"{n_bytes // factor}{suffix}"
    return str(n_bytes)
