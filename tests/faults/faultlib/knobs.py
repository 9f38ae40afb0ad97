"""Environment knobs of the fault suite (see tests/faults/conftest.py)."""

from __future__ import annotations

import os
import random


def soak_seconds() -> float:
    """Total time to spend repeating injections (``make soak``); 0 = each fault once."""
    return float(os.environ.get("FGO_FAULT_SOAK_SECONDS", "0"))


def outage_seconds(rng: random.Random) -> float:
    """How long a component stays down: fixed for the quick run, 10-30 s when soaking."""
    if soak_seconds() > 0:
        return rng.uniform(10.0, 30.0)
    return float(os.environ.get("FGO_FAULT_OUTAGE_SECONDS", "10"))
