"""The node-local snapshot of a node's topology record, shared with GPU containers.

The node agents (device plugin, DRA plugin) keep a copy of their node's record in a host directory
and mount that directory read-only into every GPU container. The fake ``nvidia-smi`` reads it
there, so a pod learns about its GPUs without cluster DNS, a hard-coded namespace or a
``NODE_NAME`` the user must add (design principle 5).

Contract:

* directory: env ``FGO_STATE_DIR`` (default ``/run/fake-gpu-operator``);
* file ``topology.json`` in it: ``NodeTopology.to_dict()`` as JSON;
* written atomically (temp file in the same directory, fsync, rename, fsync of the directory) so a
  reader never sees a half-written file, even when the writer dies mid-way.

JSON rather than YAML: the reader is a short-lived CLI whose start-up time users notice, and the
stdlib ``json`` parser is both faster and already imported.
"""

# os.path instead of pathlib throughout (see below why).
# ruff: noqa: PTH101, PTH103, PTH105, PTH108, PTH110, PTH118, PTH123
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

# No pathlib here: on Python 3.11 it pulls in urllib.parse and ipaddress, a cost every
# nvidia-smi call would pay (its start-up time is a user-visible number).
from fgo_common.topology import NodeTopology, TopologyFormatError

if TYPE_CHECKING:
    from pathlib import Path

STATE_DIR_ENV = "FGO_STATE_DIR"
DEFAULT_STATE_DIR = "/run/fake-gpu-operator"
STATE_FILE_NAME = "topology.json"
# Bumped if the file's shape ever changes incompatibly; readers reject versions they don't know.
STATE_FORMAT_VERSION = 1


class NodeStateError(RuntimeError):
    """The node state is missing, unreadable or malformed (the message says which and where)."""


def state_dir_from_env(environ: dict[str, str] | None = None) -> str:
    """The state directory named by ``FGO_STATE_DIR``, else the default."""
    env = os.environ if environ is None else environ
    return env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR


def state_file(directory: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(directory), STATE_FILE_NAME)


def encode_node_state(topology: NodeTopology) -> bytes:
    body: dict[str, Any] = {"formatVersion": STATE_FORMAT_VERSION, **topology.to_dict()}
    return json.dumps(body, separators=(",", ":"), sort_keys=False).encode()


