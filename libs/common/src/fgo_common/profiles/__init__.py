"""GPU product profiles: built-in data (with sources) and lookup."""

from fgo_common.profiles.catalog import (
    BUILTIN_CATALOG,
    DEFAULT_PROFILE_KEY,
    ProfileCatalog,
    UnknownProfileError,
    normalise_product,
)
from fgo_common.profiles.model import GpuProfile, MigPlacement, MigProfile

__all__ = [
    "BUILTIN_CATALOG",
    "DEFAULT_PROFILE_KEY",
    "GpuProfile",
    "MigPlacement",
    "MigProfile",
    "ProfileCatalog",
    "UnknownProfileError",
    "normalise_product",
]
