"""Layering of the workspace's packages, read from the source with ``ast`` (no import runs):
services never import each other, libs never import services, and no shipped code imports a
test-only module (what a service's ``src/`` imports is what its image installs).

What an image installs is what production runs: a service's package and its workspace
dependencies (read from the ``pyproject.toml`` files). None of that may be a test helper: no
module named like one (``testing``, ``peers``, ``conformance``, ...), none importing a test
framework or a workspace package no image installs (``fgo_testkit``, ``fgo_localcluster``), and
every module reachable from a service's entry point (a module only tests import is a test
helper; the few exceptions are listed with the reason they ship). Test helpers go to
``libs/testkit``.

Every import counts, also inside functions and through ``importlib.import_module("...")`` with
a literal name; relative imports stay inside their package.
"""

from __future__ import annotations

import ast
import tomllib
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


# Modules an image installs that no service's entry point reaches, and why they ship anyway.
SHIPPED_BUT_UNREACHED = {
    "fgo_common.draclasses": "the DeviceClasses the chart installs, defined next to the devices "
    "they select; the local cluster applies them and the chart tests compare with them",
}
TEST_HELPER_NAMES = frozenset(
    {"testing", "conftest", "peers", "conformance", "fixtures", "fakes", "mocks", "testkit"}
)
TEST_FRAMEWORKS = frozenset({"pytest", "_pytest", "hypothesis"})


def _project(pkg: Package) -> dict[str, object]:
    path = pkg.src.parents[1] / "pyproject.toml"
    return dict(tomllib.loads(path.read_text()).get("project", {}))


def _dist_name(pkg: Package) -> str:
    return str(_project(pkg).get("name") or pkg.name.replace("_", "-"))


def shipped(pkgs: list[Package]) -> set[str]:
    """Import names of the packages some image installs: every service and its workspace
    dependencies, transitively."""
    by_dist = {_dist_name(p): p for p in pkgs}
    todo = [p for p in pkgs if p.kind == "service"]
    out: set[str] = set()
    while todo:
        pkg = todo.pop()
        if pkg.name in out:
            continue
        out.add(pkg.name)
        for requirement in _project(pkg).get("dependencies", []) or []:  # type: ignore[union-attr]
            name = str(requirement).split(";")[0].strip()
            for stop in "<>=!~[ ":
                name = name.split(stop)[0]
            if name in by_dist:
                todo.append(by_dist[name])
    return out


