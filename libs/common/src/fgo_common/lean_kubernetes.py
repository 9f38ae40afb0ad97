"""Import kubernetes-asyncio without its ~1,500 generated modules.

``import kubernetes_asyncio`` (any part of it) runs package ``__init__`` files that import every
API class and all 767 model modules: ~66 MiB of RSS in every service (docs/benchmarks.md,
"Memory"), although our services exchange raw JSON (``_preload_content=False``) and never build
a model. :func:`install` registers the four eager packages (``kubernetes_asyncio``, ``.client``,
``.client.api``, ``.client.models``) as lazy modules before anything imports them: each name the
package would have imported is read from its own ``__init__.py`` and imported on first
attribute access. Everything else is the unmodified library, so a caller that does use a model
(``client.V1Pod``, or the ApiClient deserialising a typed response) still gets it.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

ROOT = "kubernetes_asyncio"
_LAZY_PACKAGES = (ROOT, f"{ROOT}.client", f"{ROOT}.client.api", f"{ROOT}.client.models")
_FROM_IMPORT = re.compile(r"^from ([\w.]+) import (\w+)(?: as (\w+))?\s*$", re.MULTILINE)
_IMPORT_AS = re.compile(r"^import ([\w.]+) as (\w+)\s*$", re.MULTILINE)


class LazyPackage(types.ModuleType):
    """A package module whose exported names are imported when first read."""

    _fgo_exports: dict[str, tuple[str, str | None]]

    def __getattr__(self, name: str) -> Any:
        target = self.__dict__.get("_fgo_exports", {}).get(name)
        if target is None:
            # The eager package had imported its submodules, so they were attributes too.
            if name.startswith("__") or importlib.util.find_spec(f"{self.__name__}.{name}") is None:
                raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
            target = (f"{self.__name__}.{name}", None)
        module_name, attribute = target
        module = importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._fgo_exports))


def _exports(source: str) -> dict[str, tuple[str, str | None]]:
    """Names an ``__init__.py`` binds by importing, mapped to (module, attribute or None)."""
    found: dict[str, tuple[str, str | None]] = {}
    for module, attribute, alias in _FROM_IMPORT.findall(source):
        if module.startswith(ROOT):
            found[alias or attribute] = (module, attribute)
    for module, alias in _IMPORT_AS.findall(source):
        if module.startswith(ROOT):
            found[alias] = (module, None)
    return found


def _constants(source: str) -> dict[str, str]:
    return dict(re.findall(r"^(__\w+__) = \"([^\"]*)\"\s*$", source, re.MULTILINE))


def install() -> bool:
    """Register the lazy packages; False (and no change) when kubernetes-asyncio is already
    imported, is not installed, or its layout is not the one this was written against."""
    if ROOT in sys.modules:
        return False
    built: list[LazyPackage] = []
    for name in _LAZY_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or spec.submodule_search_locations is None:
            for module in built:
                sys.modules.pop(module.__name__, None)
            return False
        source = Path(spec.origin).read_text(encoding="utf-8")
        module = LazyPackage(name)
        module.__spec__ = spec
        module.__loader__ = spec.loader
        module.__file__ = spec.origin
        module.__path__ = list(spec.submodule_search_locations)
        module.__package__ = name
        module._fgo_exports = _exports(source)
        for key, value in _constants(source).items():
            setattr(module, key, value)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
        built.append(module)
    _lazy_module("urllib3")
    return True


class DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is read; then the real module is
    imported (and replaces this one in ``sys.modules``) and the attribute is read from it.
    ``__spec__``/``__path__`` are real attributes, so ``import name`` (which reads them) does
    not count as a use, and submodules import as usual."""

    def __getattr__(self, name: str) -> Any:
        real = self.__dict__.get("_fgo_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            self.__dict__["_fgo_real"] = real
        return getattr(real, name)


def _lazy_module(name: str) -> None:
    """Defer ``name``. kubernetes-asyncio's ``Configuration`` imports urllib3 at the top for
    one call (basic-auth headers); executing it costs ~35 ms of CPU at every start-up of every
    service (and its import chain: http.client, importlib.metadata, six)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return
    module = DeferredModule(name)
    module.__spec__ = spec
    module.__loader__ = spec.loader
    module.__file__ = spec.origin
    if spec.submodule_search_locations is not None:
        module.__path__ = list(spec.submodule_search_locations)
    module.__package__ = name if spec.submodule_search_locations is not None else spec.parent
    sys.modules[name] = module
