"""KWOK mode (one central Deployment) must not pay for the node agent's gRPC stack."""

from __future__ import annotations

import json
import subprocess
import sys


def _loaded_after(mode: str) -> dict[str, bool]:
    code = (
        "import json, sys\n"
        "from fgo_device_plugin.main import kwok_mode, node_mode\n"
        "from fgo_device_plugin.settings import Settings\n"
        f"(kwok_mode if {mode!r} == 'kwok' else node_mode)(Settings(mode={mode!r}))\n"
        "print(json.dumps({'grpc': 'grpc' in sys.modules,\n"
        "  'models': any(m.startswith('kubernetes_asyncio.client.models.') for m in sys.modules)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    result: dict[str, bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_kwok_mode_loads_no_grpc() -> None:
    assert _loaded_after("kwok") == {"grpc": False, "models": False}


def test_node_mode_loads_grpc() -> None:
    assert _loaded_after("node") == {"grpc": True, "models": False}
