"""Run the project's images as runc containers, without a container engine.

``make images`` leaves every image in the buildah store under ``~/.cache/fgo/images``
(hack/images/lib.sh). :class:`ContainerRuntime` turns one of them into a container: buildah
mounts the image's root filesystem (a throw-away working container on top of it), this module
writes the OCI runtime spec from the image's own config (entrypoint, command, environment,
user, working directory) and runc runs it. The root filesystem is read-only, as the chart runs
it; ``/tmp`` is a tmpfs. The container shares the host's network namespace, so a service's
listen ports and the apiserver on 127.0.0.1 work unchanged, and gets its own PID, IPC, UTS and
mount namespaces, no capabilities, no-new-privileges, and a cgroup under ``/fgo-containers``.

Root only (buildah mount and runc need it). This is how the images are started as what users
run; the real node (realnode.py) runs them under a kubelet and containerd instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgo_localcluster import process
from fgo_localcluster.layout import write_atomic

DEFAULT_STORE = Path(os.environ.get("FGO_CACHE_DIR", Path.home() / ".cache" / "fgo")) / "images"
CGROUP_PARENT = "/fgo-containers"
RUNTIME_RECORD = ".runtime.json"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME = re.compile(r"[^a-z0-9_.-]+")


class ContainerError(RuntimeError):
    """An image could not be prepared or run; the message names the image and the cause."""


@dataclass(frozen=True)
class Mount:
    """A bind mount of a host path into the container."""

    source: Path
    target: str
    readonly: bool = True


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config that decide how its process starts."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_oci(cls, raw: dict[str, Any]) -> ImageConfig:
        return cls(
            entrypoint=list(raw.get("Entrypoint") or []),
            cmd=list(raw.get("Cmd") or []),
            env=list(raw.get("Env") or []),
            user=str(raw.get("User") or ""),
            workdir=str(raw.get("WorkingDir") or ""),
            labels=dict(raw.get("Labels") or {}),
        )

    def uid_gid(self) -> tuple[int, int]:
        """The image's USER as numbers (``65532:65532``, ``65532``; empty: root)."""
        if not self.user:
            return 0, 0
        uid, _, gid = self.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise ContainerError(f"USER {self.user!r} is not numeric")
        return int(uid), int(gid or uid)


def runtime_spec(
    rootfs: Path,
    config: ImageConfig,
    *,
    args: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    user: tuple[int, int] | None = None,
    mounts: Sequence[Mount] = (),
    hostname: str = "fgo",
    cgroup: str = "",
) -> dict[str, Any]:
    """The OCI runtime spec (config.json) of one container of ``config``'s image.

    ``args`` replaces the image's CMD and ``entrypoint`` its ENTRYPOINT, as ``docker run``
    does; ``env`` is added to the image's environment.
    """
    argv = list(config.entrypoint if entrypoint is None else entrypoint)
    argv += list(config.cmd if args is None and entrypoint is None else (args or []))
    if not argv:
        raise ContainerError("the image has neither ENTRYPOINT nor CMD and no command was given")
    environment = dict(item.partition("=")[::2] for item in config.env)
    environment.setdefault("PATH", _PATH)
    environment.update(env or {})
    uid, gid = config.uid_gid() if user is None else user
    spec_mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",  # noqa: S108 - in the container
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",  # noqa: S108 - in the container
         "options": ["nosuid", "nodev", "mode=1777"]},
    ]  # fmt: skip
    for mount in mounts:
        options = ["rbind", "ro" if mount.readonly else "rw"]
        spec_mounts.append(
            {"destination": mount.target, "type": "bind", "source": str(mount.source),
             "options": options}
        )  # fmt: skip
    no_caps: dict[str, list[str]] = {k: [] for k in ("bounding", "effective", "permitted")}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": argv,
            "env": [f"{k}={v}" for k, v in environment.items()],
            "cwd": config.workdir or "/",
            "capabilities": no_caps,
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": hostname,
        "mounts": spec_mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            **({"cgroupsPath": cgroup} if cgroup else {}),
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }


def _remove_empty_cgroup_parent() -> None:
    # runc removes the container's own cgroups; the shared parent goes with the last one.
    for parent in Path("/sys/fs/cgroup").glob(f"*{CGROUP_PARENT}"):
        with contextlib.suppress(OSError):
            parent.rmdir()


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


