"""The shared list-watch helper against the real apiserver: no event lost or duplicated across an
apiserver restart, and across a 410 Gone (expired resourceVersion) followed by a relist."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from fgo_common.kube.watch import ADDED, DELETED, MODIFIED, SYNCED, Reflector, WatchEvent
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodes import api_client
from kubernetes_asyncio import client


@pytest.fixture
async def restarts_apiserver(local_cluster: LocalCluster) -> AsyncIterator[LocalCluster]:
    """For tests that restart the apiserver: the controllers are restarted afterwards, so the
    next test does not wait out their informers' reflector backoff."""
    yield local_cluster
    await local_cluster.restart_clients_of_apiserver()


async def _consume(reflector: Reflector, stop: asyncio.Event, sink: list[WatchEvent]) -> None:
    async for event in reflector.events(stop):
        if event.type != SYNCED:
            sink.append(event)


async def _until(predicate, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.1)


def _names(events: list[WatchEvent], kind: str) -> Counter[str]:
    return Counter(e.obj["metadata"]["name"] for e in events if e.type == kind)


def _no_duplicate_deliveries(events: list[WatchEvent]) -> None:
    seen = Counter(
        (e.type, e.obj["metadata"]["name"], e.obj["metadata"]["resourceVersion"]) for e in events
    )
    assert [k for k, n in seen.items() if n > 1] == []


async def _server_view(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    items = (await core.list_namespaced_config_map(namespace)).items
    return {cm.metadata.name: cm.metadata.resource_version for cm in items}


def _cache_view(reflector: Reflector) -> dict[str, str]:
    return {
        o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in reflector.cache.values()
    }


async def _cm(core: client.CoreV1Api, namespace: str, name: str, value: str = "1") -> None:
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": name}, "data": {"v": value}},  # type: ignore[arg-type]
    )


async def _compact_etcd(cluster: LocalCluster) -> None:
    """Compact etcd's history up to now (what the apiserver does every 5 minutes)."""
    port = json.loads((cluster.state_dir / "cluster.json").read_text())["ports"]["etcd_client"]
    base = f"http://127.0.0.1:{port}/v3/kv"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/range", json={"key": "AA=="}) as resp:
            revision = (await resp.json())["header"]["revision"]
        async with http.post(
            f"{base}/compaction", json={"revision": revision, "physical": True}
        ) as resp:
            resp.raise_for_status()


