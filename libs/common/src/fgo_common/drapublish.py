"""Writing a node's ResourceSlices: the API half of :mod:`fgo_common.draslices`.

Both DRA publishers call :func:`publish_pool` / :func:`withdraw_pool`. Slices are written with
server-side apply (field manager = the publisher, forced): it creates or replaces in one call
without a resourceVersion, so a stale cache never turns into a 409 loop, and ``devices`` is an
atomic list in resource.k8s.io/v1 (and v1beta2, which :class:`SliceApi` writes where v1 is not
served), so applying replaces it whole. The stored objects the API
server returns are handed back so callers can update their caches before the watch catches up
(otherwise a second reconcile against the stale cache would bump the generation again).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from fgo_common.dradevices import Obj
from fgo_common.draslices import PoolPlan, PoolTarget, plan_pool
from fgo_common.kube.errors import is_not_found, raise_for_status
from fgo_common.kube.retry import retrying
from fgo_common.kube.served import SliceApi

log = structlog.get_logger(__name__)

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


async def apply_slice(api: SliceApi, obj: Obj, field_manager: str) -> Obj:
    """Server-side apply ``obj``; returns the stored object."""
    name = obj["metadata"]["name"]
    # The stubs know neither _content_type nor the raw (unparsed) response.
    untyped: Any = api

    async def call() -> Obj:
        resp = await untyped.patch_resource_slice(
            name,
            obj,
            field_manager=field_manager,
            force=True,
            _content_type=APPLY_CONTENT_TYPE,
            _preload_content=False,
        )
        await raise_for_status(resp)
        try:
            stored: Obj = json.loads(await resp.read())
        finally:
            resp.release()
        return stored

    return await retrying(call, what=f"apply ResourceSlice {name}")


async def delete_slice(api: SliceApi, name: str) -> bool:
    """Delete slice ``name``; False if it was already gone."""
    untyped: Any = api

    async def call() -> None:
        resp = await untyped.delete_resource_slice(name, _preload_content=False)
        await raise_for_status(resp)
        resp.release()

    try:
        await retrying(call, what=f"delete ResourceSlice {name}")
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise
    return True


@dataclass
class PublishResult:
    plan: PoolPlan
    stored: list[Obj] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def wrote(self) -> bool:
        return bool(self.stored or self.deleted)


async def apply_pool_plan(
    api: SliceApi, plan: PoolPlan, field_manager: str, *, node: str = ""
) -> PublishResult:
    """Apply every slice of the new generation first, then delete the surplus: between the two
    steps the scheduler sees an incomplete newer generation and simply waits for it."""
    result = PublishResult(plan)
    for obj in plan.apply:
        result.stored.append(await apply_slice(api, obj, field_manager))
    for name in plan.delete:
        await delete_slice(api, name)
        result.deleted.append(name)
    if not plan.unchanged:
        log.info(
            "slices.published",
            node=node,
            generation=plan.generation,
            applied=[o["metadata"]["name"] for o in plan.apply],
            deleted=plan.delete,
            devices=sum(len(o["spec"].get("devices") or []) for o in plan.apply),
        )
    return result


async def publish_pool(
    api: SliceApi,
    target: PoolTarget,
    devices: Sequence[Obj],
    existing: Iterable[Obj],
    field_manager: str,
    *,
    counter_sets: Sequence[Obj] = (),
) -> PublishResult:
    """Bring the stored slices of ``target``'s pool (``existing``) to ``devices`` (and the
    shared ``counter_sets`` they consume, for dynamic MIG)."""
    plan = plan_pool(target, devices, existing, counter_sets)
    return await apply_pool_plan(api, plan, field_manager, node=target.node_name)


async def withdraw_pool(api: SliceApi, existing: Iterable[Obj], *, node: str) -> list[str]:
    """Delete every slice in ``existing`` (a node that is gone or no longer has GPUs)."""
    deleted = []
    for obj in existing:
        name = obj["metadata"]["name"]
        if await delete_slice(api, name):
            deleted.append(name)
    if deleted:
        log.info("slices.withdrawn", node=node, deleted=deleted)
    return deleted


def slice_pool_node(obj: Obj) -> str:
    """The node a slice of ours belongs to (its pool is named after the node)."""
    spec = obj.get("spec") or {}
    return str(spec.get("nodeName") or (spec.get("pool") or {}).get("name") or "")
