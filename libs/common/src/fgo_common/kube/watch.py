"""List, then watch, then relist: one watch helper for every controller.

list -> cache snapshot + ``synced`` -> watch from the list's resourceVersion with bookmarks and a
server-side timeout -> on 410 Gone (HTTP status or ERROR event) relist and diff against the cache
so deletions that happened meanwhile are still delivered -> on connection errors back off with
jitter and resume from the last seen resourceVersion. Objects are plain dicts (the JSON the
apiserver sent): model deserialisation costs more than everything else a controller does.

"Not served" is the one answer a reflector does not retry: a 404 to the list (or the watch) of a
collection means the apiserver does not serve that group/version/resource (an API switched off,
a CRD not installed or deleted), so :meth:`Reflector.events` raises :class:`ResourceNotServed`
and the caller decides (an optional API is looked for again later). Everything else with a status
(401/403 while a restarted apiserver fills its caches, 429, 5xx) is retried with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from fgo_common.kube.errors import (
    describe_error,
    is_api_error,
    is_auth_failure,
    is_gone,
    is_not_found,
    is_transient,
    raise_for_status,
)
from fgo_common.kube.retry import Backoff

log = structlog.get_logger(__name__)

_WATCH_BACKOFF = Backoff(initial_seconds=0.5, max_seconds=30.0)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
SYNCED = "SYNCED"  # emitted after every (re)list, once the cache matches the server

Obj = dict[str, Any]
ListFn = Callable[..., Awaitable[Any]]
Transform = Callable[[Obj], Obj]


def drop_managed_fields(obj: Obj) -> Obj:
    """The default cache transform (client-go users install the same one): no controller of
    ours reads ``managedFields``, and they are often the biggest part of an object."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    obj: Obj
    old: Obj | None = None


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def slim_node(obj: Obj) -> Obj:
    """A Node as our controllers read it: metadata, spec and the resource lists of its status.
    Conditions, addresses, nodeInfo and images are dropped; at thousands of nodes they are most
    of what a node cache would hold, and none of our services reads them."""
    drop_managed_fields(obj)
    status = obj.get("status")
    if isinstance(status, dict):
        obj["status"] = {k: status[k] for k in ("capacity", "allocatable") if k in status}
    return obj


def identity_stub(obj: Obj) -> Obj:
    """Only what a Reflector itself needs of an object nobody reads (name, namespace, uid,
    resourceVersion): a watch on a broad resource keeps the uninteresting ones this small."""
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}
    return {"metadata": kept}


class WatchExpired(Exception):
    """The resourceVersion we watch from is no longer available (410 Gone)."""


class ResourceNotServed(Exception):
    """The apiserver answered 404 to the list or watch of a collection: it does not serve this
    resource (API group/version switched off or unknown, CRD not installed). The signal is the
    list's own answer, not API discovery: it is the exact question the reflector asks, costs no
    extra request and cannot disagree with a stale discovery document."""

    def __init__(self, watch: str, detail: str) -> None:
        super().__init__(f"{watch}: not served ({detail})")
        self.watch = watch
        self.detail = detail


def _same_but_version(old: Obj, new: Obj) -> bool:
    """Whether two objects are equal but for ``metadata.resourceVersion`` (a heartbeat, once
    the transform has dropped the conditions it bumps)."""
    if old.keys() != new.keys():
        return False
    for field, value in old.items():
        if field != "metadata":
            if value != new[field]:
                return False
            continue
        other = new[field]
        if not isinstance(value, dict) or not isinstance(other, dict):
            return bool(value == other)
        if value.keys() != other.keys():
            return False
        if any(v != other[k] for k, v in value.items() if k != "resourceVersion"):
            return False
    return True