@pytest.mark.usefixtures("restarts_apiserver")
async def test_resumes_after_apiserver_restart(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    for i in range(3):
        await _cm(core, namespace, f"before-{i}")
    events: list[WatchEvent] = []
    stop = asyncio.Event()
    async with api_client(Path(local_cluster.kubeconfig)) as watch_api:
        reflector = Reflector(
            client.CoreV1Api(watch_api).list_namespaced_config_map,
            name="test",
            namespace=namespace,
            timeout_seconds=60,
        )
        task = asyncio.create_task(_consume(reflector, stop, events))
        try:
            await _until(reflector.synced.is_set)
            await _cm(core, namespace, "during-0")
            await _until(lambda: "during-0" in _names(events, ADDED))

            await local_cluster.restart_component("kube-apiserver")

            await _cm(core, namespace, "after-0")
            await core.patch_namespaced_config_map("before-1", namespace, {"data": {"v": "2"}})
            await core.delete_namespaced_config_map("before-2", namespace)
            truth = await _server_view(core, namespace)
            await _until(lambda: _cache_view(reflector) == truth)
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    added = _names(events, ADDED)
    assert all(added[name] == 1 for name in truth | {"before-2": ""}), added
    assert _names(events, DELETED) == Counter({"before-2": 1})
    assert _names(events, MODIFIED)["before-1"] == 1
    _no_duplicate_deliveries(events)


@pytest.mark.usefixtures("restarts_apiserver")
async def test_relists_after_410_without_losing_or_duplicating(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    for i in range(3):
        await _cm(core, namespace, f"cm-{i}")
    events: list[WatchEvent] = []
    async with api_client(Path(local_cluster.kubeconfig)) as watch_api:
        reflector = Reflector(
            client.CoreV1Api(watch_api).list_namespaced_config_map,
            name="test",
            namespace=namespace,
            timeout_seconds=60,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(_consume(reflector, stop, events))
        await _until(lambda: len(_cache_view(reflector)) >= 4)  # 3 + kube-root-ca.crt
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        relists_before = reflector.relists
        stale_version = reflector.resource_version

        # While the client is away: changes, then history before them is compacted and the
        # apiserver's watch cache restarts, so resuming from stale_version must give 410 Gone.
        await _cm(core, namespace, "new")
        await core.patch_namespaced_config_map("cm-1", namespace, {"data": {"v": "2"}})
        await core.delete_namespaced_config_map("cm-2", namespace)
        await _compact_etcd(local_cluster)
        await local_cluster.restart_component("kube-apiserver")

        stop = asyncio.Event()
        task = asyncio.create_task(_consume(reflector, stop, events))
        try:
            truth = await _server_view(core, namespace)
            await _until(lambda: _cache_view(reflector) == truth)
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert reflector.expirations >= 1, "the stale resourceVersion should have expired (410)"
    assert reflector.relists > relists_before
    assert reflector.resource_version != stale_version
    added = _names(events, ADDED)
    assert added["new"] == 1
    assert all(n == 1 for n in added.values()), added
    assert _names(events, DELETED) == Counter({"cm-2": 1})
    assert _names(events, MODIFIED) == Counter({"cm-1": 1})
    _no_duplicate_deliveries(events)


async def _service_account_kubeconfig(
    core: client.CoreV1Api, local_cluster: LocalCluster, namespace: str, tmp: Path
) -> Path:
    await core.create_namespaced_service_account(
        namespace,
        {"metadata": {"name": "watcher"}},  # type: ignore[arg-type]
    )
    request = await core.create_namespaced_service_account_token(
        "watcher",
        namespace,
        {"spec": {"expirationSeconds": 3600}},  # type: ignore[arg-type]
    )
    admin = yaml.safe_load(Path(local_cluster.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "watcher", "user": {"token": request.status.token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "watcher"}}],
        "current-context": "sa",
    }
    path = tmp / "watcher.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_keeps_retrying_while_forbidden_then_syncs(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """A freshly restarted apiserver refuses ServiceAccount requests for a moment; the watch
    must back off and carry on (client-go's behaviour), not end the service."""
    core = client.CoreV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    await _cm(core, namespace, "present")
    kubeconfig = await _service_account_kubeconfig(core, local_cluster, namespace, tmp_path)
    events: list[WatchEvent] = []
    stop = asyncio.Event()
    async with api_client(kubeconfig) as watch_api:
        reflector = Reflector(
            client.CoreV1Api(watch_api).list_namespaced_config_map,
            name="forbidden",
            namespace=namespace,
            timeout_seconds=60,
        )
        task = asyncio.create_task(_consume(reflector, stop, events))
        try:
            await _until(lambda: reflector.restarts >= 2)
            assert not task.done(), task
            assert not reflector.synced.is_set()

            await rbac.create_namespaced_role(
                namespace,
                {  # type: ignore[arg-type]
                    "metadata": {"name": "watch-configmaps"},
                    "rules": [
                        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}
                    ],
                },
            )
            await rbac.create_namespaced_role_binding(
                namespace,
                {  # type: ignore[arg-type]
                    "metadata": {"name": "watch-configmaps"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "watch-configmaps",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "watcher", "namespace": namespace}
                    ],
                },
            )
            await _until(reflector.synced.is_set)
            await _until(lambda: "present" in _names(events, ADDED))
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_lists_in_pages_and_stays_consistent(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str
) -> None:
    """The list is fetched in pages (limit/continue); the cache still equals the server's
    view and the watch resumes from the list's resourceVersion."""
    core = client.CoreV1Api(kube)
    for i in range(7):
        await _cm(core, namespace, f"page-{i}")
    pages: list[dict[str, object]] = []
    events: list[WatchEvent] = []
    stop = asyncio.Event()
    async with api_client(Path(local_cluster.kubeconfig)) as watch_api:
        list_fn: Any = client.CoreV1Api(watch_api).list_namespaced_config_map

        async def recording_list(*args: Any, **kwargs: Any) -> Any:
            if not kwargs.get("watch"):
                pages.append({k: kwargs.get(k) for k in ("limit", "_continue")})
            return await list_fn(*args, **kwargs)

        reflector = Reflector(recording_list, name="paged", namespace=namespace, page_size=3)
        task = asyncio.create_task(_consume(reflector, stop, events))
        try:
            await _until(reflector.synced.is_set)
            assert _cache_view(reflector) == await _server_view(core, namespace)
            await _cm(core, namespace, "after-list")
            await _until(lambda: "after-list" in _names(events, ADDED))
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    # 7 objects plus the namespace's kube-root-ca.crt ConfigMap: 8 in pages of 3.
    assert [p["limit"] for p in pages] == [3, 3, 3]
    assert pages[0]["_continue"] is None and all(p["_continue"] for p in pages[1:])
    assert sum(_names(events, ADDED).values()) == 9
    _no_duplicate_deliveries(events)
