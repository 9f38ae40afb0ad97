from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from fgo_localcluster import process


async def test_spawned_process_is_detached_logged_and_terminated(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "sleeper.log"
    pid_file = tmp_path / "run" / "sleeper.pid"
    argv = [
        sys.executable,
        "-c",
        "import sys, time; print('hello', flush=True); "
        "print('oops', file=sys.stderr, flush=True); time.sleep(60)",
    ]
    record = await process.spawn(argv, log, pid_file, {"FGO_TEST": "1"})
    try:
        assert process.PidRecord.read(pid_file) == record
        assert process.is_running(record)
        # Re-parented away from us: never our child, so never our zombie.
        assert Path(f"/proc/{record.pid}/stat").read_text().split()[3] != str(os.getpid())
        for _ in range(200):
            if "oops" in log.read_text().splitlines():
                break
            await asyncio.sleep(0.05)
        lines = log.read_text().splitlines()
        assert lines[1].startswith("===== fgo: start")
        assert "hello" in lines
        assert "oops" in lines
    finally:
        outcome = await process.terminate(record, grace_s=5)
    assert outcome == "stopped"
    assert not process.is_running(record)
    assert await process.terminate(record) == "not running"


async def test_a_recycled_pid_running_another_program_is_not_ours(tmp_path: Path) -> None:
    foreign = process.PidRecord(os.getpid(), "/usr/bin/definitely-not-this", "now")
    assert not process.is_running(foreign)
    assert process.send_signal(foreign, signal.SIGTERM) is False
    assert not process.is_running(process.PidRecord(2**22 + 12345, sys.executable, "now"))


async def test_sigterm_ignoring_process_is_killed(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-c",
        "import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(60)",
    ]
    log = tmp_path / "stubborn.log"
    record = await process.spawn(argv, log, tmp_path / "stubborn.pid")
    # The log's header line quotes the command (and so the word); wait for the output line.
    for _ in range(200):
        if "ready" in log.read_text().splitlines():
            break
        await asyncio.sleep(0.05)
    assert await process.terminate(record, grace_s=0.5) == "killed"
    assert not process.is_running(record)
