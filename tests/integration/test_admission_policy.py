"""The chart's ValidatingAdmissionPolicies (templates/admission-policy.yaml) on the real apiserver.

RBAC gives the device-plugin node agent and the status-updater `patch pods` cluster-wide; the
policies narrow that to their own annotation and, for the node agent, to pods of the node its
token was issued for. The chart is installed with helm (the policies render because the
apiserver serves admissionregistration.k8s.io/v1), then pods are patched with TokenRequest
tokens of the chart's ServiceAccounts:

- a token bound to a pod of ``fgo-device-plugin`` on node A (the apiserver adds the
  ``authentication.kubernetes.io/node-name`` extra, checked through a SelfSubjectReview);
- an unbound ``fgo-device-plugin`` token (no node: the documented "allow" case);
- an unbound ``fgo-status-updater`` token.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from fgo_common.kube.errors import raise_for_status
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodes import api_client
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    eventually,
    unique_name,
)
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "fake-gpu-operator"
DEVICE_PLUGIN = "fgo-device-plugin"
STATUS_UPDATER = "fgo-status-updater"
ALLOCATED = "fake-gpu-operator/allocated-devices"
RESERVE = "run.ai/reserve_for_gpu_index"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str  # the release's (and the device plugin pods') namespace
    reservations: str  # environment.resourceReservationNamespace


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{err.decode()}"
    return out.decode()


async def _raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    resp = await call(*args, _preload_content=False, **kwargs)
    # Unpreloaded responses are not status-checked by kubernetes-asyncio: a refusal must raise.
    await raise_for_status(resp)
    body: dict[str, Any] = json.loads(await resp.read())
    resp.release()
    return body


@pytest_asyncio.fixture
async def release(
    kube: client.ApiClient, local_cluster: LocalCluster, namespace: str
) -> AsyncIterator[Release]:
    reservations = unique_name("t-reservations", 40)
    await create_namespace(kube, reservations)
    name = unique_name("r-vap", 30)
    helm = str(local_cluster.bin_dir / "helm")
    kubeconfig = ["--kubeconfig", str(local_cluster.kubeconfig), "--namespace", namespace]
    # Only the two identities the policies are about (and no cluster-scoped objects another
    # release of a parallel test might own, such as RuntimeClass nvidia).
    sets = [
        "admissionPolicy.enabled=true",
        f"environment.resourceReservationNamespace={reservations}",
        "kwokGpuDevicePlugin.enabled=false",
        "statusExporter.enabled=false",
        "runtimeClass.enabled=false",
    ]
    await _run(helm, "install", name, str(CHART), *kubeconfig, "--set", ",".join(sets))
    try:
        yield Release(name, namespace, reservations)
    finally:
        await _run(helm, "uninstall", name, *kubeconfig, "--wait")
        await delete_namespace(kube, reservations)


async def _create_pod(
    core: Any, namespace: str, name: str, node: str, service_account: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "labels": {"app": "vap-test"},
            "annotations": {"example.com/note": "kept"},
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "registry.example/app:1"}],
            "tolerations": [{"operator": "Exists"}],
        },
    }
    if service_account:
        body["spec"]["serviceAccountName"] = service_account
        body["spec"]["automountServiceAccountToken"] = False
    return await _raw(core.create_namespaced_pod, namespace, body)


async def _token(
    core: Any, namespace: str, account: str, bound_pod: dict[str, Any] | None = None
) -> str:
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if bound_pod is not None:
        meta = bound_pod["metadata"]
        spec["boundObjectRef"] = {
            "kind": "Pod",
            "apiVersion": "v1",
            "name": meta["name"],
            "uid": meta["uid"],
        }
    body = await _raw(
        core.create_namespaced_service_account_token, account, namespace, {"spec": spec}
    )
    return str(body["status"]["token"])


@pytest_asyncio.fixture
async def as_token(
    local_cluster: LocalCluster,
) -> AsyncIterator[Any]:
    """``async with as_token(token) as api``: a client authenticating with that token."""
    admin = yaml.safe_load(local_cluster.kubeconfig.read_text())
    tmp = Path(tempfile.mkdtemp(prefix="fgo-vap-"))

    def kubeconfig(token: str) -> Path:
        cluster = admin["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
            "current-context": "sa",
        }
        path = tmp / f"{unique_name('sa', 20)}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    yield lambda token: api_client(kubeconfig(token))
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()


async def _extra(api: client.ApiClient) -> dict[str, list[str]]:
    """userInfo.extra of the caller, as the apiserver authenticated it."""
    auth: Any = client.AuthenticationV1Api(api)
    body = await _raw(
        auth.create_self_subject_review,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    extra: dict[str, list[str]] = body["status"]["userInfo"].get("extra") or {}
    return extra


async def _patch(
    api: client.ApiClient,
    namespace: str,
    pod: str,
    body: dict[str, Any],
    content_type: str = MERGE,
    *,
    dry_run: bool = False,
) -> str | None:
    """None if the patch was accepted, else the refusal (status code and message)."""
    core: Any = client.CoreV1Api(api)
    kwargs: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
    try:
        await _raw(
            core.patch_namespaced_pod, pod, namespace, body, _content_type=content_type, **kwargs
        )
    except ApiException as exc:
        return f"{exc.status} {json.loads(exc.body or '{}').get('message', exc.body)}"
    return None


def _annotate(key: str, value: str | None) -> dict[str, Any]:
    return {"metadata": {"annotations": {key: value}}}


LABEL = {"metadata": {"labels": {"app": "changed"}}}
OTHER_ANNOTATION = _annotate("example.com/note", "changed")
IMAGE = {"spec": {"containers": [{"name": "c", "image": "registry.example/evil:1"}]}}


async def _policy_is_enforced(api: client.ApiClient, namespace: str, pod: str) -> None:
    """New policies reach the apiserver's admission through an informer: wait until a
    dry-run label change by ``api`` is refused."""

    async def refused() -> bool:
        return await _patch(api, namespace, pod, LABEL, dry_run=True) is not None

    await eventually(refused, timeout_s=60, what="the admission policy to be enforced")


async def _policies_type_check(kube: client.ApiClient, release: Release) -> None:
    admission: Any = client.AdmissionregistrationV1Api(kube)
    for component in ("device-plugin", "status-updater"):
        name = f"{release.name}-fgo-{component}-pods"

        async def checked(name: str = name) -> dict[str, Any] | None:
            body = await _raw(admission.read_validating_admission_policy, name)
            status = body.get("status") or {}
            done = status.get("observedGeneration") == body["metadata"]["generation"]
            return status if done else None

        status = await eventually(checked, timeout_s=60, what=f"type check of {name}")
        assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status
        assert not status.get("conditions") or all(
            c.get("status") != "False" for c in status["conditions"]
        ), status


async def test_device_plugin_may_only_annotate_pods_of_its_node(
    kube: client.ApiClient,
    release: Release,
    kwok_nodes: KwokNodeFactory,
    as_token: Any,
) -> None:
    core: Any = client.CoreV1Api(kube)
    node_a, node_b = await kwok_nodes(2)
    ns = release.namespace
    await _create_pod(core, ns, "on-a", node_a)
    await _create_pod(core, ns, "on-b", node_b)
    agent = await _create_pod(core, ns, "agent-a", node_a, service_account=DEVICE_PLUGIN)
    await _policies_type_check(kube, release)

    bound = await _token(core, ns, DEVICE_PLUGIN, bound_pod=agent)
    async with as_token(bound) as api:
        # The apiserver names the bound pod's node in the token (what the policy relies on).
        assert (await _extra(api)).get(NODE_NAME_EXTRA) == [node_a]
        await _policy_is_enforced(api, ns, "on-a")

        # (a) its own annotation on a pod of its node: allowed, set and removed.
        assert await _patch(api, ns, "on-a", _annotate(ALLOCATED, "nvidia.com/gpu=GPU-1")) is None
        on_a = await _raw(core.read_namespaced_pod, "on-a", ns)
        assert on_a["metadata"]["annotations"][ALLOCATED] == "nvidia.com/gpu=GPU-1"
        assert await _patch(api, ns, "on-a", _annotate(ALLOCATED, None)) is None

        # (b) anything else on the same pod: denied by the policy, with its message.
        denied = {
            "label": await _patch(api, ns, "on-a", LABEL),
            "annotation": await _patch(api, ns, "on-a", OTHER_ANNOTATION),
            "removed annotation": await _patch(
                api, ns, "on-a", _annotate("example.com/note", None)
            ),
            "image": await _patch(api, ns, "on-a", IMAGE, STRATEGIC),
            "own and label": await _patch(
                api,
                ns,
                "on-a",
                {"metadata": {**LABEL["metadata"], "annotations": {ALLOCATED: "x"}}},
            ),
        }
        policy = f"{release.name}-fgo-device-plugin-pods"
        for what, refusal in denied.items():
            assert refusal is not None, f"{what} was allowed"
            assert refusal.startswith("403 ") and policy in refusal, (what, refusal)
        assert "may not change pod labels" in str(denied["label"])
        assert f"may change no pod annotation but {ALLOCATED}" in str(denied["annotation"])
        assert f"may change no pod annotation but {ALLOCATED}" in str(denied["removed annotation"])
        assert "may not change the pod spec" in str(denied["image"])

        # (c) its own annotation on a pod of another node: denied.
        refusal = await _patch(api, ns, "on-b", _annotate(ALLOCATED, "nvidia.com/gpu=GPU-1"))
        assert refusal is not None and policy in refusal
        assert f"of node {node_a} may not patch a pod bound to node {node_b}" in refusal

    # Nothing of the refused patches landed.
    for name in ("on-a", "on-b"):
        pod = await _raw(core.read_namespaced_pod, name, ns)
        assert pod["metadata"]["labels"] == {"app": "vap-test"}
        assert pod["metadata"]["annotations"] == {"example.com/note": "kept"}
        assert pod["spec"]["containers"][0]["image"] == "registry.example/app:1"

    # A token without a node (not bound to a pod): the annotation rules still hold, the node
    # rule does not apply (docs/security.md: why this is allowed).
    unbound = await _token(core, ns, DEVICE_PLUGIN)
    async with as_token(unbound) as api:
        assert NODE_NAME_EXTRA not in await _extra(api)
        assert await _patch(api, ns, "on-b", _annotate(ALLOCATED, "nvidia.com/gpu=GPU-2")) is None
        refusal = await _patch(api, ns, "on-b", LABEL)
        assert refusal is not None and "may not change pod labels" in refusal

    # The policy is about these accounts only: the admin changes labels freely.
    assert await _patch(kube, ns, "on-a", LABEL) is None


async def test_status_updater_may_only_annotate_reservation_pods(
    kube: client.ApiClient,
    release: Release,
    kwok_nodes: KwokNodeFactory,
    as_token: Any,
) -> None:
    core: Any = client.CoreV1Api(kube)
    (node,) = await kwok_nodes(1)
    await _create_pod(core, release.reservations, "reservation", node)
    await _create_pod(core, release.namespace, "workload", node)
    await _policies_type_check(kube, release)
    policy = f"{release.name}-fgo-status-updater-pods"

    token = await _token(core, release.namespace, STATUS_UPDATER)
    async with as_token(token) as api:
        await _policy_is_enforced(api, release.reservations, "reservation")
        ns = release.reservations
        assert await _patch(api, ns, "reservation", _annotate(RESERVE, "GPU-0")) is None
        pod = await _raw(core.read_namespaced_pod, "reservation", ns)
        assert pod["metadata"]["annotations"][RESERVE] == "GPU-0"

        denied = {
            "label": await _patch(api, ns, "reservation", LABEL),
            "annotation": await _patch(api, ns, "reservation", OTHER_ANNOTATION),
            "image": await _patch(api, ns, "reservation", IMAGE, STRATEGIC),
            "the device plugin's annotation": await _patch(
                api, ns, "reservation", _annotate(ALLOCATED, "nvidia.com/gpu=GPU-0")
            ),
            "a pod outside the reservation namespace": await _patch(
                api, release.namespace, "workload", _annotate(RESERVE, "GPU-0")
            ),
        }
        for what, refusal in denied.items():
            assert refusal is not None, f"{what} was allowed"
            assert refusal.startswith("403 ") and policy in refusal, (what, refusal)
        assert "may not change pod labels" in str(denied["label"])
        assert "may not change the pod spec" in str(denied["image"])
        assert f"may change no pod annotation but {RESERVE}" in str(
            denied["the device plugin's annotation"]
        )
        assert f"may only annotate pods in namespace {release.reservations}" in str(
            denied["a pod outside the reservation namespace"]
        )
