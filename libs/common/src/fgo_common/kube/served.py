"""Which version of an API group the apiserver serves, for resources we use in several versions.

DRA (``resource.k8s.io``) is served as ``v1`` from Kubernetes 1.34, as ``v1beta2``/``v1beta1``
before, and may be switched off (``--runtime-config``). Readers of claims take the newest served
of :data:`DRA_READ_VERSIONS` (the fields we read are the same in all three); writers of
ResourceSlices the newest of :data:`DRA_WRITE_VERSIONS` (``v1beta2`` has ``v1``'s shape,
``v1beta1`` nests device fields under ``basic``, which we do not write).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import structlog
from kubernetes_asyncio import client

from fgo_common.kube.errors import KubeApiError, raise_for_status

log = structlog.get_logger(__name__)

DRA_GROUP = "resource.k8s.io"
DRA_READ_VERSIONS = ("v1", "v1beta2", "v1beta1")
DRA_WRITE_VERSIONS = ("v1", "v1beta2")


async def served_versions(api: client.ApiClient, group: str) -> list[str]:
    """Versions of ``group`` the apiserver serves (API discovery), [] if it serves none."""
    untyped: Any = client.ApisApi(api)
    resp = await untyped.get_api_versions(_preload_content=False)
    await raise_for_status(resp)
    try:
        groups = json.loads(await resp.read()).get("groups") or []
    finally:
        resp.release()
    for entry in groups:
        if entry.get("name") == group:
            return [str(v.get("version")) for v in entry.get("versions") or []]
    return []


def newest(served: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first of ``wanted`` (newest first) that is served."""
    return next((v for v in wanted if v in served), None)


def not_served(group: str, wanted: Sequence[str]) -> KubeApiError:
    """The 404 a list of a resource the apiserver does not serve gets, for a group none of whose
    wanted versions is served (a Reflector reports it as ``ResourceNotServed``)."""
    exc = KubeApiError(status=404, reason="Not Found")
    exc.body = json.dumps(
        {"message": f"{group} serves none of {', '.join(wanted)}", "code": 404}
    ).encode()
    return exc


class ServedVersionList:
    """A Reflector list function for a cluster-scoped collection of ``group`` in the newest
    served of ``versions``: each list (first page) asks discovery again, the watch that follows
    uses the list's version, so a version switched on or off is followed at the next relist."""

    def __init__(
        self, api: client.ApiClient, group: str, plural: str, versions: Sequence[str]
    ) -> None:
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self.group = group
        self.plural = plural
        self.versions = tuple(versions)
        self.version = ""

    async def __call__(self, **kwargs: Any) -> Any:
        if not self.version or not (kwargs.get("watch") or kwargs.get("_continue")):
            chosen = newest(await served_versions(self._api, self.group), self.versions)
            if chosen is None:
                self.version = ""
                raise not_served(self.group, self.versions)
            if chosen != self.version:
                log.info("api.version", group=self.group, resource=self.plural, version=chosen)
                self.version = chosen
        untyped: Any = self._custom
        return await untyped.list_cluster_custom_object(
            self.group, self.version, self.plural, **kwargs
        )


class SliceApi:
    """ResourceSlice (and ResourceClaim read) calls in one served version of resource.k8s.io,
    for the DRA publishers: what they write is built as ``resource.k8s.io/v1`` and sent with the
    chosen version's apiVersion (``v1beta2`` objects have ``v1``'s shape)."""

    def __init__(self, api: client.ApiClient, version: str = "v1") -> None:
        self._client = api
        self.use(version)

    def use(self, version: str) -> None:
        """Talk ``resource.k8s.io/<version>`` from now on (once discovery has answered)."""
        if version not in DRA_WRITE_VERSIONS:
            raise ValueError(f"resource.k8s.io/{version} is not written by this project")
        self.version = version
        self._api: Any = (
            client.ResourceV1Api(self._client)
            if version == "v1"
            else client.ResourceV1beta2Api(self._client)
        )

    def list_resource_slice(self, **kwargs: Any) -> Any:
        return self._api.list_resource_slice(**kwargs)

    def patch_resource_slice(self, name: str, body: dict[str, Any], **kwargs: Any) -> Any:
        body = {**body, "apiVersion": f"{DRA_GROUP}/{self.version}"}
        return self._api.patch_resource_slice(name, body, **kwargs)

    def delete_resource_slice(self, name: str, **kwargs: Any) -> Any:
        return self._api.delete_resource_slice(name, **kwargs)

    def read_namespaced_resource_claim(self, name: str, namespace: str, **kwargs: Any) -> Any:
        return self._api.read_namespaced_resource_claim(name, namespace, **kwargs)


async def dra_version_of(api: client.ApiClient) -> str | None:
    """The newest served of :data:`DRA_WRITE_VERSIONS`, else None after one error line saying
    what is served and what would be needed (the publisher then exits: there is nothing it can
    do on this cluster until DRA is switched on). API errors are raised."""
    served = await served_versions(api, DRA_GROUP)
    version = newest(served, DRA_WRITE_VERSIONS)
    if version is None:
        log.error(
            "dra.api_not_served",
            group=DRA_GROUP,
            served=",".join(served) or "none",
            needs=" or ".join(DRA_WRITE_VERSIONS),
            hint="Kubernetes >= 1.34 serves v1; 1.33 serves v1beta2 with "
            "--runtime-config=resource.k8s.io/v1beta2=true; or disable this DRA publisher",
        )
    elif version != "v1":
        log.info("dra.api_version", group=DRA_GROUP, version=version)
    return version
