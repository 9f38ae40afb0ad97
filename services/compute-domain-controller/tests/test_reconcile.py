"""One ComputeDomain's pass against canned caches and a recording API: finalizer first, the
template once, conflicts and bad specs reported (not retried), deletion order."""

from __future__ import annotations

from typing import Any

import pytest
from fgo_common import computedomain as cdn
from fgo_compute_domain_controller.controller import ComputeDomainController
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry

Obj = dict[str, Any]
UID = "cd-uid-1"


class RecordingApi:
    """The controller's writes, recorded; each returns what the API server would."""

    dra_version = "v1"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    async def patch_domain(self, namespace: str, name: str, body: Obj) -> Obj:
        self.calls.append(("patch_domain", body))
        meta = {"name": name, "namespace": namespace, "uid": UID, **body["metadata"]}
        return {"metadata": meta, "spec": SPEC}

    async def patch_domain_status(self, namespace: str, name: str, status: Obj) -> Obj:
        self.calls.append(("status", status))
        return {"metadata": {"name": name, "namespace": namespace, "uid": UID,
                             "finalizers": [cdn.FINALIZER]}, "spec": SPEC, "status": status}  # fmt: skip

    async def create_template(self, template: Obj) -> Obj:
        self.calls.append(("create_template", template["metadata"]["name"]))
        return template

    async def read_template(self, namespace: str, name: str) -> Obj:
        raise AssertionError("not expected")

    async def delete_template(self, namespace: str, name: str, uid: str) -> bool:
        self.calls.append(("delete_template", name))
        return True

    async def warn(self, cd: Obj, reason: str, message: str) -> None:
        self.events.append((reason, message))


SPEC = {"numNodes": 1, "channel": {"resourceClaimTemplate": {"name": "chan"}}}


def _cd(**meta: Any) -> Obj:
    return {"metadata": {"name": "cd", "namespace": "ns", "uid": UID, "resourceVersion": "5",
                         **meta}, "spec": SPEC}  # fmt: skip


@pytest.fixture
async def controller() -> ComputeDomainController:
    async with client.ApiClient(client.Configuration(host="http://127.0.0.1:1")) as api:
        ctl = ComputeDomainController(api, CollectorRegistry(), nodes=_NodeCache(), writer=None)
    ctl.api = RecordingApi()  # type: ignore[assignment]
    return ctl


class _NodeCache:
    cache: dict[str, Obj] = {}


def _owned_template(uid: str = UID) -> Obj:
    return {"metadata": {"name": "chan", "namespace": "ns", "uid": "t-1",
                         "labels": {cdn.TEMPLATE_DOMAIN_LABEL: "cd"},
                         "ownerReferences": [{"kind": cdn.KIND, "uid": uid, "controller": True}]}}  # fmt: skip


async def test_new_domain_gets_finalizer_then_template_then_status(
    controller: ComputeDomainController,
) -> None:
    controller.domains.cache["ns/cd"] = _cd()
    await controller.reconcile("ns/cd")
    api: Any = controller.api
    kinds = [c[0] for c in api.calls]
    assert kinds == ["patch_domain", "create_template", "status"]
    assert api.calls[0][1]["metadata"]["finalizers"] == [cdn.FINALIZER]
    assert api.calls[0][1]["metadata"]["resourceVersion"] == "5"  # never a blind write
    assert api.calls[2][1] == {"status": "NotReady", "nodes": None}
    # A second pass with the template cached and the status stored writes nothing.
    api.calls.clear()
    await controller.reconcile("ns/cd")
    assert api.calls == []


async def test_template_of_someone_else_is_a_conflict_not_a_retry(
    controller: ComputeDomainController,
) -> None:
    controller.domains.cache["ns/cd"] = _cd(finalizers=[cdn.FINALIZER])
    controller.templates.cache["ns/chan"] = _owned_template(uid="another")
    await controller.reconcile("ns/cd")  # returns: no exception, so no back-off retry
    api: Any = controller.api
    assert [e[0] for e in api.events] == ["ResourceClaimTemplateConflict"]
    assert ("create_template", "chan") not in api.calls
    assert api.calls[-1] == ("status", {"status": "NotReady", "nodes": None})


async def test_invalid_spec_is_reported(controller: ComputeDomainController) -> None:
    bad = _cd(finalizers=[cdn.FINALIZER])
    bad["spec"] = {"numNodes": 1, "channel": {"allocationMode": "Some",
                                              "resourceClaimTemplate": {"name": "chan"}}}  # fmt: skip
    controller.domains.cache["ns/cd"] = bad
    await controller.reconcile("ns/cd")
    api: Any = controller.api
    (event,) = api.events
    assert event[0] == "InvalidSpec" and event[1].startswith("spec.channel.allocationMode:")
    assert [c[0] for c in api.calls] == ["status"]


async def test_deletion_waits_for_the_template_before_the_finalizer(
    controller: ComputeDomainController,
) -> None:
    controller.domains.cache["ns/cd"] = _cd(
        finalizers=[cdn.FINALIZER], deletionTimestamp="2026-01-01T00:00:00Z"
    )
    controller.templates.cache["ns/chan"] = _owned_template()
    await controller.reconcile("ns/cd")
    api: Any = controller.api
    assert api.calls == [("delete_template", "chan")]  # finalizer stays while it exists
    del controller.templates.cache["ns/chan"]  # the watch saw it go
    api.calls.clear()
    await controller.reconcile("ns/cd")
    ((kind, body),) = api.calls
    assert kind == "patch_domain" and body["metadata"]["finalizers"] is None
