"""The one place nvidia-smi waits (loops, dmon/pmon): tests replace :func:`sleep`."""

from __future__ import annotations

import time


def sleep(seconds: float) -> None:
    # A CLI, not an async service: a plain blocking wait is what a loop of the real tool does.
    time.sleep(seconds)  # noqa: TID251
