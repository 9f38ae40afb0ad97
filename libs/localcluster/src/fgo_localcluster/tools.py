"""Finding (and if needed building) the pinned control-plane binaries.

The binaries come from ``hack/build-tools.sh``, which builds them once per machine from the
pinned Go modules into a cache directory it prints with ``--print-dir``. ``FGO_BIN_DIR``
overrides that directory (e.g. binaries from a CI cache).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from fgo_common.runtime.settings import env_field, load_settings

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
)
BUILD_SCRIPT = Path("hack/build-tools.sh")


@dataclasses.dataclass(frozen=True)
class EnvSettings:
    """Environment knobs of the local cluster tooling."""

    bin_dir: str | None = env_field(
        "FGO_BIN_DIR",
        None,
        "Directory with etcd, kube-apiserver, ... (default: `hack/build-tools.sh --print-dir`).",
    )
    state_dir: str | None = env_field(
        "FGO_STATE_DIR",
        None,
        "State directory of the local cluster (default: <repo>/.fgo/cluster).",
    )

    node_bin_dir: str | None = env_field(
        "FGO_NODE_BIN_DIR",
        None,
        "Directory with the real node's binaries (default: hack/build-node-tools.sh's).",
    )
    cache_dir: str | None = env_field(
        "FGO_CACHE_DIR",
        None,
        "Cache root of tools and images (default: ~/.cache/fgo); the image index is "
        "<cache>/images/index.json.",
    )
    image_index: str | None = env_field(
        "FGO_IMAGE_INDEX",
        None,
        "Image index that add-real-node and load-images import (default: under FGO_CACHE_DIR).",
    )

    runtime_config: str | None = env_field(
        "FGO_RUNTIME_CONFIG",
        None,
        "kube-apiserver --runtime-config for the next fresh `up` (default: the DRA beta versions "
        "the binary serves, see components.default_runtime_config); e.g. "
        "`resource.k8s.io/v1=false,resource.k8s.io/v1beta1=true,resource.k8s.io/v1beta2=true` "
        'for a cluster without resource.k8s.io/v1, `""` for no override at all.',
    )
    kwok_log_level: str = env_field(
        "FGO_KWOK_LOG_LEVEL",
        "WARN",
        "KWOK's log level; INFO shows every node/pod it patches (and every lease renewal).",
        choices=("DEBUG", "INFO", "WARN", "ERROR"),
    )


def env_settings() -> EnvSettings:
    return load_settings(EnvSettings)


class ToolsError(RuntimeError):
    """Binaries missing and not buildable; the message says what to do."""


def find_repo_root(start: Path | None = None) -> Path | None:
    """The checkout containing ``hack/build-tools.sh``: above this package, else above cwd."""
    candidates = [Path(__file__).resolve(), (start or Path.cwd()).resolve()]
    for origin in candidates:
        for directory in (origin, *origin.parents):
            if (directory / BUILD_SCRIPT).is_file() and (directory / "tools" / "go.mod").is_file():
                return directory
    return None


def _resolved(path: Path) -> Path:
    # A few stat() calls; kept out of the async functions on purpose (ASYNC240).
    return path.expanduser().resolve()


def missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


async def _run(argv: list[str], cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ToolsError(f"{' '.join(argv)} failed: {err.decode(errors='replace').strip()}")
    return out.decode().strip()


async def resolve_bin_dir(explicit: Path | None = None, repo: Path | None = None) -> Path:
    """``explicit`` > ``FGO_BIN_DIR`` > the build script's cache directory."""
    if explicit is not None:
        return _resolved(explicit)
    settings = env_settings()
    if settings.bin_dir:
        return _resolved(Path(settings.bin_dir))
    repo = repo or find_repo_root()
    if repo is None:
        raise ToolsError(
            "cannot locate the fake-gpu-operator checkout (hack/build-tools.sh); "
            "set FGO_BIN_DIR to a directory with the control-plane binaries"
        )
    return Path(await _run([str(repo / BUILD_SCRIPT), "--print-dir"], repo))


async def ensure_binaries(
    bin_dir: Path, progress: Callable[[str], None], repo: Path | None = None, *, build: bool = True
) -> None:
    """Make sure every binary exists in ``bin_dir``, building them when that is possible.

    Building is only attempted for the build script's own cache directory; a missing binary
    in an explicit FGO_BIN_DIR is an error that names it.
    """
    missing = missing_binaries(bin_dir)
    if not missing:
        return
    repo = repo or find_repo_root()
    if not build or repo is None:
        raise ToolsError(
            f"missing in {bin_dir}: {', '.join(missing)}; "
            "run hack/build-tools.sh (first build takes several minutes)"
        )
    script_dir = Path(await _run([str(repo / BUILD_SCRIPT), "--print-dir"], repo))
    if _resolved(script_dir) != _resolved(bin_dir):
        raise ToolsError(
            f"missing in {bin_dir}: {', '.join(missing)} (FGO_BIN_DIR is set; "
            f"hack/build-tools.sh builds into {script_dir} instead)"
        )
    progress(
        f"building {', '.join(missing)} with hack/build-tools.sh "
        "(first build on this machine takes several minutes) ..."
    )
    proc = await asyncio.create_subprocess_exec(
        str(repo / BUILD_SCRIPT),
        cwd=repo,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    tail: list[str] = []
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        tail = [*tail[-19:], line]
        # Only the script's own progress lines; Go's download chatter would drown them.
        if line.startswith(("[", "tools ready")):
            progress(f"build-tools: {line}")
    if await proc.wait() != 0:
        raise ToolsError("hack/build-tools.sh failed:\n" + "\n".join(tail))
    still = missing_binaries(bin_dir)
    if still:
        raise ToolsError(f"hack/build-tools.sh finished but {', '.join(still)} is missing")
