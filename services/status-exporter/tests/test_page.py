"""The per-bucket page (page.py) must serve exactly what the straightforward renderer does."""

from __future__ import annotations

import gzip
import zlib

import pytest
from exporter_builders import T0, enable_mig, hold, hold_mig, node
from fgo_common.names import DCGM_NAMES
from fgo_common.topology import NodeTopology
from fgo_status_exporter.dcgm import FIELD_SOURCES, DcgmCollector, ExporterOptions, ServedNode
from fgo_status_exporter.page import (
    PageCache,
    crc32_combine,
    gzip_pieces,
    plain_pieces,
    zeros_operator,
)

# Every field this exporter can serve, so a field whose value moves within a bucket is caught.
ALL_FIELDS = ExporterOptions(
    names=DCGM_NAMES,
    extra_metrics=tuple(f.name for f in DCGM_NAMES.optional_counters if f.name in FIELD_SOURCES),
)
OPTIONS = [
    ExporterOptions(names=DCGM_NAMES),
    ALL_FIELDS,
    ExporterOptions(names=DCGM_NAMES, idle_pod_labels=True, pod_uid_label=True),
]
# Instants within one bucket, at its edges and in later buckets.
INSTANTS = [T0, T0 + 0.25, T0 + 4.5, T0 + 9.999, T0 + 10.0, T0 + 61.7, T0 + 3600.2]


def nodes() -> list[ServedNode]:
    busy = node("gpu-node-1", "H100", 4)
    hold(busy, 0)
    hold(busy, 1, pod="half", uid="uid-half", util=(20, 70))
    mig = node("gpu-node-2", "H100", 2, mig_strategy="mixed")
    enable_mig(mig, 0, [("4g.40gb", 0), ("3g.40gb", 4)])
    hold_mig(mig, 0, 1, fb_mib=4096)
    old = node("k80-node", "K80", 1)  # no energy counter before Volta
    idle = node("a100-node", "A100", 2)
    return [ServedNode(t, t.node_name) for t in (busy, mig, old, idle)]


def straight(collector: DcgmCollector, served: list[ServedNode], t: float) -> bytes:
    return collector.scrape_text(served, t).encode()


