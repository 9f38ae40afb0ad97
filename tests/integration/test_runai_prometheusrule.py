"""The Run:ai PrometheusRule (statusUpdater.runaiIntegration) on the real control plane.

The status-updater runs as a subprocess under a ServiceAccount holding exactly the RBAC the chart
renders for it (helm template), in the real namespace ``runai`` (the chart's RBAC names it).
Without the monitoring.coreos.com CRD: one info line, no warnings or errors, nothing created.
With the CRD (installed by the test): no rule while ``runai`` is absent; the namespace appears,
the reference's object appears; an edit is undone, a deletion repaired; restarted with the
integration off (and the chart's RBAC for that), the rule is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import eventually, unique_name
from fgo_localcluster.tools import find_repo_root, resolve_bin_dir
from fgo_status_updater.runai import GROUP, PLURAL, RULE_NAME, VERSION, prometheus_rule
from fgo_testkit.status_updater import StatusUpdaterProcess
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

RUNAI = "runai"
POLL = "300ms"
CRD_NAME = f"{PLURAL}.{GROUP}"


def _crd() -> dict[str, Any]:
    """A minimal stand-in for the Prometheus operator's CRD (same group, version, names)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": PLURAL,
                "singular": "prometheusrule",
                "kind": "PrometheusRule",
                "listKind": "PrometheusRuleList",
            },
            "versions": [
                {
                    "name": VERSION,
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


async def _served(kube: client.ApiClient) -> bool:
    custom: Any = client.CustomObjectsApi(kube)
    try:
        body = await custom.get_api_resources(GROUP, VERSION)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.name == PLURAL for r in body.resources or [])


async def _delete_crd(kube: client.ApiClient) -> None:
    ext: Any = client.ApiextensionsV1Api(kube)
    with contextlib.suppress(client.ApiException):
        await ext.delete_custom_resource_definition(CRD_NAME)

    async def gone() -> bool:
        return not await _served(kube)

    await eventually(gone, timeout_s=60, what="the PrometheusRule CRD gone")


async def _namespace_gone(kube: client.ApiClient, name: str) -> None:
    core: Any = client.CoreV1Api(kube)
    with contextlib.suppress(client.ApiException):
        await core.delete_namespace(name)

    async def gone() -> bool:
        try:
            await core.read_namespace(name)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    await eventually(gone, timeout_s=90, what=f"namespace {name} gone")


@pytest_asyncio.fixture
async def no_runai(kube: client.ApiClient) -> AsyncIterator[None]:
    """Namespace ``runai`` absent at the start, removed at the end."""
    await _namespace_gone(kube, RUNAI)
    yield
    core: Any = client.CoreV1Api(kube)
    with contextlib.suppress(client.ApiException):
        await core.delete_namespace(RUNAI)


@pytest_asyncio.fixture
async def crd(kube: client.ApiClient) -> AsyncIterator[None]:
    ext: Any = client.ApiextensionsV1Api(kube)
    await _delete_crd(kube)
    await ext.create_custom_resource_definition(_crd())
    await eventually(lambda: _served(kube), timeout_s=60, what="the PrometheusRule CRD served")
    yield
    await _delete_crd(kube)


async def _chart_rbac(namespace: str, *, enabled: bool) -> tuple[list[Any], list[Any]]:
    """The status-updater's ClusterRole and Role rules as the chart renders them."""
    helm = (await resolve_bin_dir()) / "helm"
    root = find_repo_root()
    assert root is not None
    out = subprocess.run(
        [str(helm), "template", "gpu-operator", str(root / "charts" / "fake-gpu-operator"),
         "--namespace", namespace, "--kube-version", "v1.36.3",
         "--set", f"statusUpdater.runaiIntegration.enabled={str(enabled).lower()}",
         "--show-only", "templates/status-updater.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    objs = [o for o in yaml.safe_load_all(out) if o]
    cluster = next(o for o in objs if o["kind"] == "ClusterRole")["rules"]
    role = next(o for o in objs if o["kind"] == "Role")["rules"]
    return cluster, role


class ChartIdentity:
    """A ServiceAccount bound to the chart's status-updater rules; ``kubeconfig`` holds its
    token. ``use(enabled)`` switches the rules to what the chart renders for that setting."""

    def __init__(self, kube: client.ApiClient, cluster: LocalCluster, namespace: str) -> None:
        self.core: Any = client.CoreV1Api(kube)
        self.rbac: Any = client.RbacAuthorizationV1Api(kube)
        self.cluster = cluster
        self.namespace = namespace
        self.name = unique_name("fgo-su", 40)
        self.kubeconfig = Path()

    async def create(self) -> None:
        await self.core.create_namespaced_service_account(
            self.namespace, {"metadata": {"name": self.name}}
        )
        subject = [{"kind": "ServiceAccount", "name": self.name, "namespace": self.namespace}]
        await self.rbac.create_cluster_role({"metadata": {"name": self.name}, "rules": []})
        await self.rbac.create_cluster_role_binding(
            {
                "metadata": {"name": self.name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": self.name,
                },
                "subjects": subject,
            }
        )
        await self.rbac.create_namespaced_role(
            self.namespace, {"metadata": {"name": self.name}, "rules": []}
        )
        await self.rbac.create_namespaced_role_binding(
            self.namespace,
            {
                "metadata": {"name": self.name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": self.name,
                },
                "subjects": subject,
            },
        )
        token = await self.core.create_namespaced_service_account_token(
            self.name, self.namespace, {"spec": {"expirationSeconds": 3600}}
        )
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": self.name, "user": {"token": token.status.token}}],
            "contexts": [
                {
                    "name": self.name,
                    "context": {"cluster": admin["clusters"][0]["name"], "user": self.name},
                }
            ],
            "current-context": self.name,
        }
        with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as handle:
            yaml.safe_dump(config, handle)
        self.kubeconfig = Path(handle.name)

    async def use(self, *, enabled: bool) -> None:
        cluster_rules, role_rules = await _chart_rbac(self.namespace, enabled=enabled)
        await self.rbac.patch_cluster_role(self.name, {"rules": cluster_rules})
        await self.rbac.patch_namespaced_role(self.name, self.namespace, {"rules": role_rules})

    async def delete(self) -> None:
        self.kubeconfig.unlink(missing_ok=True)
        with contextlib.suppress(client.ApiException):
            await self.rbac.delete_cluster_role_binding(self.name)
        with contextlib.suppress(client.ApiException):
            await self.rbac.delete_cluster_role(self.name)


@pytest_asyncio.fixture
async def identity(
    kube: client.ApiClient, local_cluster: LocalCluster, namespace: str
) -> AsyncIterator[ChartIdentity]:
    ident = ChartIdentity(kube, local_cluster, namespace)
    await ident.create()
    yield ident
    await ident.delete()


def _log_events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


async def _started(proc: StatusUpdaterProcess) -> None:
    """The runai task has run at least once (the process need not be ready: no topology)."""
    await proc.start(wait_ready=False)

    async def said() -> bool:
        assert proc.proc is not None and proc.proc.returncode is None, proc.log_tail()
        return any(e.get("event", "").startswith("runai.") for e in _log_events(proc.log_path))

    await eventually(said, timeout_s=60, what="the runai controller's first line")


def _updater(ident: ChartIdentity, tmp_path: Path, *, enabled: bool) -> StatusUpdaterProcess:
    return StatusUpdaterProcess(
        ident.kubeconfig,
        tmp_path / f"status-updater-{'on' if enabled else 'off'}.log",
        TOPOLOGY_CM_NAMESPACE=ident.namespace,
        RESOURCE_RESERVATION_NAMESPACE=unique_name("resv", 30),
        PROMETHEUS_URL="",
        RUNAI_INTEGRATION_ENABLED=str(enabled).lower(),
        RUNAI_INTEGRATION_POLLING_INTERVAL=POLL,
    )


async def _rule(kube: client.ApiClient) -> dict[str, Any] | None:
    custom: Any = client.CustomObjectsApi(kube)
    try:
        result: dict[str, Any] = await custom.get_namespaced_custom_object(
            GROUP, VERSION, RUNAI, PLURAL, RULE_NAME
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return result


def _problems(path: Path) -> list[dict[str, Any]]:
    return [e for e in _log_events(path) if e.get("level") in ("warning", "error", "critical")]


async def test_without_the_crd_one_info_line_and_nothing_else(
    kube: client.ApiClient, no_runai: None, identity: ChartIdentity, tmp_path: Path
) -> None:
    assert not await _served(kube), "a PrometheusRule CRD is installed in this cluster"
    core: Any = client.CoreV1Api(kube)
    await core.create_namespace({"metadata": {"name": RUNAI}})  # only the CRD is missing
    await identity.use(enabled=True)
    proc = _updater(identity, tmp_path, enabled=True)
    try:
        await _started(proc)
        await asyncio.sleep(3)  # ~10 polls
        assert proc.proc is not None and proc.proc.returncode is None, proc.log_tail()
    finally:
        await proc.stop()
    runai = [e for e in _log_events(proc.log_path) if e.get("event", "").startswith("runai.")]
    absent = [e for e in runai if e["event"] == "runai.prometheusrule_api_absent"]
    assert len(absent) == 1 and absent[0]["level"] == "info", runai
    assert {e["event"] for e in runai} == {
        "runai.integration_enabled",
        "runai.prometheusrule_api_absent",
    }, runai
    assert not _problems(proc.log_path), _problems(proc.log_path)


async def test_rule_follows_the_namespace_edits_and_the_setting(
    kube: client.ApiClient,
    no_runai: None,
    crd: None,
    identity: ChartIdentity,
    tmp_path: Path,
) -> None:
    core: Any = client.CoreV1Api(kube)
    custom: Any = client.CustomObjectsApi(kube)
    await identity.use(enabled=True)
    proc = _updater(identity, tmp_path, enabled=True)
    want = prometheus_rule(RUNAI)
    try:
        await _started(proc)
        await asyncio.sleep(2)  # several polls without namespace runai: nothing created
        assert await _rule(kube) is None

        await core.create_namespace({"metadata": {"name": RUNAI}})
        created = time.monotonic()
        rule = await eventually(lambda: _rule(kube), timeout_s=30, what="the rule created")
        print(f"rule created {time.monotonic() - created:.2f}s after namespace runai (poll {POLL})")
        assert rule["metadata"]["labels"] == want["metadata"]["labels"]
        assert rule["spec"] == want["spec"]
        assert rule["kind"] == "PrometheusRule"

        # Edited (rules dropped, a label changed): restored; other labels survive.
        await custom.patch_namespaced_custom_object(
            GROUP, VERSION, RUNAI, PLURAL, RULE_NAME,
            {"metadata": {"labels": {"component": "x", "mine": "y"}},
             "spec": {"groups": [{"name": "kwok-dcgm-metrics", "rules": []}]}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

        async def restored() -> dict[str, Any] | None:
            got = await _rule(kube)
            ok = got and got["spec"] == want["spec"] and got["metadata"]["labels"]["component"]
            return got if ok == "status-exporter-kwok" else None

        got = await eventually(restored, timeout_s=30, what="the edited rule restored")
        assert got["metadata"]["labels"]["mine"] == "y"

        # Deleted: created again.
        await custom.delete_namespaced_custom_object(GROUP, VERSION, RUNAI, PLURAL, RULE_NAME)
        await eventually(lambda: _rule(kube), timeout_s=30, what="the deleted rule re-created")
        assert not _problems(proc.log_path), _problems(proc.log_path)
    finally:
        await proc.stop()

    # Integration off (chart RBAC for that): deleted at start.
    await identity.use(enabled=False)
    off = _updater(identity, tmp_path, enabled=False)
    try:
        await off.start(wait_ready=False)

        async def deleted() -> bool:
            return await _rule(kube) is None

        await eventually(deleted, timeout_s=30, what="the rule deleted with the integration off")
        await asyncio.sleep(1)
        assert off.proc is not None and off.proc.returncode is None, off.log_tail()
    finally:
        await off.stop()
    events = [e["event"] for e in _log_events(off.log_path)]
    assert events.count("runai.prometheusrule_deleted") == 1, events
    assert not _problems(off.log_path), _problems(off.log_path)
