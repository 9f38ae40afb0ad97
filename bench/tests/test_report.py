from pathlib import Path
from typing import Any

import pytest

from bench import report, results
from bench.results import ScenarioResult, Target


def _doc() -> dict[str, Any]:
    bringup = ScenarioResult("bringup", "Bring-up", params={"sizes": [10]})
    bringup.figures["n10"] = {
        "nodes": 10,
        "create_s": 0.2,
        "ready": {
            "count": 10,
            "all_after_last_create_s": 0.7,
            "all_after_first_create_s": 0.9,
            "per_node_latency_s": {"p50": 0.5, "p99": 0.7},
        },
        "advertised": {
            "count": 7,
            "all_after_last_create_s": None,
            "all_after_first_create_s": None,
            "per_node_latency_s": {"p50": 3.0, "p99": 3.5},
        },
    }
    bringup.figures["n10.api"] = {
        "fgo-kwok-dra-plugin": {"writes": 1.0, "reads": 0.5, "resourceslices": 1.0}
    }
    bringup.series["n10.ready"] = [[0.5, 1], [0.7, 2]]
    bringup.series["n10.advertised"] = [[3.0, 1]]
    bringup.target(Target("1000 nodes advertised", "<=", 60.0, "s", None, "only 10 nodes"))
    bringup.finish("partial", "time budget exceeded")
    churn = ScenarioResult("churn", "Churn")
    churn.figures["dp"] = {
        "pods": 4,
        "running_to_topology": {"count": 4, "p50": 0.1, "p99": 0.3},
        "api": {
            "by_service_account": {
                "fgo-status-updater": {"writes": 8.0, "reads": 1.0, "configmaps": 8.0}
            },
            "ours_writes": 8.0,
            "ours_reads": 1.0,
            "writes_per_pod_event": 1.0,
        },
    }
    churn.series["dp.running_to_topology"] = [[0.1], [0.2], [0.3]]
    churn.target(Target("p99", "<", 1.0, "s", 0.3))
    churn.finish("ok")
    empty = ScenarioResult("scheduler", "Scheduler")
    empty.finish("failed", "RuntimeError('no nodes')")
    return {
        "schema": results.SCHEMA,
        "started_at": 1.7e9,
        "finished_at": 1.7e9 + 120,
        "machine": {
            "cpu_model": "AMD EPYC",
            "cores": 2,
            "memory_bytes": 24 << 30,
            "kubernetes_version": "v1.36.3",
        },
        "config": {
            "nodes": [10],
            "gpus_per_node": 8,
            "gpu_type": "H100",
            "pods": 4,
            "churn_rate": 0,
            "sched_pods": 8,
            "dra": True,
        },
        "scenarios": [bringup.to_dict(), churn.to_dict(), empty.to_dict()],
        "footprint": {
            "series": {
                "fgo-status-updater": [[1.0, 90.0, 0.1], [2.0, 95.0, 0.2]],
                "machine": [[1.0, 1.5], [2.0, 1.8]],
            },
            "groups": {"fgo-status-updater": "ours"},
            "phase_spans": [["idle", 1.0, 2.0]],
        },
        "services_alive_at_end": {"fgo-status-updater": True, "fgo-kwok-dra-plugin": False},
    }


def test_render_states_machine_targets_and_partial_scenarios() -> None:
    doc = _doc()
    assert results.validate(doc) == []
    text = report.render(doc)
    assert "AMD EPYC, 2 cores" in text
    assert "v1.36.3" in text
    assert "| 1000 nodes advertised | <= 60 s | — | not measured | only 10 nodes |" in text
    assert "| p99 | < 1 s | 0.3 s | met |" in text
    assert "status **partial**" in text
    assert "status **failed**" in text
    assert "| advertised | 7/10 | — |" in text
    assert "fgo-kwok-dra-plugin 1.00 writes (resourceslices 1.00) + 0.50 reads" in text
    assert "| fgo-status-updater | 8 | configmaps 8 | 1 |" in text
    assert "had exited by the end of the run:** fgo-kwok-dra-plugin" in text


def test_write_makes_plots_for_what_the_document_has(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = report.write(_doc(), tmp_path)
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["bringup.png", "churn.png", "footprint.png"]
    assert all((tmp_path / "plots" / p).read_bytes().startswith(b"\x89PNG") for p in plots)
    text = path.read_text()
    assert "![1. Bring-up](plots/bringup.png)" in text
    assert "exporter.png" not in text
