"""The retry policy's classification: transient errors and (briefly) auth refusals retried,
everything else raised at once."""

from __future__ import annotations

import pytest
from fgo_common.kube import retry
from fgo_common.kube.retry import AUTH_FAILURE_ATTEMPTS, Backoff, retrying
from kubernetes_asyncio.client.exceptions import ApiException

NO_WAIT = Backoff(initial_seconds=0.0, max_seconds=0.0)


class Flaky:
    def __init__(self, status: int, failures: int) -> None:
        self.status = status
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ApiException(status=self.status, reason="test")
        return "ok"


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    async def instant(_: float) -> None:
        return None

    monkeypatch.setattr(retry.asyncio, "sleep", instant)


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refusal_of_a_restarting_apiserver_is_retried(status: int) -> None:
    call = Flaky(status, failures=AUTH_FAILURE_ATTEMPTS - 1)
    assert await retrying(call, what="t", backoff=NO_WAIT) == "ok"
    assert call.calls == AUTH_FAILURE_ATTEMPTS


async def test_lasting_auth_refusal_surfaces_after_a_few_attempts() -> None:
    call = Flaky(403, failures=100)
    with pytest.raises(ApiException) as info:
        await retrying(call, what="t", attempts=8, backoff=NO_WAIT)
    assert info.value.status == 403
    assert call.calls == AUTH_FAILURE_ATTEMPTS


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_final_errors_are_not_retried(status: int) -> None:
    call = Flaky(status, failures=1)
    with pytest.raises(ApiException):
        await retrying(call, what="t", backoff=NO_WAIT)
    assert call.calls == 1


async def test_transient_errors_use_every_attempt() -> None:
    call = Flaky(503, failures=100)
    with pytest.raises(ApiException):
        await retrying(call, what="t", attempts=5, backoff=NO_WAIT)
    assert call.calls == 5
