"""Writing a node's ResourceSlices: the API half of :mod:`fgo_common.dra`.

Both DRA publishers hand a :class:`~fgo_common.dra.PoolPlan` to :func:`apply_pool_plan`. Slices
are written with server-side apply (field manager = the publisher, forced): it creates or
replaces in one call without a resourceVersion, so a stale cache never turns into a 409 loop,
and ``devices`` is an atomic list in resource.k8s.io/v1, so applying replaces it whole.
"""

from __future__ import annotations

from typing import Any

import structlog
from kubernetes_asyncio import client

from fgo_common.dra import PoolPlan
from fgo_common.kube.errors import is_not_found
from fgo_common.kube.retry import retrying

log = structlog.get_logger(__name__)

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


async def apply_slice(api: client.ResourceV1Api, obj: dict[str, Any], field_manager: str) -> None:
    name = obj["metadata"]["name"]
    # The stubs know neither _content_type nor the raw (unparsed) response.
    untyped: Any = api

    async def call() -> None:
        resp = await untyped.patch_resource_slice(
            name,
            obj,
            field_manager=field_manager,
            force=True,
            _content_type=APPLY_CONTENT_TYPE,
            _preload_content=False,
        )
        resp.release()

    await retrying(call, what=f"apply ResourceSlice {name}")


async def delete_slice(api: client.ResourceV1Api, name: str) -> bool:
    """Delete slice ``name``; False if it was already gone."""
    untyped: Any = api

    async def call() -> None:
        resp = await untyped.delete_resource_slice(name, _preload_content=False)
        resp.release()

    try:
        await retrying(call, what=f"delete ResourceSlice {name}")
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise
    return True


async def apply_pool_plan(
    api: client.ResourceV1Api, plan: PoolPlan, field_manager: str, *, node: str = ""
) -> None:
    """Apply every slice of the new generation first, then delete the surplus: between the two
    steps the scheduler sees an incomplete newer generation and simply waits for it."""
    for obj in plan.apply:
        await apply_slice(api, obj, field_manager)
    for name in plan.delete:
        await delete_slice(api, name)
    if not plan.unchanged:
        log.info(
            "slices.published",
            node=node,
            generation=plan.generation,
            applied=[o["metadata"]["name"] for o in plan.apply],
            deleted=plan.delete,
            devices=sum(len(o["spec"]["devices"]) for o in plan.apply),
        )
