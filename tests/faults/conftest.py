"""Fixtures of the fault suite (docs/reliability.md).

``world``: the chart's services on the session's local control plane, KWOK and test-kubelet
GPU nodes, churn load, Prometheus (faultlib.world). ``report``: collects every injection and
writes the fault table to ``FGO_FAULT_RESULTS_DIR`` (default ``bench-results/faults``) and the
terminal at the end. Every test here is marked ``integration`` (it needs the control plane).

Knobs (environment): ``FGO_FAULT_OUTAGE_SECONDS`` (10) how long a component stays down;
``FGO_FAULT_SOAK_SECONDS`` (0) total time to spend repeating injections (``make soak``; each
fault gets an equal share, outages then vary between 10 and 30 s).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fgo_localcluster.cluster import LocalCluster

# The helper package next to this file (faultlib) is imported by name.
sys.path.insert(0, str(Path(__file__).parent))

from faultlib.knobs import soak_seconds
from faultlib.report import FaultReport
from faultlib.world import World

_HERE = Path(__file__).parent
REPO = _HERE.parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest) -> Iterator[FaultReport]:
    result = FaultReport("soak" if soak_seconds() > 0 else "quick")
    yield result
    directory = Path(os.environ.get("FGO_FAULT_RESULTS_DIR", REPO / "bench-results" / "faults"))
    path = result.write(directory)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with ctx:
        print(f"\n{result.markdown()}(written to {path})", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def world(
    local_cluster: LocalCluster, report: FaultReport, request: pytest.FixtureRequest
) -> Iterator[World]:
    workdir = Path(tempfile.mkdtemp(prefix="fgo-faults-"))
    w = World(local_cluster, REPO, workdir)
    w.start_thread()
    try:
        w.call(w.setup, timeout_s=600)
        yield w
    finally:
        if w.churn is not None:
            report.load = {
                "pods created": w.churn.stats.created,
                "pods deleted": w.churn.stats.deleted,
                "create errors (during faults)": w.churn.stats.create_errors,
                "by kind": dict(sorted(w.churn.stats.kinds.items())),
                "test-kubelet pods started": sum(k.stats.started for k in w.kubelets.values()),
            }
        w.call(w.teardown, timeout_s=300)
        w.stop_thread()
        if request.session.testsfailed:
            print(f"\nfault suite logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
