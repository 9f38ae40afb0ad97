"""The Reflector's "not served" contract against the real apiserver (unit tests:
libs/common/tests/test_watch_not_served.py): an API group that is not served and a CRD that is
not installed both surface as ResourceNotServed at the first list; once the CRD is installed the
same reflector lists it; when it is deleted, the watch reports it gone. Served-version selection
for resource.k8s.io (fgo_common.kube.served) is checked against what discovery says."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from fgo_common.kube.served import DRA_GROUP, DRA_READ_VERSIONS, ServedVersionList, served_versions
from fgo_common.kube.watch import SYNCED, Reflector, ResourceNotServed
from fgo_localcluster.testing import eventually
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration


def _crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


async def _first_answer(reflector: Reflector) -> str:
    """SYNCED, or what ResourceNotServed says."""
    stop = asyncio.Event()
    try:
        async with asyncio.timeout(30):
            async for event in reflector.events(stop):
                if event.type == SYNCED:
                    return SYNCED
    except ResourceNotServed as exc:
        return f"not served: {exc.detail}"
    raise AssertionError("the reflector ended without an answer")


async def test_absent_group_version_and_absent_crd_are_reported_not_retried(
    kube: client.ApiClient,
) -> None:
    custom: Any = client.CustomObjectsApi(kube)
    # A version the apiserver does not serve of a group it does (apps/v9), and a group nobody
    # serves.
    for group, version in (("apps", "v9"), (f"absent{secrets.token_hex(3)}.fgo.test", "v1")):
        reflector = Reflector(
            custom.list_cluster_custom_object,
            name=f"{group}/{version}",
            group=group,
            version=version,
            plural="widgets",
        )
        answer = await _first_answer(reflector)
        assert answer.startswith("not served: 404"), answer
        assert reflector.restarts == 0  # reported at once, never retried in place


async def test_a_crd_installed_later_is_listed_and_its_deletion_reported(
    kube: client.ApiClient,
) -> None:
    custom: Any = client.CustomObjectsApi(kube)
    ext: Any = client.ApiextensionsV1Api(kube)
    group = f"crd{secrets.token_hex(3)}.fgo.test"
    reflector = Reflector(
        custom.list_cluster_custom_object,
        name="widgets",
        group=group,
        version="v1",
        plural="widgets",
    )
    assert (await _first_answer(reflector)).startswith("not served: 404")
    crd = _crd(group)
    await ext.create_custom_resource_definition(crd)
    try:
        # Served a moment after it is created (the CRD handler's informer): the caller's
        # re-check finds it; here the re-check is just asking again.
        async def listed() -> str | None:
            answer = await _first_answer(reflector)
            return answer if answer == SYNCED else None

        await eventually(listed, timeout_s=30, what="the new CRD listed")
        await custom.create_cluster_custom_object(
            group, "v1", "widgets", {"apiVersion": f"{group}/v1", "kind": "Widget",
                                     "metadata": {"name": "w1"}}
        )  # fmt: skip
        seen: list[str] = []
        stop = asyncio.Event()

        async def watch() -> str:
            try:
                async for event in reflector.events(stop):
                    seen.append(f"{event.type} {event.obj.get('metadata', {}).get('name')}")
                    if event.type != SYNCED and len(seen) == 1:
                        await ext.delete_custom_resource_definition(crd["metadata"]["name"])
            except ResourceNotServed as exc:
                return exc.detail
            return "stopped"

        async with asyncio.timeout(60):
            detail = await watch()
        # Deleting a CRD deletes its objects first: w1 may be reported DELETED before the 404.
        assert seen[0] == "ADDED w1" and detail.startswith("404"), (seen, detail)
        reflector.forget()
        assert reflector.cache == {} and not reflector.synced.is_set()
    finally:
        try:
            await ext.delete_custom_resource_definition(crd["metadata"]["name"])
        except client.ApiException as exc:
            if exc.status != 404:
                raise


async def test_claims_are_read_through_the_newest_served_dra_version(
    kube: client.ApiClient,
) -> None:
    served = await served_versions(kube, DRA_GROUP)
    claims = ServedVersionList(kube, DRA_GROUP, "resourceclaims", DRA_READ_VERSIONS)
    answer = await _first_answer(Reflector(claims, name="claims"))
    newest = next((v for v in DRA_READ_VERSIONS if v in served), None)
    if newest is None:  # Kubernetes 1.31: no DRA version we speak
        assert answer.startswith("not served: 404"), answer
        assert "serves none of v1, v1beta2, v1beta1" in answer
    else:
        assert answer == SYNCED and claims.version == newest
    # An older version only (what a 1.33 cluster serves): chosen when it is the newest wanted.
    if "v1beta2" in served:
        beta = ServedVersionList(kube, DRA_GROUP, "resourceclaims", ("v1beta2",))
        assert await _first_answer(Reflector(beta, name="claims-beta")) == SYNCED
        assert beta.version == "v1beta2"
