"""The lean kubernetes-asyncio import: same names as the eager package, far fewer modules.

Each check runs in a fresh interpreter, since the point is what an import does to a process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVICES = [
    "fgo_status_updater.main",
    "fgo_status_exporter.main",
    "fgo_device_plugin.main",
    "fgo_dra_plugin.main",
    "fgo_kwok_dra_plugin.main",
]

PACKAGES = [
    "kubernetes_asyncio",
    "kubernetes_asyncio.client",
    "kubernetes_asyncio.client.api",
    "kubernetes_asyncio.client.models",
]


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("entrypoint", SERVICES)
def test_service_imports_load_no_model_modules(entrypoint: str) -> None:
    loaded = _run(
        f"import json, sys, {entrypoint}\n"
        "mods = [m for m in sys.modules if m.startswith('kubernetes_asyncio')]\n"
        "print(json.dumps({'mods': mods}))"
    )["mods"]
    assert isinstance(loaded, list)
    assert not [m for m in loaded if m.startswith("kubernetes_asyncio.client.models.")], loaded
    # The eager package loads ~1,000 modules; we need the client core, two APIs and config.
    assert len(loaded) < 40, loaded


def test_lazy_packages_export_every_public_name_of_the_eager_ones() -> None:
    eager = _run(
        "import __future__, importlib, json\n"
        f"pkgs = {PACKAGES!r}\n"
        "out = {}\n"
        "for p in pkgs:\n"
        "    m = importlib.import_module(p)\n"
        "    public = [n for n in dir(m) if not n.startswith('_')]\n"
        "    out[p] = [n for n in public if not isinstance(getattr(m, n), __future__._Feature)]\n"
        "print(json.dumps(out))"
    )
    assert sum(len(names) for names in eager.values()) > 1000  # type: ignore[arg-type]
    missing = _run(
        "import importlib, json, sys\n"
        "from fgo_common import lean_kubernetes\n"
        "assert lean_kubernetes.install()\n"
        "assert type(sys.modules['kubernetes_asyncio.client']).__name__ == 'LazyPackage'\n"
        f"eager = {eager!r}\n"
        "out = {}\n"
        "for p, names in eager.items():\n"
        "    m = importlib.import_module(p)\n"
        "    out[p] = [n for n in names if not hasattr(m, n)]\n"
        "print(json.dumps(out))"
    )
    assert missing == {package: [] for package in PACKAGES}


def test_lazy_names_resolve_to_the_real_objects() -> None:
    result = _run(
        "import asyncio, json\n"
        "from fgo_common import lean_kubernetes\n"
        "assert lean_kubernetes.install()\n"
        "from kubernetes_asyncio import client, config, watch\n"
        "from kubernetes_asyncio.client.models import V1Pod\n"
        "from kubernetes_asyncio.client.models.v1_pod import V1Pod as Real\n"
        "from kubernetes_asyncio.client.api.core_v1_api import CoreV1Api\n"
        "import kubernetes_asyncio\n"
        "async def typed():\n"
        "    async with client.ApiClient(client.Configuration()) as api:\n"
        "        return api._ApiClient__deserialize({'metadata': {'name': 'p'}}, 'V1Pod')\n"
        "pod = asyncio.run(typed())\n"
        "print(json.dumps({\n"
        "  'same_model': client.V1Pod is V1Pod is Real,\n"
        "  'same_api': client.CoreV1Api is CoreV1Api,\n"
        "  'deserialised': type(pod).__name__ + ':' + pod.metadata.name,\n"
        "  'watch': watch.Watch.__name__,\n"
        "  'config': callable(config.load_kube_config),\n"
        "  'version': kubernetes_asyncio.__version__,\n"
        "}))"
    )
    assert result == {
        "same_model": True,
        "same_api": True,
        "deserialised": "V1Pod:p",
        "watch": "Watch",
        "config": True,
        "version": result["version"],
    }
    assert isinstance(result["version"], str) and result["version"][0].isdigit()


def test_install_is_a_no_op_once_the_library_is_imported() -> None:
    result = _run(
        "import json, kubernetes_asyncio.client\n"
        "from fgo_common import lean_kubernetes\n"
        "import sys\n"
        "print(json.dumps({'installed': lean_kubernetes.install(),\n"
        "  'lazy': type(sys.modules['kubernetes_asyncio.client']).__name__}))"
    )
    assert result == {"installed": False, "lazy": "module"}


def test_unknown_attribute_is_an_attribute_error() -> None:
    result = _run(
        "import json\n"
        "import fgo_status_updater\n"
        "from kubernetes_asyncio import client\n"
        "try:\n"
        "    client.NoSuchThing\n"
        "    print(json.dumps({'error': None}))\n"
        "except AttributeError as exc:\n"
        "    print(json.dumps({'error': str(exc)}))"
    )
    assert result == {"error": "module 'kubernetes_asyncio.client' has no attribute 'NoSuchThing'"}


def test_urllib3_is_executed_only_when_used() -> None:
    """kubernetes-asyncio imports urllib3 for basic-auth headers only: deferred until read."""
    code = """
import json, sys
import fgo_status_exporter.main
from kubernetes_asyncio.client import Configuration
before = "urllib3.connectionpool" in sys.modules
c = Configuration(); c.username = "a"; c.password = "b"
token = c.get_basic_auth_token()
import urllib3, urllib3.exceptions
print(json.dumps({"before": before, "token": token, "after": "urllib3.connectionpool" in sys.modules,
                  "version": bool(urllib3.__version__), "same": urllib3 is sys.modules["urllib3"],
                  "exc": urllib3.exceptions.MaxRetryError.__name__}))
"""
    assert _run(code) == {
        "before": False,
        "token": "Basic YTpi",
        "after": True,
        "version": True,
        "same": True,
        "exc": "MaxRetryError",
    }
