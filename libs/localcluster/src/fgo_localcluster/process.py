"""Detached component processes: start, record, check, stop.

Components must outlive the ``fgo cluster up`` process that started them, and must never be
children of a long-lived Python process (pytest): a child that dies stays a zombie until reaped,
and asyncio kills the children of its subprocess transports when they are closed. So each
component is started through a throw-away ``sh`` that backgrounds it and exits at once: the
component is re-parented to init, runs in its own session (Ctrl-C in the terminal does not
reach it), reads /dev/null and appends to its log file.

A pid file records the pid together with the executable, so a recycled pid belonging to some
other program is never mistaken for (or killed as) one of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from fgo_localcluster.layout import write_atomic

# `"$@"` runs the component with its arguments exactly as given (no shell parsing); `$!` is
# its pid. The log is opened in append mode so restarts keep the earlier run's lines.
_LAUNCHER = 'log=$1; shift; exec </dev/null; "$@" >>"$log" 2>&1 & echo $!'


@dataclass(frozen=True)
class PidRecord:
    pid: int
    executable: str
    started_at: str

    def to_json(self) -> str:
        return (
            json.dumps(
                {"pid": self.pid, "executable": self.executable, "started_at": self.started_at}
            )
            + "\n"
        )

    @classmethod
    def read(cls, path: Path) -> PidRecord | None:
        try:
            raw = json.loads(path.read_text())
            return cls(int(raw["pid"]), str(raw["executable"]), str(raw["started_at"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None


def _proc_state(pid: int) -> str | None:
    """Single-letter state from /proc/<pid>/stat, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return stat[stat.rfind(")") + 2 :].split(" ", 1)[0]


def pid_exists(pid: int) -> bool:
    """True while any process (whatever it runs, zombies included) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_running(record: PidRecord) -> bool:
    """True if ``record.pid`` is alive (not a zombie) and runs ``record.executable``."""
    state = _proc_state(record.pid)
    if state is None or state in ("Z", "X"):
        return False
    try:
        exe = str(Path(f"/proc/{record.pid}/exe").readlink())
    except OSError:
        return False
    # A binary replaced by a rebuild shows as "<path> (deleted)"; it is still our process.
    return exe.removesuffix(" (deleted)") == record.executable


def _real_path(executable: str) -> str:
    # What /proc/<pid>/exe will show: symlinks (e.g. a venv's python) resolved.
    return str(Path(executable).resolve())


async def spawn(
    argv: list[str],
    log_path: Path,
    pid_path: Path,
    env: dict[str, str] | None = None,
    *,
    executable: str | None = None,
) -> PidRecord:
    """Start ``argv`` detached, appending to ``log_path``; writes and returns its pid record.

    ``executable`` is what the process will run once started, when ``argv[0]`` execs into
    something else (``nsenter -- kubelet ...``); default ``argv[0]``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with log_path.open("a") as fh:
        fh.write(f"\n===== fgo: start {stamp}: {shlex.join(argv)}\n")
    full_env = {**os.environ, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        _LAUNCHER,
        "fgo-launch",
        str(log_path),
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
        start_new_session=True,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0 or not out.strip().isdigit():
        raise RuntimeError(f"could not start {argv[0]}: {err.decode(errors='replace').strip()}")
    record = PidRecord(int(out.strip()), _real_path(executable or argv[0]), stamp)
    write_atomic(pid_path, record.to_json())
    return record


def send_signal(record: PidRecord, sig: int) -> bool:
    """Signal the process if it is still ours; returns whether a signal was sent."""
    if not is_running(record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, sig)
        return True
    return False


async def wait_exit(record: PidRecord, timeout_s: float) -> bool:
    """Poll until the process is gone; True if it exited within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while is_running(record):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def terminate(record: PidRecord, grace_s: float = 15.0) -> str:
    """SIGTERM, then SIGKILL after ``grace_s``; returns what it took ("not running", ...)."""
    if not send_signal(record, signal.SIGTERM):
        return "not running"
    if await wait_exit(record, grace_s):
        return "stopped"
    send_signal(record, signal.SIGKILL)
    await wait_exit(record, 5.0)
    return "killed"
