"""The controller's API writes, as raw JSON (no kubernetes-asyncio models): merge patches of a
ComputeDomain's finalizers and status, the workload template's create and delete, Events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from fgo_common import computedomain as cdn
from fgo_common.kube.errors import is_conflict, is_not_found, raise_for_status
from fgo_common.kube.leader import NotLeading
from fgo_common.kube.retry import retrying
from kubernetes_asyncio import client

log = structlog.get_logger(__name__)

Obj = dict[str, Any]
# kubernetes-asyncio picks strategic merge for dict bodies, which custom resources refuse.
MERGE_PATCH: dict[str, Any] = {
    "_content_type": "application/merge-patch+json",
    "_preload_content": False,
}
COMPONENT = "compute-domain-controller"


async def _raw(call: Any) -> Obj:
    resp = await call
    await raise_for_status(resp)
    try:
        return cast("Obj", json.loads(await resp.read()))
    finally:
        resp.release()


class DomainApi:
    """Writes of the controller through one API client (fenced by leader election)."""

    def __init__(self, api: client.ApiClient, dra_version: str = "v1") -> None:
        self._custom: Any = client.CustomObjectsApi(api)
        self._core: Any = client.CoreV1Api(api)
        self.dra_version = dra_version
        self._events_sent: set[str] = set()

    async def patch_domain(self, namespace: str, name: str, body: Obj) -> Obj:
        return await retrying(
            lambda: _raw(
                self._custom.patch_namespaced_custom_object(
                    cdn.GROUP, cdn.VERSION, namespace, cdn.PLURAL, name, body, **MERGE_PATCH
                )
            ),
            what=f"patch ComputeDomain {namespace}/{name}",
        )

    async def patch_domain_status(self, namespace: str, name: str, status: Obj) -> Obj:
        return await retrying(
            lambda: _raw(
                self._custom.patch_namespaced_custom_object_status(
                    cdn.GROUP, cdn.VERSION, namespace, cdn.PLURAL, name, {"status": status},
                    **MERGE_PATCH,
                )
            ),
            what=f"patch ComputeDomain status {namespace}/{name}",
        )  # fmt: skip

    async def create_template(self, template: Obj) -> Obj:
        namespace = template["metadata"]["namespace"]
        return await retrying(
            lambda: _raw(
                self._custom.create_namespaced_custom_object(
                    "resource.k8s.io", self.dra_version, namespace, "resourceclaimtemplates",
                    {**template, "apiVersion": f"resource.k8s.io/{self.dra_version}"},
                    _preload_content=False,
                )
            ),
            what=f"create ResourceClaimTemplate {namespace}/{template['metadata']['name']}",
        )  # fmt: skip

    async def read_template(self, namespace: str, name: str) -> Obj:
        return await retrying(
            lambda: _raw(
                self._custom.get_namespaced_custom_object(
                    "resource.k8s.io", self.dra_version, namespace, "resourceclaimtemplates",
                    name, _preload_content=False,
                )
            ),
            what=f"read ResourceClaimTemplate {namespace}/{name}",
        )  # fmt: skip

    async def delete_template(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the template with ``uid`` (a precondition: never one recreated meanwhile);
        False if it was already gone."""
        body = {"preconditions": {"uid": uid}}
        try:
            await retrying(
                lambda: _raw(
                    self._custom.delete_namespaced_custom_object(
                        "resource.k8s.io", self.dra_version, namespace,
                        "resourceclaimtemplates", name, body=body, _preload_content=False,
                    )
                ),
                what=f"delete ResourceClaimTemplate {namespace}/{name}",
            )  # fmt: skip
        except Exception as exc:
            if is_not_found(exc):
                return False
            raise
        return True

    async def warn(self, cd: Obj, reason: str, message: str) -> None:
        """A Warning Event on ``cd``, once per (ComputeDomain UID, reason, message) in this
        process. Best effort: a lost Event never stops reconciling."""
        meta = cd["metadata"]
        key = f"{meta.get('uid')}/{reason}/{message}"
        if key in self._events_sent:
            return
        self._events_sent.add(key)
        log.warning(
            "event.warning",
            reason=reason,
            namespace=meta["namespace"],
            name=meta["name"],
            message=message,
        )
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{str(meta['name'])[:200]}.",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": cdn.API_VERSION,
                "kind": cdn.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await retrying(
                lambda: _raw(
                    self._core.create_namespaced_event(
                        meta["namespace"], body, _preload_content=False
                    )
                ),
                what=f"event {reason}",
                attempts=3,
            )
        except NotLeading:
            self._events_sent.discard(key)
        except Exception as exc:
            if not is_conflict(exc):
                log.warning("event.failed", reason=reason, error=str(exc)[:200])
