"""Lookup of built-in and custom GPU profiles by key, product name or alias."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

from fgo_common.profiles._data import BUILTIN_PROFILES
from fgo_common.profiles.model import GpuProfile

DEFAULT_PROFILE_KEY = "k80"


def normalise_product(name: str) -> str:
    """Case-, space- and dash-insensitive form used to match user-written GPU names."""
    return re.sub(r"[^a-z0-9+]", "", name.lower().removeprefix("nvidia").strip())


class UnknownProfileError(KeyError):
    """A GPU type or profile name that matches no built-in or custom profile."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown GPU type/profile {self.name!r}; known: {', '.join(self.known)}"


class ProfileCatalog:
    """Built-in profiles plus any custom ones, indexed by every name they answer to."""

    def __init__(self, profiles: Iterable[GpuProfile] = BUILTIN_PROFILES) -> None:
        self._by_key: dict[str, GpuProfile] = {}
        self._index: dict[str, GpuProfile] = {}
        for profile in profiles:
            self.add(profile)

    def add(self, profile: GpuProfile) -> None:
        self._by_key[profile.key] = profile
        for name in (profile.key, profile.name, *profile.aliases):
            self._index[normalise_product(name)] = profile

    def with_custom(self, custom: Mapping[str, GpuProfile]) -> ProfileCatalog:
        catalog = ProfileCatalog(self._by_key.values())
        for profile in custom.values():
            catalog.add(profile)
        return catalog

    def with_keyed(self, profiles: Iterable[GpuProfile]) -> ProfileCatalog:
        """This catalog plus ``profiles`` found by their key only: their product names and
        aliases keep finding what they found before (customProfiles, see custom.py)."""
        catalog = ProfileCatalog(self._by_key.values())
        catalog._index = dict(self._index)
        for profile in profiles:
            catalog._by_key[profile.key] = profile
            catalog._index[normalise_product(profile.key)] = profile
        return catalog

    def get(self, name: str) -> GpuProfile:
        profile = self._index.get(normalise_product(name))
        if profile is None:
            raise UnknownProfileError(name, self._by_key)
        return profile

    def find(self, name: str) -> GpuProfile | None:
        return self._index.get(normalise_product(name))

    def keys(self) -> list[str]:
        return sorted(self._by_key)

    def __iter__(self) -> Iterator[GpuProfile]:
        return iter(self._by_key.values())


BUILTIN_CATALOG = ProfileCatalog()