def write_node_state(directory: str | os.PathLike[str], topology: NodeTopology) -> str:
    """Write ``topology`` to ``<directory>/topology.json`` atomically; return the file's path.

    Skips the write when the content is unchanged, so a node agent can call this on every
    resync without churning the file (and readers' page cache).
    """
    import tempfile  # writers only: keeps the reader's (nvidia-smi's) start-up lean

    target_dir = os.fspath(directory)
    os.makedirs(target_dir, exist_ok=True)
    target = state_file(target_dir)
    payload = encode_node_state(topology)
    try:
        with open(target, "rb") as current:
            if current.read() == payload:
                return target
    except OSError:
        pass
    fd, tmp_name = tempfile.mkstemp(prefix=f".{STATE_FILE_NAME}.", dir=target_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        # Containers run as arbitrary users; the file holds nothing secret.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(target_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def decode_node_state(data: bytes | str, source: str = STATE_FILE_NAME) -> NodeTopology:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise NodeStateError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise NodeStateError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("formatVersion", STATE_FORMAT_VERSION)
    if version != STATE_FORMAT_VERSION:
        raise NodeStateError(
            f"{source}: format version {version!r} not supported (this reader knows "
            f"{STATE_FORMAT_VERSION})"
        )
    try:
        return NodeTopology.from_dict(raw)
    except TopologyFormatError as exc:
        raise NodeStateError(f"{source}: {exc}") from exc


def read_node_state(directory: str | os.PathLike[str]) -> NodeTopology:
    """Read the snapshot written by :func:`write_node_state`; :class:`NodeStateError` if absent
    or malformed."""
    path = state_file(directory)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise NodeStateError(f"{path}: no such file (is the node state mounted?)") from exc
    except OSError as exc:
        raise NodeStateError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return decode_node_state(data, path)


# The standalone nvidia-smi (services/nvidia-smi/build.sh) and where containers find it; the
# contract is docs/nvidia-smi.md. Node agents install the bundle on the host with
# install_nvidia_smi() and mount SMI_HOST_DIR and SMI_LAUNCHER_HOST_PATH into GPU containers.
SMI_HOME_ENV = "FGO_NVIDIA_SMI_HOME"
SMI_CONTAINER_DIR = "/usr/local/fake-gpu"
SMI_CONTAINER_PATH = "/usr/bin/nvidia-smi"
# Every path the launcher is mounted at: where NVIDIA's container toolkit puts nvidia-smi, and
# /bin/nvidia-smi, where run-ai/fake-gpu-operator mounts it and its users call it. In images with
# a merged /usr (/bin -> usr/bin) both are one file; in images without, /bin needs its own mount.
SMI_CONTAINER_PATHS = (SMI_CONTAINER_PATH, "/bin/nvidia-smi")
SMI_HOST_DIR = "/var/lib/fake-gpu-operator/nvidia-smi"
SMI_LAUNCHER_HOST_PATH = "/var/lib/fake-gpu-operator/bin/nvidia-smi"
# The fake NVML library (services/nvidia-smi/nvml, docs/nvml.md) ships inside the bundle; GPU
# containers get it where NVIDIA's container toolkit mounts the real one.
NVML_LIBRARY = "libnvidia-ml.so.1"
NVML_CONTAINER_PATH = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"


def nvml_host_library(bundle_host_dir: str) -> str:
    """The bundle's NVML library on the host, or "" when the installed bundle has none (built
    before it existed, or without a C compiler): a file mount of a missing file would fail the
    container, so the node agents then mount nothing."""
    if not bundle_host_dir:
        return ""
    path = os.path.join(bundle_host_dir, NVML_LIBRARY)
    return path if os.path.isfile(path) else ""  # noqa: PTH113


_STAMP = ".fgo-bundle-stamp"


def _bundle_stamp(bundle: Path) -> str:
    """Identity of a bundle's content: relative path, size and mtime of every file."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != _STAMP):
        info = path.lstat()
        rel = path.relative_to(bundle)
        digest.update(f"{rel}\0{info.st_size}\0{int(info.st_mtime)}\n".encode())
    return digest.hexdigest()[:16]


def install_nvidia_smi(
    bundle_dir: str | os.PathLike[str],
    host_dir: str | os.PathLike[str] = SMI_HOST_DIR,
    launcher_path: str | os.PathLike[str] = SMI_LAUNCHER_HOST_PATH,
) -> bool:
    """Install the nvidia-smi bundle (``build.sh`` output: ``nvidia-smi``, ``_internal/``,
    ``launcher``) at ``host_dir``, and its launcher at ``launcher_path``. Returns True when it
    changed anything.

    ``host_dir`` becomes a symlink to a versioned sibling (``<host_dir>.<stamp>``): containers
    resolve the mount source when they start, so a running container keeps the version it
    mounted and a new container never sees a half-copied bundle. All but the two newest
    versions are pruned. The launcher is replaced by rename.
    """
    import shutil
    from pathlib import Path  # writer side only: readers stay free of pathlib

    bundle, host, launcher_file = Path(bundle_dir), Path(host_dir), Path(launcher_path)
    stamp = _bundle_stamp(bundle)
    versioned = host.with_name(f"{host.name}.{stamp}")
    changed = False
    host.parent.mkdir(parents=True, exist_ok=True)
    if not (versioned / _STAMP).is_file():
        staging = host.with_name(f"{versioned.name}.tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(bundle, staging, symlinks=True)
        (staging / _STAMP).write_text(stamp + "\n")
        shutil.rmtree(versioned, ignore_errors=True)
        staging.rename(versioned)
        changed = True
    if not (host.is_symlink() and str(host.readlink()) == versioned.name):
        link_tmp = host.with_name(f"{host.name}.link{os.getpid()}")
        link_tmp.unlink(missing_ok=True)
        link_tmp.symlink_to(versioned.name)
        if host.is_dir() and not host.is_symlink():
            shutil.rmtree(host)  # a plain directory from an older installer
        link_tmp.replace(host)
        changed = True
    launcher = (versioned / "launcher").read_bytes()
    launcher_file.parent.mkdir(parents=True, exist_ok=True)
    if not launcher_file.is_file() or launcher_file.read_bytes() != launcher:
        tmp = launcher_file.with_name(f"{launcher_file.name}.tmp{os.getpid()}")
        tmp.write_bytes(launcher)
        tmp.chmod(0o755)
        tmp.replace(launcher_file)
        changed = True
    versions = sorted(
        (
            p
            for p in host.parent.glob(f"{host.name}.*")
            if p.is_dir() and not p.is_symlink() and (p / _STAMP).is_file()
        ),
        key=lambda p: p.stat().st_mtime,
    )
    for old in versions[:-2]:
        if old != versioned:
            shutil.rmtree(old, ignore_errors=True)
    return changed
