"""Fixtures of the end-to-end scenarios: the chart installed, the services running, a guard
that fails any test during which a service was refused an API call.

Two targets, one set of scenarios:

- ``make e2e`` (default): the session's local control plane (``local_cluster``,
  tests/conftest.py). The chart is installed with helm into namespace ``fgo-e2e`` (not the
  reference's hard-coded gpu-operator) and each Deployment runs as a local process configured
  from the rendered manifest under its ServiceAccount's token (``LocalOperator``), so the
  chart's env and RBAC are what the services really get.
- ``make e2e-kind`` (hack/e2e-kind.sh): ``FGO_E2E_KUBECONFIG`` names a kind cluster; the chart is
  installed there with the images of ``FGO_E2E_SET`` and the services run as pods.

RBAC is proven, not assumed: around every test the guard compares the apiserver's
``apiserver_request_total{code="403"}`` counters and scans the services' logs for refused calls.
Workload pods live in one namespace for the whole session, so no namespace is terminating
while a test runs (the namespace-lifecycle admission also answers 403, for creates in a
terminating namespace).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from fgo_common.runtime.settings import env_field, load_settings
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodes import api_client
from fgo_localcluster.oci import ContainerRuntime
from fgo_localcluster.operator import LocalOperator
from fgo_localcluster.realnode import resolve_node_bin_dir
from fgo_localcluster.testing import KwokNodeFactory, create_namespace, unique_name
from kubernetes_asyncio import client

# The helpers next to this file (e2elib) are imported by name.
sys.path.insert(0, str(Path(__file__).parent))

from e2elib import ClusterTarget, ForbiddenGuard, LocalTarget, Target

_HERE = Path(__file__).parent
ROOT = _HERE.parents[1]
CHART = ROOT / "charts" / "fake-gpu-operator"
VALUES = _HERE / "values.yaml"
RELEASE = "fgo-e2e"


@dataclasses.dataclass(frozen=True)
class E2eSettings:
    kubeconfig: str | None = env_field(
        "FGO_E2E_KUBECONFIG",
        None,
        "Run against this cluster (kind, via make e2e-kind) instead of the local control plane.",
    )
    set_values: str = env_field(
        "FGO_E2E_SET", "", "Extra helm --set values (images of make e2e-kind)."
    )
    namespace: str = env_field("FGO_E2E_NAMESPACE", "fgo-e2e", "Namespace of the release.")
    runtime: str = env_field(
        "FGO_E2E_RUNTIME",
        "process",
        "How the chart's Deployments run on the local control plane: `process` (the service "
        "modules of this checkout) or `containers` (runc containers of the images `make images` "
        "built, the exact bits users run).",
        choices=("process", "containers"),
    )
    bin_dir: str | None = env_field("FGO_BIN_DIR", None, "helm and kubectl.")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def _bin_dir(settings: E2eSettings) -> Path:
    if settings.bin_dir:
        return Path(settings.bin_dir)
    out = subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), "--print-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def e2e_settings() -> E2eSettings:
    return load_settings(E2eSettings)


@pytest.fixture(scope="session")
def target(e2e_settings: E2eSettings, request: pytest.FixtureRequest) -> Iterator[Target]:
    """The chart installed and its services running (see the module docstring)."""
    bin_dir = _bin_dir(e2e_settings)
    sets = [s for s in e2e_settings.set_values.split(",") if s]
    if e2e_settings.kubeconfig:
        yield from _cluster_target(Path(e2e_settings.kubeconfig), bin_dir, e2e_settings, sets)
        return
    cluster: LocalCluster = request.getfixturevalue("local_cluster")
    containers = None
    if e2e_settings.runtime == "containers":
        runc = Path(asyncio.run(resolve_node_bin_dir(print, build=False))) / "runc"
        containers = ContainerRuntime(runc, state_dir=cluster.state_dir / "operator")
    operator = LocalOperator.for_cluster(
        cluster, CHART, namespace=e2e_settings.namespace, release=RELEASE, containers=containers
    )
    local = LocalTarget(operator, cluster.bin_dir)

    async def up() -> None:
        workloads = await operator.install([VALUES], sets)
        local.workloads = [w.name for w in workloads]
        await operator.start(workloads)
        await operator.wait_ready(local.workloads, timeout_s=120)

    asyncio.run(up())
    try:
        yield local
    finally:
        asyncio.run(operator.uninstall())
        _nothing_left(local)


def _nothing_left(target: Target) -> None:
    """After uninstall (every test's KWOK nodes are gone by then): no object of the release,
    no per-node record the status-updater wrote, no ResourceSlice of our driver."""
    left = target.kubectl(
        "get", "all,configmaps,serviceaccounts,roles,rolebindings,clusterroles,"
        "clusterrolebindings,deviceclasses,runtimeclasses", "-A",
        "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name",
    ).split()  # fmt: skip
    left += target.kubectl(
        "get", "configmaps", "-n", target.namespace, "-l", "node-topology=true", "-o", "name"
    ).split()
    left += [
        s
        for s in target.kubectl(
            "get",
            "resourceslices",
            "-o",
            "jsonpath={range .items[*]}{.spec.driver}/{.metadata.name} {end}",
        ).split()
        if s.startswith("gpu.nvidia.com/")
    ]
    assert not left, f"left behind after helm uninstall: {left}"


def _cluster_target(
    kubeconfig: Path, bin_dir: Path, settings: E2eSettings, sets: list[str]
) -> Iterator[Target]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    args = [str(bin_dir / "helm"), "upgrade", "-i", RELEASE, str(CHART), "--namespace",
            settings.namespace, "--create-namespace", "-f", str(VALUES)]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    subprocess.run(args, env=env, check=True)
    remote = ClusterTarget(kubeconfig, bin_dir, settings.namespace)
    for deploy in remote.kubectl("get", "deploy", "-n", settings.namespace, "-o", "name").split():
        remote.kubectl("rollout", "status", "-n", settings.namespace, deploy, "--timeout=180s")
    try:
        yield remote
    finally:
        subprocess.run([str(bin_dir / "helm"), "uninstall", RELEASE, "--namespace",
                        settings.namespace, "--wait"], env=env, check=False)  # fmt: skip


@pytest_asyncio.fixture
async def kube(target: Target) -> AsyncIterator[client.ApiClient]:
    async with api_client(target.kubeconfig) as api:
        yield api


@pytest.fixture(scope="session")
def workload_namespace(target: Target) -> Iterator[str]:
    """One namespace for every test's pods, deleted after the last test (see docstring)."""
    name = unique_name("e2e-work", 30)

    async def create() -> None:
        async with api_client(target.kubeconfig) as api:
            await create_namespace(api, name)

    asyncio.run(create())
    yield name
    target.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest_asyncio.fixture
async def kwok_nodes(
    kube: client.ApiClient, request: pytest.FixtureRequest
) -> AsyncIterator[KwokNodeFactory]:
    """``await kwok_nodes(1)`` -> names of new Ready KWOK nodes in pool default (deleted after)."""
    factory = KwokNodeFactory(kube, unique_name(f"e2e-{request.node.name}", 30) + "-")
    yield factory
    await factory.cleanup()


# ----------------------------------------------------------------------------- RBAC guard


@pytest.fixture(scope="session")
def forbidden_guard(target: Target) -> ForbiddenGuard:
    return ForbiddenGuard(target)


@pytest.fixture(autouse=True)
def _no_forbidden_calls(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if any service was refused an API call while it ran."""
    if "target" not in request.fixturenames:
        yield
        return
    guard: ForbiddenGuard = request.getfixturevalue("forbidden_guard")
    guard.reset()
    yield
    problems = guard.new_forbidden()
    if problems:
        pytest.fail(
            "forbidden API calls during the test (the chart's RBAC is too narrow, or a "
            "service calls something it should not):\n  " + "\n  ".join(problems),
            pytrace=False,
        )
