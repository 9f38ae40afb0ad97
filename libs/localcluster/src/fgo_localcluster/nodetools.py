"""The real node's binaries (built by hack/build-node-tools.sh) and the local image index.

Where ``fgo cluster add-real-node`` finds containerd, runc, the CNI plugins, crictl and the
kubelet (``FGO_NODE_BIN_DIR``, else the build script's cache dir, built on first use), and which
image archives it imports (the index the image build writes, ``FGO_IMAGE_INDEX`` overrides).
"""

from __future__ import annotations

import asyncio
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from fgo_localcluster.tools import env_settings, find_repo_root

Progress = Callable[[str], None]

NODE_BINARIES = (
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "crictl",
    "kubelet",
    "cni/bridge",
    "cni/host-local",
    "cni/loopback",
)
BUILD_SCRIPT = Path("hack/build-node-tools.sh")


class NodeToolsError(RuntimeError):
    """Node binaries or images unavailable; the message says what to do."""


def image_index_path() -> Path:
    """``$FGO_IMAGE_INDEX``, else ``${FGO_CACHE_DIR:-~/.cache/fgo}/images/index.json``."""
    settings = env_settings()
    if settings.image_index:
        return Path(settings.image_index)
    cache = Path(settings.cache_dir) if settings.cache_dir else Path.home() / ".cache" / "fgo"
    return cache / "images" / "index.json"


def images_from_index(index: Path | None = None) -> list[tuple[str, Path]]:
    """(name, archive) of every image the image build listed, or [] if there is no index."""
    path = index or image_index_path()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except json.JSONDecodeError as exc:
        raise NodeToolsError(f"{path} is not valid JSON ({exc}); rebuild the images") from exc
    return [(str(i["name"]), Path(i["archive"])) for i in raw.get("images", [])]


async def resolve_node_bin_dir(progress: Progress, *, build: bool = True) -> Path:
    """``FGO_NODE_BIN_DIR``, else hack/build-node-tools.sh's cache dir (built if missing)."""
    explicit = env_settings().node_bin_dir
    if explicit:
        bin_dir = Path(explicit)
        missing = [b for b in NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
        if missing:
            raise NodeToolsError(
                f"FGO_NODE_BIN_DIR={bin_dir} lacks {', '.join(missing)}; unset it to use "
                "`make node-tools`'s cache dir"
            )
        return bin_dir
    repo = find_repo_root()
    if repo is None:
        raise NodeToolsError(
            "cannot find the checkout (hack/build-node-tools.sh); set FGO_NODE_BIN_DIR"
        )
    script = repo / BUILD_SCRIPT
    out, _ = await (
        await asyncio.create_subprocess_exec(
            str(script), "--print-dir", stdout=asyncio.subprocess.PIPE, cwd=repo
        )
    ).communicate()
    bin_dir = Path(out.decode().strip())
    if all(os.access(bin_dir / b, os.X_OK) for b in NODE_BINARIES):
        return bin_dir
    if not build:
        raise NodeToolsError(f"node binaries missing in {bin_dir}; run `make node-tools`")
    progress("building the node's binaries with hack/build-node-tools.sh (first time: minutes)")
    proc = await asyncio.create_subprocess_exec(
        str(script), cwd=repo, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    tail: list[str] = []
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        tail = [*tail[-9:], line]
        if line.startswith(("[", "node tools ready", "build-node-tools:")):
            progress(f"build-node-tools: {line}")
    if await proc.wait() != 0:
        raise NodeToolsError(
            f"hack/build-node-tools.sh failed ({tail[-1] if tail else 'no output'}); "
            "run it by hand to see the whole output"
        )
    return bin_dir


def archive_digests(archive: Path) -> dict[str, str]:
    """Image name -> manifest digest of an OCI archive (from its index.json ref names); {}
    for other formats or unreadable archives (they are then always imported)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            if member is None:
                return {}
            index = json.loads(member.read())
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError):
        return {}
    found = {}
    for manifest in index.get("manifests", []):
        name = (manifest.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        if name and "digest" in manifest:
            found[str(name)] = str(manifest["digest"])
    return found


def parse_ctr_images(listing: str) -> dict[str, str]:
    """``ctr images ls`` output -> image name -> target digest."""
    images = {}
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].startswith("sha256:"):
            images[fields[0]] = fields[2]
    return images
