"""The node agents' NVML snapshot: ``<state dir>/nvml-node.snap`` (docs/nvml.md).

The fake libnvidia-ml.so.1 in GPU containers reads this file on ``nvmlInit`` instead of running
nvidia-smi (the bundle's start-up is ~200 ms of CPU; reading the file is ~1 ms). It holds every
GPU and MIG device of the node for the next ``frames`` 10-s telemetry buckets, and is produced
by the same code as the library's exec path: the node agent runs the bundled nvidia-smi in its
hidden ``--fgo-nvml-node-snapshot`` mode (fgo_nvidia_smi.nvmlsnap.render_node). Services do not
import each other, and running the program the containers run keeps one model with no second
copy: fgo_common.telemetry via nvidia-smi's state code.

The writer refreshes the file when the record changes (after the agent wrote topology.json: the
file is stamped with the topology.json it was built from, and the library ignores a file whose
stamp differs) and when half of its frames are used up. A missing, stale or unreadable file
only costs the container the exec path; it is a cache, rebuilt after any restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time

import structlog

log = structlog.get_logger(__name__)

NVML_NODE_FILE = "nvml-node.snap"
# Where the device-plugin and dra-plugin images carry the nvidia-smi bundle (build.sh output).
BUNDLE_SMI = "/opt/fake-gpu-operator/nvidia-smi/nvidia-smi"
DEFAULT_FRAMES = 60  # ten minutes of 10-s buckets
BUCKET_SECONDS = 10.0
SNAPSHOT_FLAG = "--fgo-nvml-node-snapshot"
DEBOUNCE_SECONDS = 0.5


def write_nvml_node_file(directory: str, payload: bytes) -> str:
    """Atomically replace ``<directory>/nvml-node.snap`` (readable by every container user)."""
    import tempfile

    target = os.path.join(directory, NVML_NODE_FILE)  # noqa: PTH118
    fd, tmp = tempfile.mkstemp(prefix=f".{NVML_NODE_FILE}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, 0o644)  # noqa: PTH101
        os.replace(tmp, target)  # noqa: PTH105
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # noqa: PTH108
        raise
    return target


class NvmlNodeSnapshot:
    """Keeps ``nvml-node.snap`` current; :meth:`changed` after every topology.json write."""

    def __init__(
        self,
        state_dir: str,
        seed: int,
        smi: str = BUNDLE_SMI,
        frames: int = DEFAULT_FRAMES,
    ) -> None:
        self.state_dir = state_dir
        self.seed = seed
        self.smi = smi
        self.frames = max(2, frames)
        self._changed = asyncio.Event()
        self.writes = 0
        self.cpu_seconds = 0.0  # the nvidia-smi children's CPU, for the bench and the docs

    @property
    def refresh_seconds(self) -> float:
        """Rewrite when half the frames are used up: a container never meets a file whose last
        frame is near, even if a refresh fails once."""
        return self.frames * BUCKET_SECONDS / 2

    def changed(self) -> None:
        self._changed.set()

    def available(self) -> bool:
        return bool(self.smi) and os.access(self.smi, os.X_OK)

    async def write_once(self) -> bool:
        """One snapshot; False (and no file change) when nvidia-smi cannot build one."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FGO_STATE_DIR": self.state_dir,
            "FGO_SEED": str(self.seed),
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = await asyncio.create_subprocess_exec(
            self.smi,
            SNAPSHOT_FLAG,
            str(self.frames),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_seconds += (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if proc.returncode != 0 or not out.endswith(b"\nE\n"):
            log.info("nvml.node_snapshot.failed", rc=proc.returncode, stderr=err.decode()[-300:])
            return False
        await asyncio.to_thread(write_nvml_node_file, self.state_dir, out)
        self.writes += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh on every change and every :attr:`refresh_seconds` until ``stop``."""
        if not self.available():
            log.info("nvml.node_snapshot.disabled", smi=self.smi)
            return
        while not stop.is_set():
            if self._changed.is_set():
                await asyncio.sleep(DEBOUNCE_SECONDS)  # one snapshot for a burst of records
            self._changed.clear()
            started = time.monotonic()
            try:
                await self.write_once()
            except OSError as exc:
                log.warning("nvml.node_snapshot.error", error=str(exc))
            waiters = {
                asyncio.ensure_future(self._changed.wait()),
                asyncio.ensure_future(stop.wait()),
            }
            left = max(0.0, self.refresh_seconds - (time.monotonic() - started))
            _, pending = await asyncio.wait(
                waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