class ContainerRuntime:
    """buildah's store (images) + runc (containers); see the module docstring."""

    def __init__(self, runc: Path, *, store: Path = DEFAULT_STORE, state_dir: Path) -> None:
        self.runc = runc
        self.store = store
        self.state_dir = state_dir

    def _buildah(self) -> list[str]:
        buildah = shutil.which("buildah")
        if buildah is None:
            raise ContainerError("buildah is not installed (make host-deps)")
        return [buildah, "--root", str(self.store / "storage"),
                "--runroot", str(self.store / "run"), "--storage-driver", "overlay"]  # fmt: skip

    async def _exec(self, *argv: str, check: bool = True) -> Finished:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        done = Finished(proc.returncode or 0, out.decode(errors="replace"),
                        err.decode(errors="replace"))  # fmt: skip
        if check and done.returncode != 0:
            raise ContainerError(
                f"{Path(argv[0]).name} {' '.join(argv[1:2])} failed: {done.stderr.strip()[-500:]}"
            )
        return done

    async def image_config(self, image: str) -> ImageConfig:
        done = await self._exec(*self._buildah(), "inspect", "--type", "image", image, check=False)
        if done.returncode != 0:
            raise ContainerError(f"image {image} is not in {self.store} (run `make images`)")
        return ImageConfig.from_oci(json.loads(done.stdout)["OCIv1"].get("config") or {})

    def _bundle(self, name: str) -> Path:
        return self.state_dir / "containers" / name

    def _runc(self) -> list[str]:
        return [str(self.runc), "--root", str(self.state_dir / "containers" / ".runc")]

    async def prepare(self, name: str, image: str, **spec_args: Any) -> tuple[Path, list[str]]:
        """Mount ``image`` and write the bundle of container ``name`` (replacing an old one);
        returns the bundle dir and the runc command that runs it in the foreground."""
        name = _NAME.sub("-", name.lower()).strip("-")
        await self.remove(name)
        config = await self.image_config(image)
        await self._exec(*self._buildah(), "from", "--pull=never", "--name", name, image)
        rootfs = Path((await self._exec(*self._buildah(), "mount", name)).stdout.strip())
        bundle = self._bundle(name)
        bundle.mkdir(parents=True, exist_ok=True)
        # For `fgo cluster down`, which cleans up without knowing which runc started them.
        write_atomic(self.state_dir / "containers" / RUNTIME_RECORD,
                     json.dumps({"runc": str(self.runc), "store": str(self.store)}))  # fmt: skip
        spec = runtime_spec(
            rootfs, config, hostname=name, cgroup=f"{CGROUP_PARENT}/{name}", **spec_args
        )
        write_atomic(bundle / "config.json", json.dumps(spec, indent=1))
        return bundle, [*self._runc(), "run", "--bundle", str(bundle), name]

    async def run(self, name: str, image: str, **spec_args: Any) -> Finished:
        """Run a container to completion; returns its exit code and output."""
        _, argv = await self.prepare(name, image, **spec_args)
        try:
            return await self._exec(*argv, check=False)
        finally:
            await self.remove(name)

    async def start(self, name: str, image: str, log: Path, pid_file: Path,
                    **spec_args: Any) -> process.PidRecord:  # fmt: skip
        """Start a long-running container; the pid record is runc's, which forwards SIGTERM
        to the container's process and exits with it."""
        _, argv = await self.prepare(name, image, **spec_args)
        return await process.spawn(argv, log, pid_file)

    async def remove(self, name: str) -> None:
        """Kill and delete container ``name`` and its working container (no error if absent)."""
        name = _NAME.sub("-", name.lower()).strip("-")
        await self._exec(*self._runc(), "delete", "--force", name, check=False)
        await self._exec(*self._buildah(), "rm", name, check=False)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._bundle(name))
        _remove_empty_cgroup_parent()


async def remove_all(state_dir: Path) -> list[str]:
    """Remove every container a :class:`ContainerRuntime` with ``state_dir`` left behind (its
    processes already stopped or not); returns their names."""
    base = state_dir / "containers"
    try:
        record = json.loads((base / RUNTIME_RECORD).read_text())
    except (OSError, ValueError):
        return []
    runtime = ContainerRuntime(Path(record["runc"]), store=Path(record["store"]),
                               state_dir=state_dir)  # fmt: skip
    names = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names:
        await runtime.remove(name)
    return names
