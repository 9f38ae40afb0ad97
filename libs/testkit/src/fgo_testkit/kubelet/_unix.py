"""Unix-socket helpers shared by the kubelet-side peers."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

import grpc

# sun_path is 108 bytes on Linux including the terminating NUL; gRPC fails late and vaguely
# beyond that, so callers get a clear error up front instead.
MAX_UNIX_SOCKET_PATH = 107


class PeerError(Exception):
    """A peer could not do what a test asked (not a gRPC status from the plugin)."""


def unix_target(path: Path | str) -> str:
    """gRPC target for a unix socket path (absolute, as the kubelet dials it)."""
    absolute = Path(path).absolute()
    if len(str(absolute)) > MAX_UNIX_SOCKET_PATH:
        raise PeerError(f"unix socket path longer than {MAX_UNIX_SOCKET_PATH} bytes: {absolute}")
    return f"unix:{absolute}"


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def remove_socket(path: Path) -> None:
    """Remove ``path`` if it is a socket; leave other files (e.g. checkpoints) alone."""
    if is_socket(path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def insecure_unix_channel(path: Path | str) -> grpc.aio.Channel:
    # The kubelet dials with authority "localhost"; gRPC's default for unix targets is the
    # same, but set it so plugins that check :authority see what a kubelet sends.
    return grpc.aio.insecure_channel(
        unix_target(path), options=[("grpc.default_authority", "localhost")]
    )
