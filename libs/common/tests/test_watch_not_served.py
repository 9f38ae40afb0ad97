"""The Reflector's "not served" contract: a 404 to the list or watch of a collection is reported
to the caller at once (:class:`ResourceNotServed`); 401/403/5xx are retried with back-off. The
same contract against a real apiserver: tests/integration/test_optional_apis.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from fgo_common.kube.errors import KubeApiError, describe_error
from fgo_common.kube.retry import Backoff
from fgo_common.kube.watch import ADDED, DELETED, SYNCED, Reflector, ResourceNotServed
from kubernetes_asyncio.client.exceptions import ApiException
from multidict import CIMultiDict

_FAST = Backoff(initial_seconds=0.001, max_seconds=0.002)
_NOT_FOUND_BODY = json.dumps(
    {
        "kind": "Status",
        "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound",
        "code": 404,
    }
).encode()


class _Response:
    reason = "OK"

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        lines: tuple[bytes, ...] = (),
        until: asyncio.Event | None = None,
    ) -> None:
        self.status = status
        self._until = until
        self._body = body
        self.headers = CIMultiDict({"Audit-Id": "abc", "Content-Type": "application/json"})
        self.reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 503: "Unavailable"}[status]
        self.content = self
        self._lines = list(lines)

    async def read(self) -> bytes:
        return self._body

    async def json(self) -> Any:
        return json.loads(self._body)

    async def iter_any(self) -> AsyncIterator[bytes]:
        for line in self._lines:
            yield line
        if self._until is not None:
            await self._until.wait()

    def release(self) -> None:
        pass


def _listing(*names: str, rv: str = "5") -> _Response:
    items = [{"metadata": {"name": n, "resourceVersion": rv}} for n in names]
    return _Response(
        200, json.dumps({"metadata": {"resourceVersion": rv}, "items": items}).encode()
    )


class _Script:
    """A list function that answers from a script: one entry per call (list or watch)."""

    def __init__(self, answers: list[_Response]) -> None:
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, **kwargs: Any) -> _Response:
        self.calls.append(kwargs)
        return self.answers.pop(0) if self.answers else _Response(404, _NOT_FOUND_BODY)


async def _drain(reflector: Reflector, stop: asyncio.Event, seen: list[str]) -> None:
    async with asyncio.timeout(5):
        async for event in reflector.events(stop):
            seen.append(event.type)


async def test_a_404_list_surfaces_as_not_served_without_retrying() -> None:
    script = _Script([_Response(404, _NOT_FOUND_BODY)])
    reflector = Reflector(script, name="podgroups", backoff=_FAST)
    seen: list[str] = []
    with structlog.testing.capture_logs() as logs, pytest.raises(ResourceNotServed) as info:
        await _drain(reflector, asyncio.Event(), seen)
    assert len(script.calls) == 1  # reported at once, not retried in place
    assert seen == [] and not reflector.synced.is_set()
    assert info.value.watch == "podgroups"
    assert "404 Not Found: the server could not find the requested resource" in str(info.value)
    assert [entry for entry in logs if entry["log_level"] in ("warning", "error")] == []


async def test_a_404_watch_after_a_list_surfaces_as_not_served() -> None:
    """The CRD is deleted between the list and the watch."""
    script = _Script([_listing("a"), _Response(404, _NOT_FOUND_BODY)])
    reflector = Reflector(script, name="podgroups", backoff=_FAST)
    seen: list[str] = []
    with pytest.raises(ResourceNotServed):
        await _drain(reflector, asyncio.Event(), seen)
    assert seen == [ADDED, SYNCED]
    gone = reflector.forget()
    assert [e.type for e in gone] == [DELETED] and reflector.cache == {}
    assert not reflector.synced.is_set()


async def test_a_404_error_event_in_the_stream_surfaces_as_not_served() -> None:
    error = {"type": "ERROR", "object": {"kind": "Status", "code": 404, "message": "gone"}}
    watch = _Response(200, lines=(json.dumps(error).encode() + b"\n",))
    reflector = Reflector(_Script([_listing("a"), watch]), name="t", backoff=_FAST)
    with pytest.raises(ResourceNotServed, match="gone"):
        await _drain(reflector, asyncio.Event(), [])


@pytest.mark.parametrize("status", [403, 503])
async def test_refusals_and_server_errors_are_retried_in_place(status: int) -> None:
    """401/403 while a restarted apiserver fills its caches, 5xx while it starts: retried."""
    stop = asyncio.Event()
    refusal = _Response(status, b'{"kind":"Status","message":"not yet","code":%d}' % status)
    script = _Script([refusal, refusal, _listing("a", "b"), _Response(200, until=stop)])
    reflector = Reflector(script, name="t", backoff=_FAST)
    seen: list[str] = []

    async def stop_when_synced() -> None:
        await reflector.synced.wait()
        stop.set()

    with structlog.testing.capture_logs() as logs:
        await asyncio.gather(_drain(reflector, stop, seen), stop_when_synced())
    assert seen[:3] == [ADDED, ADDED, SYNCED]
    retries = [entry for entry in logs if entry["event"] == "watch.retry"]
    assert len(retries) == 2
    for entry in retries:
        assert entry["error"].startswith(f"{status} ")
        assert "not yet" in entry["error"]
        assert "\n" not in entry["error"] and "Audit-Id" not in entry["error"]


def test_error_text_is_one_line_without_headers() -> None:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = b'{"kind":"Status","message":"pods is forbidden: User \\"x\\" cannot list"}'
    exc.headers = CIMultiDict({"Audit-Id": "abc", "X-Kubernetes-Pf-Flowschema-Uid": "u"})
    assert "HTTP response headers" in str(exc)  # what kubernetes-asyncio prints
    assert describe_error(exc) == '403 Forbidden: pods is forbidden: User "x" cannot list'
    ours = KubeApiError(status=404, reason="Not Found")
    ours.body = _NOT_FOUND_BODY
    ours.headers = exc.headers
    assert str(ours) == "404 Not Found: the server could not find the requested resource"
    assert describe_error(ConnectionResetError("reset\nby peer")) == "reset"
    assert describe_error(TimeoutError()) == "TimeoutError"


async def test_slice_api_sends_the_chosen_versions_api_version() -> None:
    from fgo_common.kube.served import SliceApi, newest
    from kubernetes_asyncio import client

    assert newest(["v1beta1", "v1beta2"], ("v1", "v1beta2")) == "v1beta2"
    assert newest(["v1beta1"], ("v1", "v1beta2")) is None
    async with client.ApiClient() as api:
        beta = SliceApi(api, "v1beta2")
        sent: list[dict[str, Any]] = []

        async def patch(name: str, body: dict[str, Any], **kwargs: Any) -> None:
            sent.append(body)

        beta._api.patch_resource_slice = patch
        obj = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {}}
        await beta.patch_resource_slice("s", obj)
        assert sent[0]["apiVersion"] == "resource.k8s.io/v1beta2"
        assert obj["apiVersion"] == "resource.k8s.io/v1"  # the caller's object is not changed
        with pytest.raises(ValueError, match="v1beta1"):
            SliceApi(api, "v1beta1")