@pytest.mark.parametrize("options", OPTIONS, ids=["default", "all-fields", "empty-pod-labels"])
def test_page_equals_the_straight_rendering_at_every_instant(options: ExporterOptions) -> None:
    collector = DcgmCollector(options)
    cache = PageCache(collector)
    served = nodes()
    for t in INSTANTS:
        page = cache.lookup(served, t)
        assert page is not None
        expected = straight(collector, served, t)
        assert expected  # the comparison is about a real page
        assert b"".join(plain_pieces(cache, page, t)) == expected
        assert gzip.decompress(b"".join(gzip_pieces(cache, page, t))) == expected
    # One build per bucket, not per scrape.
    assert cache.builds == len({int(t // 10) for t in INSTANTS})


def test_energy_moves_within_a_bucket_and_the_page_follows() -> None:
    collector = DcgmCollector(ExporterOptions(names=DCGM_NAMES))
    cache = PageCache(collector)
    served = nodes()
    page = cache.lookup(served, T0)
    assert page is not None
    first = b"".join(plain_pieces(cache, page, T0 + 1))
    later = b"".join(plain_pieces(cache, page, T0 + 2))
    assert first != later  # the energy counters grew
    assert later == straight(collector, served, T0 + 2)


def test_a_changed_record_is_rendered_straight_until_the_next_bucket() -> None:
    collector = DcgmCollector(ExporterOptions(names=DCGM_NAMES))
    cache = PageCache(collector)
    served = nodes()
    assert cache.lookup(served, T0) is not None
    changed = node("gpu-node-1", "H100", 4)  # the pods on GPU 0 and 1 are gone
    served[0] = ServedNode(changed, "gpu-node-1")
    # Same bucket: no second build (churn would pay one per scrape), the caller renders straight.
    assert cache.lookup(served, T0 + 1) is None
    assert cache.builds == 1
    page = cache.lookup(served, T0 + 10)
    assert page is not None
    assert cache.builds == 2
    text = b"".join(plain_pieces(cache, page, T0 + 10))
    assert text == straight(collector, served, T0 + 10)
    assert b"trainer-0" not in text
    # A renamed host label is a change too.
    served[0] = ServedNode(changed, "other-host")
    assert cache.lookup(served, T0 + 12) is None


def test_records_with_faults_are_rendered_straight() -> None:
    collector = DcgmCollector(ExporterOptions(names=DCGM_NAMES))
    cache = PageCache(collector)
    faulty: NodeTopology = node("gpu-node-1", "H100", 2)
    faulty.gpus[0].faults = [{"kind": "xid", "code": 79, "since": T0 + 5}]
    served = [ServedNode(faulty, "gpu-node-1")]
    assert cache.lookup(served, T0) is None
    assert cache.lookup(served, T0 + 6) is None
    assert cache.builds == 1  # the decision is cached too


def test_xid_count_is_on_the_page_and_moves_within_a_bucket_only_with_faults() -> None:
    collector = DcgmCollector(ALL_FIELDS)
    cache = PageCache(collector)
    served = nodes()
    page = cache.lookup(served, T0)
    assert page is not None
    text = b"".join(plain_pieces(cache, page, T0 + 3))
    assert text == straight(collector, served, T0 + 3)
    # Without faults every GPU entity has the one 0 series: constant, so it is static text.
    assert b"DCGM_EXP_XID_ERRORS_COUNT{" in text and b'xid="' not in text
    # An XID event switches the count at its exact instant, inside a bucket: such records are
    # never served from a page.
    faulty = node("gpu-node-1", "H100", 1)
    faulty.gpus[0].faults = [{"kind": "xid", "code": 79, "since": T0 + 5}]
    one = [ServedNode(faulty, "gpu-node-1")]
    before, after = straight(collector, one, T0 + 4), straight(collector, one, T0 + 6)
    assert b'xid="79"' not in before and b'window_size_in_ms="300000",xid="79"} 1' in after
    fresh = PageCache(collector)
    assert fresh.lookup(one, T0 + 4) is None and fresh.lookup(one, T0 + 6) is None
    assert fresh.builds == 1  # the decision, not a page


def test_prepared_page_is_used_for_its_bucket() -> None:
    collector = DcgmCollector(ExporterOptions(names=DCGM_NAMES))
    cache = PageCache(collector)
    served = nodes()
    ahead = cache.build(served, int(T0 // 10) + 1)
    assert cache.has(int(T0 // 10) + 1)
    assert not cache.has(int(T0 // 10))
    assert cache.lookup(served, T0 + 10.5) is ahead
    assert cache.lookup(served, T0) is not None  # the current bucket is built on demand
    assert cache.builds == 2


@pytest.mark.parametrize(
    ("a", "b"), [(b"", b""), (b"x", b""), (b"", b"y"), (b"abc" * 999, b"\0" * 7)]
)
def test_crc32_combine(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), zeros_operator(len(b))) == zlib.crc32(a + b)


@pytest.mark.parametrize(
    ("interval_ms", "window_ms", "page_used"),
    [(30000, 300000, True), (15000, 300000, False), (30000, 305000, False), (10000, 60000, True)],
)
def test_clock_event_counts_off_bucket_boundaries_disable_the_page(
    interval_ms: int, window_ms: int, page_used: bool
) -> None:
    """DCGM samples every collect interval; a sample or window edge inside a bucket moves the
    clock-events count mid-bucket, which a page built at the bucket start would miss."""
    options = ExporterOptions(
        names=DCGM_NAMES,
        extra_metrics=ALL_FIELDS.extra_metrics,
        collect_interval_ms=interval_ms,
        clock_events_window_ms=window_ms,
    )
    cache = PageCache(DcgmCollector(options))
    assert (cache.lookup(nodes(), T0) is not None) is page_used
    without_family = ExporterOptions(names=DCGM_NAMES, collect_interval_ms=interval_ms)
    assert PageCache(DcgmCollector(without_family)).lookup(nodes(), T0) is not None
