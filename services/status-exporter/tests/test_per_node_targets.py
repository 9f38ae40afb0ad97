"""Per-node targets (kwok mode): /http_sd lists /metrics/<node>, each the node's part of the page."""

from __future__ import annotations

import gzip
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from exporter_builders import T0, hold, node
from fgo_common.names import DCGM_NAMES
from fgo_common.telemetry import BUCKET_SECONDS
from fgo_status_exporter.dcgm import DcgmCollector, ExporterOptions, ServedNode
from fgo_status_exporter.server import build_metrics_app, sd_targets
from prometheus_client.parser import text_string_to_metric_families


def _series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
async def per_node() -> Any:
    records = {name: node(name, "H100", 2) for name in ("kwok-a", "kwok-b", "kwok-c")}
    hold(records["kwok-b"], 1, pod="trainer-0")
    now = [T0]
    collector = DcgmCollector(ExporterOptions(names=DCGM_NAMES))

    def served() -> list[ServedNode]:
        return [ServedNode(t, name) for name, t in sorted(records.items())]

    def served_node(name: str) -> ServedNode | None:
        return ServedNode(records[name], name) if name in records else None

    app = build_metrics_app(
        collector,
        served,
        clock=lambda: now[0],
        served_node=served_node,
        served_names=lambda: list(records),
    )
    server = TestServer(app)
    await server.start_server()
    yield records, now, server
    await server.close()


async def _get(server: TestServer, path: str, encoding: str = "identity") -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(server.make_url(path), headers={"Accept-Encoding": encoding}) as resp,
    ):
        body = await resp.read()
        return resp.status, gzip.decompress(body) if encoding == "gzip" else body


def test_sd_document_shape() -> None:
    assert sd_targets("exporter:9400", ["n1"]) == [
        {
            "targets": ["exporter:9400"],
            "labels": {"__metrics_path__": "/metrics/n1", "instance": "n1", "node": "n1"},
        }
    ]


async def test_http_sd_lists_every_node_at_the_address_asked(per_node: Any) -> None:
    _, _, server = per_node
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/http_sd")) as r:
        assert r.status == 200
        groups = await r.json()
    assert [g["labels"]["node"] for g in groups] == ["kwok-a", "kwok-b", "kwok-c"]
    assert {g["targets"][0] for g in groups} == {f"{server.host}:{server.port}"}


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_per_node_series_equal_the_single_page(per_node: Any, encoding: str) -> None:
    records, now, server = per_node
    for t in (T0, T0 + 3.5, T0 + BUCKET_SECONDS + 1):  # page hit within a bucket, then a new one
        now[0] = t
        status, page = await _get(server, "/metrics")
        assert status == 200
        whole = _series(page.decode())
        union: dict[Any, float] = {}
        for name in records:
            status, body = await _get(server, f"/metrics/{name}", encoding)
            assert status == 200
            part = _series(body.decode())
            assert part, name
            assert {dict(labels)["Hostname"] for _, labels in part} == {name}
            union.update(part)
        assert union == whole


async def test_record_change_and_gone_node(per_node: Any) -> None:
    records, _, server = per_node
    _, before = await _get(server, "/metrics/kwok-a")
    assert b"trainer-9" not in before
    records["kwok-a"] = node("kwok-a", "H100", 2)
    hold(records["kwok-a"], 0, pod="trainer-9")
    _, after = await _get(server, "/metrics/kwok-a")  # same bucket, new record: not the old page
    assert b'pod="trainer-9"' in after
    del records["kwok-c"]
    status, _ = await _get(server, "/metrics/kwok-c")
    assert status == 404


async def test_single_page_mode_has_no_per_node_routes() -> None:
    collector = DcgmCollector(ExporterOptions(names=DCGM_NAMES))
    server = TestServer(build_metrics_app(collector, list, clock=lambda: T0))
    await server.start_server()
    try:
        assert (await _get(server, "/http_sd"))[0] == 404
        assert (await _get(server, "/metrics/n1"))[0] == 404
    finally:
        await server.close()
