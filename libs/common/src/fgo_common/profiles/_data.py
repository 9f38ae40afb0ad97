"""Built-in GPU profiles, gathered from the per-architecture modules in ``data/``.

Each value's source is recorded in the profile's ``sources``; docs/profiles.md tabulates them.
"""

from __future__ import annotations

from fgo_common.profiles.data.hopper import H100_80GB_HBM3
from fgo_common.profiles.data.kepler import TESLA_K80
from fgo_common.profiles.model import GpuProfile

BUILTIN_PROFILES: tuple[GpuProfile, ...] = (TESLA_K80, H100_80GB_HBM3)
