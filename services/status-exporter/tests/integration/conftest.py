"""Fixtures for the status-exporter's integration tests: the session's real control plane (the
one tests/conftest.py started, when the same pytest session runs tests/integration too), a
per-test namespace and KWOK nodes (tests/integration's helpers), a real Prometheus server, and
the exporter itself as a subprocess (its real entry point, settings and signal handling).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodes import api_client
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    test_cluster_settings,
    unique_name,
)
from fgo_localcluster.tools import ensure_binaries, resolve_bin_dir
from kubernetes_asyncio import client

REPO = Path(__file__).resolve().parents[4]
_HELPERS = str(Path(__file__).resolve().parents[1] / "helpers")
if _HELPERS not in sys.path:
    sys.path.append(_HELPERS)

from exporter_harness import ExporterProcess, Prometheus, StartExporter  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def _shared_cluster(config: pytest.Config) -> LocalCluster | None:
    """The cluster tests/conftest.py started in this session, if it did: one control plane
    per session even though that conftest's fixtures do not reach services/."""
    wanted = REPO / "tests" / "conftest.py"
    for plugin in config.pluginmanager.get_plugins():
        if Path(getattr(plugin, "__file__", "") or "/").resolve() == wanted:
            key = getattr(plugin, "_CLUSTER_KEY", None)
            if key is not None:
                cluster = config.stash.get(key, None)
                if isinstance(cluster, LocalCluster):
                    return cluster
    return None


@pytest.fixture(scope="session")
def exporter_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    shared = _shared_cluster(request.config)
    if shared is not None:
        yield shared
        return

    def progress(message: str) -> None:
        print(f"fgo: {message}", file=sys.__stderr__, flush=True)

    async def build() -> None:
        await ensure_binaries(await resolve_bin_dir(), progress)

    asyncio.run(build())
    settings = test_cluster_settings()
    reuse = settings.state_dir is not None
    state_dir = (
        Path(settings.state_dir) if settings.state_dir else tmp_path_factory.mktemp("fgo-cluster")
    )
    cluster = LocalCluster(state_dir, progress=progress)
    cluster.start_sync(wait=True)
    yield cluster
    if not reuse:
        cluster.stop_sync()


@pytest_asyncio.fixture
async def kube(exporter_cluster: LocalCluster) -> AsyncIterator[client.ApiClient]:
    async with api_client(exporter_cluster.kubeconfig) as api:
        yield api


@pytest_asyncio.fixture
async def namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    name = unique_name(f"t-{request.node.name}")
    await create_namespace(kube, name)
    yield name
    await delete_namespace(kube, name)


@pytest_asyncio.fixture
async def kwok_nodes(
    kube: client.ApiClient, request: pytest.FixtureRequest
) -> AsyncIterator[KwokNodeFactory]:
    factory = KwokNodeFactory(kube, unique_name(f"kwok-{request.node.name}", 40) + "-")
    yield factory
    await factory.cleanup()


@pytest_asyncio.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("no prometheus binary: run hack/install-prometheus.sh (make host-deps)")
    server = Prometheus(binary, tmp_path / "prometheus")
    server.workdir.mkdir()
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def start_exporter(
    exporter_cluster: LocalCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[StartExporter]:
    started: list[ExporterProcess] = []

    async def start(env: dict[str, str]) -> ExporterProcess:
        workdir = tmp_path / f"exporter-{len(started)}"
        workdir.mkdir()
        exporter = ExporterProcess(exporter_cluster.kubeconfig, env, workdir)
        started.append(exporter)
        await exporter.start()
        return exporter

    yield start
    failed = getattr(request.node, "rep_call", None)
    for exporter in started:
        code = await exporter.stop()
        if failed is not None and failed.failed:
            print(f"--- exporter log ({exporter.log_path}) ---\n{exporter.log_tail(80)}")
        # A clean shutdown on SIGTERM: exit code 0, within the grace period.
        assert code == 0, f"exporter exited with {code}:\n{exporter.log_tail()}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
