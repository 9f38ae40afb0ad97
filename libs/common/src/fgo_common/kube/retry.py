"""One retry policy for API calls: transient errors back off (honouring Retry-After); a 409 is
never retried blindly — callers re-read and re-apply via :func:`update_with_conflict_retry`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from fgo_common.kube.errors import (
    describe_error,
    is_auth_failure,
    is_conflict,
    is_transient,
    retry_after_seconds,
)

T = TypeVar("T")
# A refusal right after an apiserver restart clears within a second or two; a real RBAC gap
# must still surface quickly, so auth failures get only a few attempts.
AUTH_FAILURE_ATTEMPTS = 4
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter."""

    initial_seconds: float = 0.2
    max_seconds: float = 10.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_seconds, self.initial_seconds * self.factor**attempt)
        return random.uniform(ceiling / 2, ceiling)


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int = 8,
    backoff: Backoff | None = None,
) -> T:
    """Run ``call``; retry transient failures up to ``attempts`` times (auth failures up to
    ``AUTH_FAILURE_ATTEMPTS``)."""
    for attempt in range(attempts):
        try:
            return await call()
        except Exception as exc:
            retryable = is_transient(exc) or (
                is_auth_failure(exc) and attempt < AUTH_FAILURE_ATTEMPTS - 1
            )
            if not retryable or attempt == attempts - 1:
                raise
            delay = retry_after_seconds(exc) or (backoff or Backoff()).delay(attempt)
            log.warning(
                "api.retry",
                what=what,
                attempt=attempt + 1,
                delay=round(delay, 2),
                error=describe_error(exc, 200),
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def update_with_conflict_retry(
    read: Callable[[], Awaitable[T]],
    mutate_and_write: Callable[[T], Awaitable[object]],
    *,
    what: str,
    attempts: int = 10,
) -> None:
    """Optimistic concurrency: read, mutate, write with the read's resourceVersion; on 409
    re-read and re-apply the mutation (which must be a pure function of what was read)."""
    for attempt in range(attempts):
        current = await retrying(read, what=f"read {what}")

        async def write(snapshot: T = current) -> object:
            return await mutate_and_write(snapshot)

        try:
            await retrying(write, what=f"write {what}")
            return
        except Exception as exc:
            if not is_conflict(exc) or attempt == attempts - 1:
                raise
            log.info("api.conflict", what=what, attempt=attempt + 1)
            await asyncio.sleep(random.uniform(0, 0.05 * (attempt + 1)))
