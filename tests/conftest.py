"""Fixtures and hooks shared by every suite under tests/ (integration, e2e, ...).

- ``local_cluster``: ONE real control plane per session (etcd, kube-apiserver,
  controller-manager, scheduler, KWOK), started on first use in a throw-away state dir, or the
  persistent one named by FGO_TEST_CLUSTER_STATE_DIR. Missing binaries are built (with
  progress on the terminal) before the first test runs, never silently skipped.
- A failing test that used the cluster gets the tail of what each component logged during it.
- Every async test fails if it leaves asyncio tasks running.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import log_excerpts, log_offsets, test_cluster_settings
from fgo_localcluster.tools import ensure_binaries, resolve_bin_dir

_CLUSTER_KEY = pytest.StashKey[LocalCluster]()
_OFFSETS_KEY = pytest.StashKey[dict[str, int]]()


def _progress_for(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines that reach the terminal even while pytest captures output.

    A multi-minute build or a cluster start must not look like a hang.
    """
    capman = config.pluginmanager.getplugin("capturemanager")

    def progress(message: str) -> None:
        ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
        with ctx:
            print(f"fgo: {message}", file=sys.stderr, flush=True)

    return progress


def _uses_cluster(item: pytest.Item) -> bool:
    return "local_cluster" in getattr(item, "fixturenames", ())


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries now, outside any test's timeout, if a selected test needs them."""
    if session.config.option.collectonly or not any(_uses_cluster(i) for i in session.items):
        return

    async def build() -> None:
        await ensure_binaries(await resolve_bin_dir(), _progress_for(session.config))

    asyncio.run(build())


@pytest.fixture(scope="session")
def local_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    settings = test_cluster_settings()
    reuse = settings.state_dir is not None
    state_dir = (
        Path(settings.state_dir) if settings.state_dir else tmp_path_factory.mktemp("fgo-cluster")
    )
    cluster = LocalCluster(state_dir, progress=_progress_for(request.config))
    cluster.start_sync(wait=True)
    request.config.stash[_CLUSTER_KEY] = cluster
    yield cluster
    if not reuse:
        cluster.stop_sync()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    cluster = item.config.stash.get(_CLUSTER_KEY, None)
    if cluster is not None and _uses_cluster(item):
        item.stash[_OFFSETS_KEY] = log_offsets(cluster.log_paths)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    lines = test_cluster_settings().log_tail_lines
    cluster = item.config.stash.get(_CLUSTER_KEY, None)
    if report.failed and cluster is not None and _uses_cluster(item) and lines > 0:
        offsets = item.stash.get(_OFFSETS_KEY, {})
        report.sections.append(
            ("control-plane logs", log_excerpts(cluster.log_paths, offsets, lines))
        )
    return report


@pytest.fixture(autouse=True)
def _leak_guard(request: pytest.FixtureRequest) -> None:
    """Autouse fixtures are set up first and torn down last, so the check below sees what is
    left after every other fixture (API clients, namespaces, ...) has cleaned up."""
    if pytest_asyncio.is_async_test(request.node):
        request.getfixturevalue("_no_leaked_tasks")


@pytest_asyncio.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves tasks running (set up first, so checked last)."""
    before = asyncio.all_tasks()
    yield
    # Give tasks cancelled during teardown the loop iterations they need to finish.
    for _ in range(5):
        await asyncio.sleep(0)
    me = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() if t not in before and t is not me and not t.done()]
    for task in leaked:
        task.cancel()
    if leaked:
        await asyncio.gather(*leaked, return_exceptions=True)
        names = ", ".join(f"{t.get_name()} ({t.get_coro()!r})" for t in leaked)
        pytest.fail(f"test leaked {len(leaked)} asyncio task(s): {names}", pytrace=False)
