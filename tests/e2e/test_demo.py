"""The first ten minutes, as a newcomer lives them (issue 22): ``make demo`` from a clean state
dir, then the commands it prints: ``fgo nvidia-smi default/gpu-pod`` (the pod's one GPU, as the
node's record says it holds it), ``--node`` (both GPUs), ``fgo cluster status`` (the operator's
processes healthy, the metrics URL the demo printed, still valid), ``fgo cluster down``.

Uses its own state dir and control plane (not the session's), like a user's checkout would.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fgo_common.topology import TOPOLOGY_DATA_KEY, NodeTopology

ROOT = Path(__file__).resolve().parents[2]
FGO = ["uv", "run", "--frozen", "--python", "3.11", "fgo"]


def run(argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(state dir, everything `make demo` printed); the cluster is brought down afterwards."""
    state = tmp_path_factory.mktemp("demo") / "cluster"
    try:
        done = run(["make", "demo", f"STATE_DIR={state}"], timeout_s=600)
        assert done.returncode == 0, done.stdout + done.stderr
        yield state, done.stdout + done.stderr
    finally:
        run([*FGO, "cluster", "down", "--state-dir", str(state)])


def kubectl(state: Path, *args: str) -> str:
    """kubectl as the demo tells users to get it: from `fgo cluster env`."""
    env = run([*FGO, "cluster", "env", "--state-dir", str(state)]).stdout
    found = re.search(r'^export KUBECONFIG=(.+)\nexport PATH="([^:"]+):\$PATH"$', env, re.M)
    assert found, env
    done = run([str(Path(found[2]) / "kubectl"), "--kubeconfig", found[1], *args])
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_demo_prints_what_a_newcomer_needs(demo: tuple[Path, str]) -> None:
    state, out = demo
    flag = f"--state-dir {state}"
    assert f"uv run fgo nvidia-smi {flag} default/gpu-pod" in out
    assert "stay Pending" in out  # the chart's pods, explained
    assert f'eval "$(uv run fgo cluster env {flag})"' in out
    assert f"stop:    uv run fgo cluster down {flag}" in out
    assert "make cluster-down" not in out  # would act on another state dir
    events = kubectl(state, "get", "events", "-n", "gpu-operator", "-o", "yaml")
    assert events.count("reason: RunsAsLocalProcess") == 3


def test_nvidia_smi_shows_the_pods_gpu(demo: tuple[Path, str]) -> None:
    state, _ = demo
    node = kubectl(state, "get", "pod", "gpu-pod", "-o", "jsonpath={.spec.nodeName}")
    cm = yaml.safe_load(
        kubectl(state, "get", "cm", "-n", "gpu-operator", f"topology-{node}", "-o", "yaml")
    )
    record = NodeTopology.from_yaml(cm["data"][TOPOLOGY_DATA_KEY], node)
    held = [g for g in record.gpus if any(h.pod == "gpu-pod" for h in g.status.holders)]
    assert len(held) == 1, record.gpus

    done = run([*FGO, "nvidia-smi", "--state-dir", str(state), "default/gpu-pod"])
    assert done.returncode == 0, done.stderr
    assert f"NVIDIA_VISIBLE_DEVICES={held[0].id}" in done.stderr
    assert "Tesla K80" in done.stdout
    shown = [g.bus_id for g in record.gpus if g.bus_id.upper() in done.stdout.upper()]
    assert shown == [held[0].bus_id], done.stdout

    whole = run([*FGO, "nvidia-smi", "--state-dir", str(state), "--node", node])
    assert whole.returncode == 0, whole.stderr
    assert all(g.bus_id.upper() in whole.stdout.upper() for g in record.gpus), whole.stdout


def test_status_lists_the_operator_and_a_stable_metrics_url(demo: tuple[Path, str]) -> None:
    state, out = demo
    printed = re.search(r"curl -s (http://127\.0\.0\.1:\d+/metrics)", out)
    assert printed, out
    done = run([*FGO, "cluster", "status", "--state-dir", str(state)])
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("fgo-status-updater", "fgo-kwok-gpu-capacity", "nvidia-dcgm-exporter-kwok"):
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith(f"gpu-operator/{name} "))
        assert " ok " in line, line
    assert f"nvidia-dcgm-exporter-kwok: {printed[1]}" in done.stdout
    with urllib.request.urlopen(printed[1], timeout=10) as resp:
        assert "DCGM_FI_DEV_GPU_UTIL" in resp.read().decode()


def test_down_stops_everything_then_says_nothing_is_left(demo: tuple[Path, str]) -> None:
    state, _ = demo
    first = run([*FGO, "cluster", "down", "--state-dir", str(state)])
    assert first.returncode == 0
    assert f"stopped everything of {state}" in first.stderr
    again = run([*FGO, "cluster", "down", "--state-dir", str(state)])
    assert again.returncode == 0
    assert f"nothing to stop in {state}" in again.stderr
