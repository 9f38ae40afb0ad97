"""Fixtures for the proto conformance test: the pinned official kubelet protos.

They are fetched at test time through the Go module proxy with ``go mod download`` (the
version follows k8s.io/kubernetes in tools/go.mod) and read from Go's module cache, which is
also what caches them between runs. Nothing fetched is committed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fgo_testkit.proto_conformance import pinned_kubelet_version, strip_gogo

GO_MOD = Path(__file__).resolve().parents[2] / "tools" / "go.mod"


def go_mod_download(module: str, version: str) -> Path:
    """Fetch ``module@version`` into Go's module cache and return its directory."""
    go = shutil.which("go")
    if go is None:
        pytest.skip(
            "`go` is not on PATH: the official kubelet protos are fetched through the Go "
            "module proxy with `go mod download`; install Go to run the conformance test"
        )
    env = dict(os.environ)
    env.pop("GOFLAGS", None)  # flags such as -mod=vendor make no sense outside a module
    with tempfile.TemporaryDirectory(prefix="fgo-gomod-") as cwd:  # outside any go.mod
        result = subprocess.run(
            [go, "mod", "download", "-json", f"{module}@{version}"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    # -json reports errors in the JSON too, so parse before judging the exit code.
    info = json.loads(result.stdout) if result.stdout.strip() else {}
    if result.returncode != 0 or "Error" in info or "Dir" not in info:
        pytest.fail(
            f"go mod download {module}@{version} failed (exit {result.returncode}): "
            f"{info.get('Error', '')}{result.stderr}"
        )
    return Path(info["Dir"])


@pytest.fixture(scope="session")
def kubelet_version() -> str:
    return pinned_kubelet_version(GO_MOD)


@pytest.fixture(scope="session")
def official_proto_root(kubelet_version: str) -> Iterator[Path]:
    """k8s.io/kubelet/pkg/apis of the pinned release: its .proto files, gogo options stripped.

    A copy because the module cache is read-only and stripping rewrites the text.
    """
    apis = go_mod_download("k8s.io/kubelet", kubelet_version) / "pkg" / "apis"
    with tempfile.TemporaryDirectory(prefix="fgo-official-protos-") as tmp:
        root = Path(tmp)
        for source in apis.rglob("*.proto"):
            target = root / source.relative_to(apis)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(strip_gogo(source.read_text()))
        yield root
