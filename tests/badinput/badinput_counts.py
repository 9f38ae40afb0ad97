"""How many bad inputs each surface was given in this session (printed by conftest.py)."""

from __future__ import annotations

from collections import Counter

TRIED: Counter[str] = Counter()


def tried(surface: str, n: int = 1) -> None:
    TRIED[surface] += n
