"""The command line every service shares: ``--help``, ``--version``, and one-line failures.

Services are configured by environment variables (the chart sets them), so the command line only
answers questions: ``--help`` lists every setting with its default, ``--version`` the package
version. Anything else on the command line, an invalid setting, or no reachable Kubernetes API
configuration ends the process with one line on stderr and exit code 2 (a usage error, which a
crash-looping pod's ``kubectl logs`` shows whole), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn, TypeVar

from fgo_common.kube.client import KubeConfigError, check_kube_config
from fgo_common.runtime.settings import SettingsError, load_settings

S = TypeVar("S")
USAGE_ERROR = 2


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def settings_help(cls: type[Any]) -> str:
    """The settings of ``cls`` as plain text: variable, default, meaning."""
    lines = ["settings (environment variables):"]
    for f in dataclasses.fields(cls):
        var = f.metadata.get("env")
        if not var:
            continue
        default = f.default if f.default is not dataclasses.MISSING else ""
        lines.append(f"  {var}={default!s}")
        choices = f.metadata.get("choices") or ()
        doc = str(f.metadata.get("doc", ""))
        if choices:
            doc += f" (one of: {', '.join(choices)})"
        lines.append(f"      {doc}")
    return "\n".join(lines)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_command_line(
    prog: str, description: str, settings_cls: type[Any], argv: Sequence[str] | None
) -> None:
    """Answer ``--help``/``--version`` (exit 0) or refuse anything else (exit 2)."""
    parser = _OneLineParser(
        prog=prog,
        description=description,
        epilog=settings_help(settings_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {_version(prog)}")
    parser.parse_args(argv)


def service_main(
    *,
    component: str,
    prog: str,
    description: str,
    settings_cls: type[S],
    start: Callable[[S], int],
    kubeconfig: Callable[[S], str] = lambda s: str(getattr(s, "kubeconfig", "")),
    argv: Sequence[str] | None = None,
) -> int:
    """Parse the command line, load the settings, check the API configuration, then ``start``."""
    parse_command_line(prog, description, settings_cls, sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings(settings_cls)
    except SettingsError as exc:
        print(f"{component}: invalid setting: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        asyncio.run(check_kube_config(kubeconfig(settings) or None))
    except KubeConfigError as exc:
        print(f"{component}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return start(settings)
