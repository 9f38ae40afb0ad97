"""Layering of the workspace's packages, read from the source with ``ast`` (no import runs):
services never import each other, libs never import services, and no shipped code imports a
test-only module (what a service's ``src/`` imports is what its image installs).

Every import counts, also inside functions and through ``importlib.import_module("...")`` with
a literal name; relative imports stay inside their package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Package:
    kind: str  # "lib" | "service"
    component: str  # directory name: "common", "status-updater"
    name: str  # import name: "fgo_common"
    src: Path


def packages(root: Path) -> list[Package]:
    found = []
    for kind, top in (("lib", "libs"), ("service", "services")):
        for project in sorted(root.glob(f"{top}/*/pyproject.toml")):
            for init in sorted(project.parent.glob("src/*/__init__.py")):
                found.append(Package(kind, project.parent.name, init.parent.name, init.parent))
    return found


def modules_of_tests(root: Path) -> set[str]:
    """Top-level names a test can import that no installed package provides: every module and
    package under a ``tests`` directory, at any depth (pytest and the conftests put the test
    directories themselves on ``sys.path``: ``faultlib`` is ``tests/faults/faultlib``)."""
    names = {"tests", "conftest"}
    for tests in [root / "tests", *root.glob("libs/*/tests"), *root.glob("services/*/tests")]:
        for path in tests.rglob("*.py"):
            names.add(path.stem)
            names.update(path.relative_to(tests).parts[:-1])
    return names


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            out.append((node.lineno, node.args[0].value.split(".")[0]))
    return out


def violations(root: Path) -> list[str]:
    pkgs = packages(root)
    services = {p.name: p for p in pkgs if p.kind == "service"}
    test_only = modules_of_tests(root) - {p.name for p in pkgs}
    found = []
    for pkg in pkgs:
        for path in sorted(pkg.src.rglob("*.py")):
            where = path.relative_to(root)
            for line, module in sorted(imported(path)):
                if module in services and module != pkg.name:
                    if pkg.kind == "service":
                        why = "services never import each other; share through libs/"
                    else:
                        why = "libs never import services"
                    found.append(f"{where}:{line}: imports {module} ({why})")
                elif module in test_only:
                    found.append(f"{where}:{line}: imports test-only module {module}")
    return found


def test_the_workspace_is_layered() -> None:
    pkgs = packages(ROOT)
    assert {p.kind for p in pkgs} == {"lib", "service"}
    assert {"fgo_common", "fgo_status_updater", "fgo_dra_plugin"} <= {p.name for p in pkgs}
    assert {"su_helpers", "dp_helpers", "faultlib", "chartlib", "corpus"} <= modules_of_tests(ROOT)
    assert violations(ROOT) == []


def _write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for component, name in (("common", "fgo_common"),):
        _write(tmp_path / f"libs/{component}/pyproject.toml")
        _write(tmp_path / f"libs/{component}/src/{name}/__init__.py")
    for component, name in (("alpha", "fgo_alpha"), ("beta", "fgo_beta")):
        _write(tmp_path / f"services/{component}/pyproject.toml")
        _write(tmp_path / f"services/{component}/src/{name}/__init__.py")
    _write(tmp_path / "services/alpha/tests/alpha_helpers.py")
    _write(tmp_path / "tests/faults/faultlib/world.py")
    return tmp_path


def test_the_check_sees_every_kind_of_import(tree: Path) -> None:
    _write(
        tree / "services/alpha/src/fgo_alpha/ok.py",
        "import os\nfrom fgo_common import x\nfrom . import sibling\nimport fgo_alpha.y\n",
    )
    assert violations(tree) == []
    _write(
        tree / "services/alpha/src/fgo_alpha/bad.py",
        "def late():\n"
        "    from fgo_beta.sub import thing\n"
        "import importlib\n"
        "importlib.import_module('fgo_beta')\n"
        "import alpha_helpers\n"
        "from faultlib.world import World\n",
    )
    _write(tree / "libs/common/src/fgo_common/bad.py", "import fgo_alpha.main as m\n")
    assert violations(tree) == [
        "libs/common/src/fgo_common/bad.py:1: imports fgo_alpha (libs never import services)",
        "services/alpha/src/fgo_alpha/bad.py:2: imports fgo_beta "
        "(services never import each other; share through libs/)",
        "services/alpha/src/fgo_alpha/bad.py:4: imports fgo_beta "
        "(services never import each other; share through libs/)",
        "services/alpha/src/fgo_alpha/bad.py:5: imports test-only module alpha_helpers",
        "services/alpha/src/fgo_alpha/bad.py:6: imports test-only module faultlib",
    ]
