"""Plugin socket helpers: owner-only mode regardless of umask; only sockets are removed."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from fgo_common.runtime.sockets import remove_socket, restrict_socket, socket_identity


def _bind(path: Path) -> socket.socket:
    old = os.umask(0)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
    finally:
        os.umask(old)
    return sock


def test_socket_bound_under_umask_000_becomes_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "plugin.sock"
    sock = _bind(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077, "test needs a permissive start"
        restrict_socket(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert socket_identity(path) is not None
    finally:
        sock.close()


def test_restrict_and_remove_leave_other_files_alone(tmp_path: Path) -> None:
    checkpoint = tmp_path / "kubelet_internal_checkpoint"
    checkpoint.write_text("{}")
    checkpoint.chmod(0o644)
    restrict_socket(checkpoint)
    remove_socket(checkpoint)
    assert checkpoint.exists()
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o644
