"""Health probes of the components: one GET each, TLS verified against the cluster CA."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from fgo_localcluster.components import Health
from fgo_localcluster.pki import ADMIN, Pki


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


def ssl_context(pki: Pki, *, client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if client_cert:
        ctx.load_cert_chain(str(pki.cert(ADMIN.file_stem)), str(pki.key(ADMIN.file_stem)))
    return ctx


async def probe(health: Health, pki: Pki, timeout_s: float = 3.0) -> ProbeResult:
    """GET the health URL once; ok on HTTP 200."""
    ctx: ssl.SSLContext | bool = (
        ssl_context(pki, client_cert=health.client_cert) if health.tls else False
    )
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                connector=aiohttp.TCPConnector(ssl=ctx),
            ) as session,
            session.get(health.url) as resp,
        ):
            body = (await resp.text()).strip()
            if resp.status == 200:
                return ProbeResult(True, "ok")
            # /readyz lists the failing checks; the last lines are the informative ones.
            lines = [ln for ln in body.splitlines() if "failed" in ln] or body.splitlines()[-3:]
            return ProbeResult(False, f"HTTP {resp.status}: {'; '.join(lines)[:300]}")
    except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
        return ProbeResult(False, f"{type(exc).__name__}: {exc}"[:300])


async def wait_for(
    check: Callable[[], Awaitable[ProbeResult]],
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
    interval_s: float = 0.25,
) -> ProbeResult:
    """Re-run ``check`` until ok, timeout, or ``alive()`` says the process has died."""
    deadline = time.monotonic() + timeout_s
    result = ProbeResult(False, "not checked")
    while True:
        result = await check()
        if result.ok:
            return result
        if not alive():
            return ProbeResult(False, f"process exited ({result.detail})")
        if time.monotonic() >= deadline:
            return ProbeResult(False, f"timed out after {timeout_s:.0f}s ({result.detail})")
        await asyncio.sleep(interval_s)
