"""Classification of API errors into what a controller should do about them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def status_of(exc: BaseException) -> int | None:
    if isinstance(exc, ApiException):
        return int(exc.status) if exc.status else None
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status
    return None


def is_not_found(exc: BaseException) -> bool:
    return status_of(exc) == 404


def is_conflict(exc: BaseException) -> bool:
    return status_of(exc) == 409


def is_gone(exc: BaseException) -> bool:
    return status_of(exc) == 410


def is_transient(exc: BaseException) -> bool:
    """Worth retrying as is: overload, server errors, broken connections, timeouts."""
    if status_of(exc) in TRANSIENT_STATUSES:
        return True
    return isinstance(
        exc,
        aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError
        | TimeoutError
        | asyncio.TimeoutError
        | ConnectionError
        | OSError,
    ) and not isinstance(exc, ApiException)


def is_auth_failure(exc: BaseException) -> bool:
    """401/403. Usually final, but for about a second after a kube-apiserver restart every
    ServiceAccount request is refused while its authenticator and RBAC caches fill, so
    long-running loops retry these with back-off (as client-go's reflector does) instead of
    exiting into a crash loop; one-shot writes retry them only a few times."""
    return status_of(exc) in (401, 403)


def is_api_error(exc: BaseException) -> bool:
    """Any answer from the apiserver with an HTTP status (as opposed to a bug in our code)."""
    return status_of(exc) is not None


def retry_after_seconds(exc: BaseException) -> float | None:
    if isinstance(exc, ApiException) and exc.headers:
        value = exc.headers.get("Retry-After")
        if value:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _status_message(body: object) -> str:
    """``message`` of the ``Status`` object an apiserver error body carries, else ''."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not isinstance(body, str) or not body:
        return ""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip().splitlines()[0] if body.strip() else ""
    return str(parsed.get("message") or "") if isinstance(parsed, dict) else ""


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """One log line for an error: for an apiserver answer its status code, reason and the
    ``Status`` message (``403 Forbidden: resourceclaims.resource.k8s.io is forbidden: ...``),
    never the response headers kubernetes-asyncio puts into ``str(ApiException)``."""
    status = status_of(exc)
    if status is not None:
        reason = getattr(exc, "reason", None) or getattr(exc, "message", None) or ""
        message = _status_message(getattr(exc, "body", None))
        text = f"{status} {reason}".strip() + (f": {message}" if message else "")
    else:
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else type(exc).__name__
    text = " ".join(text.split())
    return text[:limit] or type(exc).__name__


class KubeApiError(ApiException):
    """An ``ApiException`` whose ``str`` is :func:`describe_error`'s one line."""

    def __str__(self) -> str:
        return describe_error(self)


async def raise_for_status(resp: aiohttp.ClientResponse) -> None:
    """With ``_preload_content=False`` kubernetes-asyncio hands back the raw response without
    checking its status; turn a non-2xx answer into the ``ApiException`` callers classify."""
    if 200 <= resp.status <= 299:
        return
    body = await resp.read()
    exc = KubeApiError(status=resp.status, reason=resp.reason)
    exc.body = body
    exc.headers = resp.headers
    resp.release()
    raise exc
