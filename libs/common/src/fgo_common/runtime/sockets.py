"""Unix socket files of the kubelet plugins: identity and safe removal."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

SocketIdentity = tuple[int, int, int]


def socket_identity(path: Path) -> SocketIdentity | None:
    """(device, inode, ctime) of a socket file, or None if there is no socket at ``path``.

    A re-created socket can reuse the inode number; the change time tells them apart.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def remove_socket(path: Path) -> None:
    """Remove ``path`` if it is a socket (never a checkpoint or anything else)."""
    if socket_identity(path) is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def restrict_socket(path: Path) -> None:
    """Make a socket we just bound owner-only (0600). gRPC creates it with the process umask,
    which may be 000 in a container; only the kubelet (root) needs to connect."""
    if socket_identity(path) is not None:
        path.chmod(0o600)
