import json
from typing import Any

import pytest

from bench import results
from bench.results import ScenarioResult, Target


def _doc(**overrides: Any) -> dict[str, Any]:
    scenario = ScenarioResult("churn", "Churn")
    scenario.figure("pods", 10)
    scenario.series["lat"] = [[0.1], [0.2]]
    scenario.target(Target("p99", "<", 1.0, "s", 0.4))
    scenario.target(Target("writes", "<=", 2.0, "writes/event", None, "not measured"))
    scenario.finish("ok")
    doc: dict[str, Any] = {
        "schema": results.SCHEMA,
        "started_at": 1.0,
        "finished_at": 2.0,
        "machine": {"cpu_model": "x", "cores": 2, "memory_bytes": 1, "kubernetes_version": "v1"},
        "config": {},
        "scenarios": [scenario.to_dict()],
        "footprint": {},
    }
    doc.update(overrides)
    parsed: dict[str, Any] = json.loads(json.dumps(doc))  # exactly what results.json holds
    return parsed


def test_a_run_document_is_valid() -> None:
    assert results.validate(_doc()) == []


@pytest.mark.parametrize(
    ("limit", "comparison", "measured", "met"),
    [
        (1.0, "<", 0.5, True),
        (1.0, "<", 1.0, False),
        (2.0, "<=", 2.0, True),
        (80.0, "<", 81.0, False),
        (5.0, ">=", 5.0, True),
        (1.0, "<", None, None),
    ],
)
def test_target_met(
    limit: float, comparison: str, measured: float | None, met: bool | None
) -> None:
    target = Target("t", comparison, limit, "s", measured)
    assert target.met is met
    assert target.to_dict()["met"] is met


def test_missing_and_mistyped_fields_are_named() -> None:
    doc = _doc()
    del doc["machine"]["cores"]
    doc["scenarios"][0]["status"] = "running"
    doc["scenarios"][0]["targets"][0]["limit"] = "1"
    doc["scenarios"][0]["series"]["lat"] = [[0.1, "x"]]
    errors = results.validate(doc)
    assert "$.machine.cores: missing" in errors
    assert any(e.startswith("$.scenarios[0].status: one of") for e in errors)
    assert "$.scenarios[0].targets[0].limit: expected int/float, got str" in errors
    assert "$.scenarios[0].series.lat: expected a list of number lists" in errors


def test_wrong_schema_version_and_top_level() -> None:
    assert results.validate([]) == ["$: expected dict, got list"]
    errors = results.validate(_doc(schema="fgo-bench/0"))
    assert errors == [f"$.schema: expected {results.SCHEMA!r}, got 'fgo-bench/0'"]


def test_booleans_are_not_numbers() -> None:
    doc = _doc()
    doc["scenarios"][0]["duration_s"] = True
    assert results.validate(doc) == ["$.scenarios[0].duration_s: expected int/float, got bool"]


def test_figures_are_printed_as_they_come(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = ScenarioResult("exporter", "Exporter")
    scenario.figure("bytes", 1234, "1.2 KiB")
    scenario.target(Target("scrape", "<", 0.5, "s", 0.7))
    err = capsys.readouterr().err
    assert "[exporter] bytes: 1.2 KiB" in err
    assert "MISSED" in err
    assert scenario.figures == {"bytes": 1234}