class Reflector:
    """Keeps ``cache`` equal to the server's view of one resource and yields the changes."""

    def __init__(
        self,
        list_fn: ListFn,
        *,
        name: str,
        timeout_seconds: int = 240,
        backoff: Backoff = _WATCH_BACKOFF,
        transform: Transform = drop_managed_fields,
        page_size: int = 250,
        skip_unchanged: bool | None = None,
        **list_kwargs: Any,
    ) -> None:
        """``transform`` sees every object before it is cached or delivered (the cache holds
        what it returns): a service keeps only the fields it reads, which is what bounds its
        memory at thousands of nodes.

        ``skip_unchanged``: a MODIFIED event whose transformed object equals the cached one but
        for ``metadata.resourceVersion`` updates the cache and is not delivered. Default: on
        for ``slim_node`` watches, where KWOK's (and kubelets') node heartbeats are such events
        for every node every few seconds and would otherwise cost each consumer a pass per node
        at idle (``skipped`` counts them)."""
        self._list_fn = list_fn
        self._transform = transform
        self._skip_unchanged = transform is slim_node if skip_unchanged is None else skip_unchanged
        self.skipped = 0
        self._page_size = page_size
        self._kwargs = list_kwargs
        self.name = name
        self._timeout = timeout_seconds
        self._backoff = backoff
        self.cache: dict[str, Obj] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.relists = 0
        self.restarts = 0
        self.expirations = 0  # 410 Gone answers (each followed by a relist)

    def forget(self) -> list[WatchEvent]:
        """Empty the cache (the resource is gone from the server) and return a DELETED event for
        each object it held; the next :meth:`events` starts with a fresh list."""
        gone = [WatchEvent(DELETED, obj) for obj in self.cache.values()]
        self.cache = {}
        self.resource_version = ""
        self.synced.clear()
        return gone

    async def _list(self) -> tuple[list[Obj], str]:
        """One consistent list, fetched in pages (``limit``/``continue``, as client-go does):
        each page is transformed before the next is read, so a big list never sits in memory
        whole, as raw body and full objects at once. An expired continue token is a 410, which
        :meth:`events` answers with a fresh list."""
        items: list[Obj] = []
        token = ""
        while True:
            page: dict[str, Any] = {"limit": self._page_size}
            if token:
                page["_continue"] = token
            resp = await self._list_fn(**self._kwargs, **page, _preload_content=False)
            await raise_for_status(resp)
            try:
                body = await resp.json()
            finally:
                resp.release()
            items.extend(self._transform(o) for o in body.get("items") or [])
            metadata = body.get("metadata") or {}
            token = str(metadata.get("continue") or "")
            if not token:
                return items, str(metadata["resourceVersion"])

    async def _relist(self) -> list[WatchEvent]:
        items, resource_version = await self._list()
        self.relists += 1
        fresh = {object_key(o): o for o in items}
        events: list[WatchEvent] = []
        for key, obj in fresh.items():
            old = self.cache.get(key)
            if old is None:
                events.append(WatchEvent(ADDED, obj))
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                events.append(WatchEvent(MODIFIED, obj, old))
        events.extend(
            WatchEvent(DELETED, old) for key, old in self.cache.items() if key not in fresh
        )
        self.cache = fresh
        self.resource_version = resource_version
        self.synced.set()
        events.append(WatchEvent(SYNCED, {}))
        return events

    def _apply(self, event_type: str, obj: Obj) -> WatchEvent | None:
        obj = self._transform(obj)
        key = object_key(obj)
        old = self.cache.get(key)
        if event_type == DELETED:
            self.cache.pop(key, None)
            return WatchEvent(DELETED, obj, old)
        if old is not None and old["metadata"].get("resourceVersion") == obj["metadata"].get(
            "resourceVersion"
        ):
            return None  # replayed after a resume: already delivered
        self.cache[key] = obj
        if self._skip_unchanged and old is not None and _same_but_version(old, obj):
            self.skipped += 1
            return None
        return WatchEvent(ADDED if old is None else MODIFIED, obj, old)

    async def _watch_stream(self) -> AsyncIterator[tuple[str, Obj]]:
        resp = await self._list_fn(
            **self._kwargs,
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._timeout,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=10, sock_read=self._timeout + 30
            ),
        )
        await raise_for_status(resp)
        try:
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                if b"\n" not in chunk:
                    continue
                # One split per chunk (a relist-sized chunk holds many events).
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        yield event["type"], event["object"]
        finally:
            resp.release()

    async def events(self, stop: asyncio.Event) -> AsyncIterator[WatchEvent]:
        """Yield changes forever (until ``stop``). The first call lists; a later call on the
        same reflector resumes watching from where the previous one stopped (relisting only if
        that resourceVersion has expired meanwhile). Raises :class:`ResourceNotServed` when the
        apiserver does not serve the resource (the cache is left as it was)."""
        need_list = not self.synced.is_set()
        failures = 0
        while not stop.is_set():
            try:
                if need_list:
                    for event in await self._relist():
                        yield event
                    need_list = False
                    log.debug(
                        "watch.listed",
                        watch=self.name,
                        objects=len(self.cache),
                        resource_version=self.resource_version,
                    )
                async for event_type, obj in self._watch_stream():
                    failures = 0
                    if event_type == "BOOKMARK":
                        self.resource_version = obj["metadata"]["resourceVersion"]
                        continue
                    if event_type == "ERROR":
                        if obj.get("code") == 410:
                            raise WatchExpired(obj.get("message", "410 Gone"))
                        if obj.get("code") == 404:
                            raise ResourceNotServed(self.name, str(obj.get("message", "404")))
                        raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                    self.resource_version = obj["metadata"]["resourceVersion"]
                    change = self._apply(event_type, obj)
                    if change is not None:
                        yield change
                    if stop.is_set():
                        return
                # Server-side timeout: resume from the last resourceVersion.
            except WatchExpired as exc:
                log.info("watch.expired", watch=self.name, reason=str(exc)[:200])
                self.expirations += 1
                need_list = True
            except Exception as exc:
                if is_not_found(exc):
                    raise ResourceNotServed(self.name, describe_error(exc, 200)) from None
                if is_gone(exc):
                    log.info("watch.expired", watch=self.name)
                    self.expirations += 1
                    need_list = True
                    continue
                # Like client-go's reflector, a watch never gives up on the apiserver: any
                # answer with a status (incl. the 401/403 of a freshly restarted apiserver
                # whose caches are still filling) is retried with back-off. Only errors of
                # our own code propagate.
                if not (
                    is_transient(exc)
                    or is_api_error(exc)
                    or isinstance(exc, RuntimeError | json.JSONDecodeError)
                ):
                    raise
                failures += 1
                self.restarts += 1
                delay = self._backoff.delay(min(failures, 8))
                # A refusal that outlasts an apiserver restart is an RBAC gap: say so loudly.
                report = log.error if is_auth_failure(exc) and failures >= 3 else log.warning
                report(
                    "watch.retry",
                    watch=self.name,
                    error=describe_error(exc, 200),
                    delay=round(delay, 2),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                # After repeated failures the resourceVersion may be stale; relist to be safe.
                if failures >= 3:
                    need_list = True
