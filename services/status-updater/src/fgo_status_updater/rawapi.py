"""Raw-JSON API calls: the status-updater's writes skip kubernetes-asyncio's models.

Model deserialisation costs more CPU than the rest of a reconcile, so every write is made with
``_preload_content=False`` and its answer read as plain JSON here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, cast

from fgo_common.kube.errors import raise_for_status

# kubernetes-asyncio picks strategic-merge for dict bodies; a JSON merge patch says exactly what we
# mean for a labels/annotations map (and works on every kind). Not in its stubs, hence a dict.
MERGE_PATCH: dict[str, Any] = {
    "_content_type": "application/merge-patch+json",
    "_preload_content": False,
}


async def raw_json(call: Awaitable[Any]) -> dict[str, Any]:
    """Run a kubernetes-asyncio call made with ``_preload_content=False``: raw JSON, no model
    deserialisation."""
    resp = await call
    await raise_for_status(resp)
    try:
        return cast("dict[str, Any]", json.loads(await resp.read()))
    finally:
        resp.release()