def _module_name(pkg: Package, path: Path) -> str:
    parts = list(path.relative_to(pkg.src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_of(module: str, path: Path) -> set[str]:
    """Dotted names ``path`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            out.add(source)
            out.update(f"{source}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.add(node.args[0].value)
    return out


def shipping_violations(root: Path) -> list[str]:
    """Test helpers in what an image installs (see the module docstring)."""
    pkgs = packages(root)
    installed = shipped(pkgs)
    workspace = {p.name for p in pkgs}
    modules: dict[str, Path] = {}
    for pkg in pkgs:
        if pkg.name in installed:
            for path in sorted(pkg.src.rglob("*.py")):
                if "gen" not in path.relative_to(pkg.src).parts:  # generated gRPC code
                    modules[_module_name(pkg, path)] = path
    edges = {module: _imports_of(module, path) for module, path in modules.items()}
    entry_points = {m for m in modules if m.endswith(".__main__")}
    for pkg in pkgs:
        if pkg.kind == "service":
            scripts = _project(pkg).get("scripts") or {}
            entry_points.update(str(v).split(":")[0] for v in scripts.values())  # type: ignore[union-attr]
    reached: set[str] = set()
    todo = list(entry_points)
    while todo:
        name = todo.pop()
        while name and name not in modules and "." in name:
            name = name.rpartition(".")[0]  # ``a.b.func`` -> ``a.b``
        if name in reached or name not in modules:
            continue
        reached.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run
        todo.extend(edges[name])
    found = []
    for module, path in sorted(modules.items()):
        where = path.relative_to(root)
        parts = module.split(".")
        if any(p in TEST_HELPER_NAMES or p.startswith("test_") for p in parts[1:]):
            found.append(
                f"{where}: a test helper in a package an image installs; move it to libs/testkit"
            )
        for name in sorted(edges[module]):
            top = name.split(".")[0]
            if top in TEST_FRAMEWORKS:
                found.append(f"{where}: imports the test framework {top}")
            elif top in workspace and top not in installed:
                found.append(f"{where}: imports {top}, which no image installs")
        if module not in reached and module not in SHIPPED_BUT_UNREACHED:
            found.append(
                f"{where}: ships in an image, yet no service's entry point imports it (a test "
                "helper? move it to libs/testkit, or list it in SHIPPED_BUT_UNREACHED with why)"
            )
    return sorted(set(found))


def test_nothing_an_image_installs_is_a_test_helper() -> None:
    installed = shipped(packages(ROOT))
    assert {"fgo_common", "fgo_kubelet_api", "fgo_status_updater"} <= installed
    assert not {"fgo_testkit", "fgo_localcluster"} & installed
    assert shipping_violations(ROOT) == []
    assert set(SHIPPED_BUT_UNREACHED) <= {
        _module_name(p, f) for p in packages(ROOT) for f in p.src.rglob("*.py")
    }, "SHIPPED_BUT_UNREACHED names a module that no longer exists"


def test_the_workspace_is_layered() -> None:
    pkgs = packages(ROOT)
    assert {p.kind for p in pkgs} == {"lib", "service"}
    assert {"fgo_common", "fgo_status_updater", "fgo_dra_plugin"} <= {p.name for p in pkgs}
    assert {"su_helpers", "dp_helpers", "faultlib", "chartlib", "corpus"} <= modules_of_tests(ROOT)
    assert "fgo_testkit" in {p.name for p in pkgs}
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


def _project_files(root: Path, kind: str, component: str, name: str, body: str) -> None:
    _write(root / f"{kind}/{component}/pyproject.toml", body)
    _write(root / f"{kind}/{component}/src/{name}/__init__.py")


def test_shipping_a_test_helper_fails(tmp_path: Path) -> None:
    """The old layout: a status-updater with its own ``testing`` module, kubelet peers and a
    conformance comparator in an installed lib, and a service importing the test kit."""
    _project_files(tmp_path, "libs", "common", "fgo_common", '[project]\nname = "fgo-common"\n')
    _project_files(
        tmp_path, "libs", "kubelet-api", "fgo_kubelet_api",
        '[project]\nname = "fgo-kubelet-api"\n',
    )  # fmt: skip
    _project_files(
        tmp_path, "libs", "testkit", "fgo_testkit",
        '[project]\nname = "fgo-testkit"\ndependencies = ["fgo-common"]\n',
    )  # fmt: skip
    _project_files(
        tmp_path, "services", "alpha", "fgo_alpha",
        '[project]\nname = "fgo-alpha"\ndependencies = ["fgo-common>=0", "fgo-kubelet-api"]\n'
        '[project.scripts]\nfgo-alpha = "fgo_alpha.main:main"\n',
    )  # fmt: skip
    alpha = tmp_path / "services/alpha/src/fgo_alpha"
    _write(alpha / "main.py", "from fgo_alpha import work\nfrom fgo_common import util\n")
    _write(alpha / "work.py", "from . import deeper\n")
    _write(
        alpha / "deeper.py", "import importlib\nimportlib.import_module('fgo_kubelet_api.api')\n"
    )
    _write(tmp_path / "libs/common/src/fgo_common/util.py")
    _write(tmp_path / "libs/kubelet-api/src/fgo_kubelet_api/api.py")
    assert shipped(packages(tmp_path)) == {"fgo_alpha", "fgo_common", "fgo_kubelet_api"}
    assert shipping_violations(tmp_path) == []

    _write(alpha / "testing.py", "import asyncio\n")
    _write(tmp_path / "libs/kubelet-api/src/fgo_kubelet_api/peers/__init__.py")
    _write(tmp_path / "libs/common/src/fgo_common/helper.py", "import pytest\n")
    _write(alpha / "late.py")
    _write(alpha / "work.py", "from . import deeper, late\ndef f():\n    import fgo_testkit\n")
    assert shipping_violations(tmp_path) == [
        "libs/common/src/fgo_common/helper.py: imports the test framework pytest",
        "libs/common/src/fgo_common/helper.py: ships in an image, yet no service's entry point "
        "imports it (a test helper? move it to libs/testkit, or list it in "
        "SHIPPED_BUT_UNREACHED with why)",
        "libs/kubelet-api/src/fgo_kubelet_api/peers/__init__.py: a test helper in a package an "
        "image installs; move it to libs/testkit",
        "libs/kubelet-api/src/fgo_kubelet_api/peers/__init__.py: ships in an image, yet no "
        "service's entry point imports it (a test helper? move it to libs/testkit, or list it "
        "in SHIPPED_BUT_UNREACHED with why)",
        "services/alpha/src/fgo_alpha/testing.py: a test helper in a package an image "
        "installs; move it to libs/testkit",
        "services/alpha/src/fgo_alpha/testing.py: ships in an image, yet no service's entry "
        "point imports it (a test helper? move it to libs/testkit, or list it in "
        "SHIPPED_BUT_UNREACHED with why)",
        "services/alpha/src/fgo_alpha/work.py: imports fgo_testkit, which no image installs",
    ]
