"""Give the start-up heap back to the OS.

Importing kubernetes_asyncio unmarshals ~770 generated model modules (a transient peak of
~74 MiB of which ~35 MiB stays live), and the first full list of a big cluster allocates its
JSON once more. glibc keeps such freed memory in its arenas, so a service's RSS stays at its
start-up peak for its whole life; ``malloc_trim(0)`` hands it back (measured on the exporter:
106.7 -> 84.1 MiB, docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import contextlib
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


_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas (like ``MALLOC_ARENA_MAX``) before threads start: each thread
    that allocates gets its own arena otherwise, and memory freed in one is never reused by
    another. False where the C library has no ``mallopt``."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, count))


async def trim_periodically(interval_s: float, stop: asyncio.Event) -> None:
    """Trim every ``interval_s``: bursts (a thousand nodes arriving, a pod storm, a relist)
    leave freed memory that glibc keeps, and with its dynamic trim threshold (raised to twice
    the largest freed mmap'd block) it can keep tens of MiB for good."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        release_freed_heap()


async def trim_when_ready(is_ready: Callable[[], bool], changed: asyncio.Event) -> None:
    """Trim once the service is first ready (its imports and initial lists are done)."""
    while not is_ready():
        changed.clear()
        await changed.wait()
    released = release_freed_heap()
    log.debug("memory.trimmed", released=released)
