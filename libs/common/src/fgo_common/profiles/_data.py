"""Built-in GPU profiles, gathered from the per-architecture modules in ``data/``.

Each value's source is recorded in the profile's ``sources``; docs/profiles.md tabulates them.
Order: by architecture, oldest first (``ProfileCatalog.keys()`` sorts by key anyway).
"""

from __future__ import annotations

from fgo_common.profiles.data.ada import NVIDIA_L4, NVIDIA_L40S
from fgo_common.profiles.data.ampere import (
    NVIDIA_A10G,
    NVIDIA_A100_SXM4_40GB,
    NVIDIA_A100_SXM4_80GB,
)
from fgo_common.profiles.data.blackwell import NVIDIA_B200, NVIDIA_GB200, NVIDIA_GB300
from fgo_common.profiles.data.hopper import H100_80GB_HBM3, NVIDIA_H200
from fgo_common.profiles.data.kepler import TESLA_K80
from fgo_common.profiles.data.turing import TESLA_T4
from fgo_common.profiles.model import GpuProfile

BUILTIN_PROFILES: tuple[GpuProfile, ...] = (
    TESLA_K80,
    TESLA_T4,
    NVIDIA_A10G,
    NVIDIA_A100_SXM4_40GB,
    NVIDIA_A100_SXM4_80GB,
    NVIDIA_L4,
    NVIDIA_L40S,
    H100_80GB_HBM3,
    NVIDIA_H200,
    NVIDIA_B200,
    NVIDIA_GB200,
    NVIDIA_GB300,
)
