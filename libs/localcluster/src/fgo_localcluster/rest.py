"""A minimal admin REST client for the cluster's own bootstrap and status calls.

``fgo cluster up``/``status`` make a handful of API calls; importing kubernetes-asyncio for
them costs ~2s of CPU (a third of a cached start). Plain aiohttp with the admin client
certificate does the same in milliseconds. Library users and tests keep using
kubernetes-asyncio (see :func:`fgo_localcluster.nodes.api_client`).
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import aiohttp

from fgo_localcluster.health import ssl_context
from fgo_localcluster.pki import Pki

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


class RestError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _plural(kind: str) -> str:
    lower = kind.lower()
    return lower + "es" if lower.endswith(("s", "x", "ch")) else lower + "s"


def object_path(obj: dict[str, Any]) -> str:
    """REST path of a built-in object from its apiVersion, kind, name and namespace."""
    api_version: str = obj["apiVersion"]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    meta = obj["metadata"]
    ns = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    return f"{base}{ns}/{_plural(obj['kind'])}/{meta['name']}"


class Rest:
    """``async with Rest(server, pki) as api: await api.get("/api/v1/nodes")``."""

    def __init__(self, server: str, pki: Pki, timeout_s: float = 30.0) -> None:
        self._server = server.rstrip("/")
        self._pki = pki
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Rest:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            connector=aiohttp.TCPConnector(ssl=ssl_context(self._pki, client_cert=True)),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        assert self._session is not None, "use `async with Rest(...)`"
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        async with self._session.request(
            method, self._server + path, data=data, headers=headers, params=params
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise RestError(resp.status, str(message)[:500])
            result: dict[str, Any] = json.loads(text) if text else {}
            return result

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return await self.request("GET", path, params=params)

    async def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        """Server-side apply (create or update) with ``force``."""
        return await self.request(
            "PATCH",
            object_path(obj),
            body=obj,
            content_type=APPLY_PATCH,
            params={"fieldManager": field_manager, "force": "true"},
        )
