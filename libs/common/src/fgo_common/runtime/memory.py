"""Give the start-up heap back to the OS.

Importing kubernetes_asyncio unmarshals ~770 generated model modules (a transient peak of
~74 MiB of which ~35 MiB stays live), and the first full list of a big cluster allocates its
JSON once more. glibc keeps such freed memory in its arenas, so a service's RSS stays at its
start-up peak for its whole life; ``malloc_trim(0)`` hands it back (measured on the exporter:
106.7 -> 84.1 MiB, docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    return trim


def release_freed_heap() -> bool:
    """Return freed heap pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


async def trim_when_ready(is_ready: Callable[[], bool], changed: asyncio.Event) -> None:
    """Trim once the service is first ready (its imports and initial lists are done)."""
    while not is_ready():
        changed.clear()
        await changed.wait()
    released = release_freed_heap()
    log.debug("memory.trimmed", released=released)
