"""Typed settings from environment variables: one object, loaded and validated once at start.

Each service declares a frozen dataclass whose fields carry ``metadata={"env": ..., "doc": ...}``;
:func:`load_settings` fills it from the environment and exits with one clear message naming the
variable and the allowed values when something is wrong. No ``os.environ`` elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A setting with a value outside its allowed range; the message names the variable."""


def env_field(env: str, default: Any, doc: str, *, choices: tuple[str, ...] = ()) -> Any:
    """Declare a setting read from environment variable ``env``."""
    return dataclasses.field(default=default, metadata={"env": env, "doc": doc, "choices": choices})


def _convert(name: str, raw: str, kind: Any, choices: tuple[str, ...]) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw == "":
            return None
        kind = args[0]
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"{name}={raw!r}: expected a boolean (true/false)")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: expected an integer") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if choices and raw not in choices:
        raise SettingsError(f"{name}={raw!r}: allowed values are {', '.join(choices)}")
    return raw


def load_settings(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = f.metadata.get("env")
        if var and var in env:
            values[f.name] = _convert(var, env[var], hints[f.name], f.metadata.get("choices", ()))
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if callable(validate):
        validate()
    return settings


def settings_table(cls: type[Any]) -> str:
    """Markdown table of a settings class, for service READMEs."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if "env" in f.metadata:
            rows.append(f"| `{f.metadata['env']}` | `{f.default!r}` | {f.metadata['doc']} |")
    return "\n".join(rows)
