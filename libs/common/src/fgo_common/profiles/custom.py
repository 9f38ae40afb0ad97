"""Custom GPU profiles: the chart's ``customProfiles`` (ConfigMap ``topology``, key
``profiles.yml``), in the reference's profile.yaml shape (nvml-mock config).

Only what the reference's fake backend takes from a profile is read: ``device_defaults.name``
(the product name NVML prints), ``device_defaults.memory.total_bytes``,
``system.driver_version`` and ``system.cuda_version``. Every other key of that schema (PCI ids,
clocks, power, ...) is accepted and ignored. The physics come from the built-in profile of the
same product name, or, for a product we have no data for, from the default profile (as for any
custom product of the topology config; docs/profiles.md).

Only the status-updater reads custom profiles: it resolves a pool's GPU type against built-in
plus custom profiles and writes product name, memory and driver into each node's record. Every
other service derives the profile from the record (``telemetry.profile_for``,
``dra.resolve_profile``): by product name a built-in profile, else the default profile under the
record's name and memory. That is the same profile the status-updater built, which is why a
custom profile may not take the name of a built-in one (it would resolve differently elsewhere).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import yaml

from fgo_common.profiles.catalog import BUILTIN_CATALOG, DEFAULT_PROFILE_KEY, ProfileCatalog
from fgo_common.profiles.model import GpuProfile

PROFILES_DATA_KEY = "profiles.yml"
_MIB = 1024 * 1024
# DNS label, as the chart's schema requires (the reference made a ConfigMap name of it).
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class CustomProfileError(ValueError):
    """A custom profile that cannot be used; ``path`` names the offending key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CustomProfileError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _version(value: object, path: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CustomProfileError(path, f"expected a version string, got {value!r}")
    text = str(value).strip()
    if len(text) > 32:
        raise CustomProfileError(path, "longer than 32 characters")
    return text


def parse_custom_profile(
    key: str, raw: object, base: ProfileCatalog = BUILTIN_CATALOG
) -> GpuProfile:
    """One entry of ``customProfiles`` as a profile with key ``key``."""
    path = f"customProfiles.{key}"
    if not key or len(key) > 63 or not set(key) <= _NAME_CHARS or key[0] == "-" or key[-1] == "-":
        raise CustomProfileError(path, "the name must be a DNS label (a-z, 0-9, -)")
    clash = base.find(key)
    if clash is not None:
        raise CustomProfileError(
            path, f"{key!r} already names the built-in profile {clash.key!r}; choose another name"
        )
    body = _mapping(raw, path)
    defaults = _mapping(body.get("device_defaults"), f"{path}.device_defaults")
    name = defaults.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CustomProfileError(f"{path}.device_defaults.name", "required: the product name")
    name = name.strip()
    if len(name) > 96:
        raise CustomProfileError(f"{path}.device_defaults.name", "longer than 96 characters")
    memory = _mapping(defaults.get("memory"), f"{path}.device_defaults.memory")
    total = memory.get("total_bytes")
    memory_mib = 0
    if total is not None:
        if isinstance(total, bool) or not isinstance(total, int) or total < _MIB:
            raise CustomProfileError(
                f"{path}.device_defaults.memory.total_bytes",
                f"must be a whole number of bytes >= 1 MiB, got {total!r}",
            )
        memory_mib = total // _MIB
    system = _mapping(body.get("system"), f"{path}.system")
    driver = _version(system.get("driver_version"), f"{path}.system.driver_version")
    cuda = _version(system.get("cuda_version"), f"{path}.system.cuda_version")

    known = base.find(name)
    if known is None and not memory_mib:
        raise CustomProfileError(
            f"{path}.device_defaults.memory.total_bytes",
            f"required: {name!r} is not a built-in product, so its memory size is not known",
        )
    if known is not None:
        mib = memory_mib or known.memory_mib
        profile = dataclasses.replace(
            known,
            memory_mib=mib,
            memory_reserved_mib=min(known.memory_reserved_mib, mib // 8),
            sources={**known.sources, "memory_mib": f"customProfiles.{key}"},
        )
    else:
        generic = base.get(DEFAULT_PROFILE_KEY)
        profile = dataclasses.replace(
            generic,
            name=name,
            memory_mib=memory_mib,
            memory_reserved_mib=0,
            mig_profiles=(),
            mig_max_gpu_instances=0,
            sources={"all": f"customProfiles.{key}: name and memory; generic values otherwise"},
        )
    return dataclasses.replace(
        profile,
        key=key,
        aliases=(),
        driver_version=driver or profile.driver_version,
        cuda_version=cuda or profile.cuda_version,
    )


def parse_custom_profiles(
    raw: object, base: ProfileCatalog = BUILTIN_CATALOG
) -> dict[str, GpuProfile]:
    """``customProfiles`` (name -> profile.yaml object) as profiles keyed by name."""
    entries = _mapping(raw, "customProfiles")
    out: dict[str, GpuProfile] = {}
    for key, body in entries.items():
        if not isinstance(key, str):
            raise CustomProfileError("customProfiles", f"profile names are strings, got {key!r}")
        out[key] = parse_custom_profile(key, body, base)
    return out


def custom_catalog(text: str | None, base: ProfileCatalog = BUILTIN_CATALOG) -> ProfileCatalog:
    """The catalog a topology ConfigMap describes: ``base`` plus the profiles of its
    ``profiles.yml`` (``text``; None or empty: ``base`` itself)."""
    if not text or not text.strip():
        return base
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CustomProfileError(PROFILES_DATA_KEY, f"not valid YAML: {exc}") from exc
    custom = parse_custom_profiles(raw, base)
    return base.with_keyed(custom.values()) if custom else base
