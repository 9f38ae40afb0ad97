"""The scrape page, rendered once per telemetry bucket and kept compressed.

Every value the simulator reports is a function of the record and the 10 s telemetry bucket
(``fgo_common.telemetry.BUCKET_SECONDS``), with two exceptions: the energy and power-violation
counters grow with the exact instant, and a GPU with faults has error counters that switch at
exact instants (the last XID, ``DCGM_EXP_XID_ERRORS_COUNT`` as an event enters or leaves its
window). So a page for an unchanged set of records and one bucket is made of

* *static* runs of families, rendered once and kept as raw-deflate segments (a 1000-node page is
  ~50 MB of text but ~7 MB compressed, so holding it costs little memory), and
* *instant* families (``INSTANT_FIELDS``), rendered at every scrape from the cached label text
  — 8000 lines instead of 200 000.

A scrape then costs the instant families plus copying (gzip) or inflating (identity) the
segments. When any served GPU has faults the page is not used and the caller renders straight
(fault injection is rare and small; exactness matters more there). ``tests/test_page.py``
checks that the page equals the straightforward rendering byte for byte, across and within
buckets, for every field this exporter can serve.

Segments are cut with ``Z_SYNC_FLUSH`` from fresh compressors, so each one is a byte-aligned run
of non-final deflate blocks with no back-references outside itself: a gzip body is the header,
the segments and instant pieces in order, an empty final block and the trailer (CRC-32 of the
whole text, combined from the parts' CRCs without re-reading the text).
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from fgo_common.telemetry import BUCKET_SECONDS, sw_power_cap_ns
from fgo_common.telemetry import _energy_mj as energy_mj  # moves within a bucket

from fgo_status_exporter.dcgm import (
    DcgmCollector,
    ServedNode,
    Value,
    _format_float,
    _format_int,
    _Shape,
)

# Families whose values change within a bucket even without faults. A new field that does must be
# listed here with how to compute it; tests/test_page.py fails until it is.
INSTANT_FIELDS: dict[str, Callable[[_Shape, float, float], Value]] = {
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": lambda shape, t, boot: energy_mj(
        shape.gpu, shape.profile, t, boot
    ),
    # The SW power cap's time grows at the holders' capped share (no brake: faults go straight).
    "DCGM_FI_DEV_POWER_VIOLATION": lambda shape, t, boot: sw_power_cap_ns(
        shape.gpu, shape.profile, t, boot_time=boot
    ),
}

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
_MASK = 0xFFFFFFFF
_LEVEL = 1  # the text is so repetitive that level 1 still shrinks it ~7x, at a fraction of the CPU
INFLATE_CHUNK = 1 << 20


def bucket_of(t: float) -> int:
    return math.floor(t / BUCKET_SECONDS)


# -- CRC-32 of a concatenation -----------------------------------------------------------------
# CRC-32 is linear over GF(2): crc(A + B) = Z(crc(A)) ^ crc(B), where Z is "run |B| zero bytes
# through the raw register", a 32x32 bit matrix. Z for one byte is read off zlib itself; Z for n
# bytes is its n-th power (about 40 matrix products: ~10 ms, once per segment and bucket).

_Matrix = list[int]  # column i = image of bit i


def _apply(matrix: _Matrix, vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _multiply(a: _Matrix, b: _Matrix) -> _Matrix:
    return [_apply(a, column) for column in b]


_ONE_ZERO_BYTE: _Matrix = [zlib.crc32(b"\x00", (1 << i) ^ _MASK) ^ _MASK for i in range(32)]


def zeros_operator(length: int) -> _Matrix:
    """The matrix Z that appends ``length`` zero bytes to the raw CRC register."""
    result: _Matrix = [1 << i for i in range(32)]
    power = _ONE_ZERO_BYTE
    while length:
        if length & 1:
            result = _multiply(power, result)
        length >>= 1
        if length:
            power = _multiply(power, power)
    return result


def crc32_combine(crc_a: int, crc_b: int, zeros_b: _Matrix) -> int:
    """CRC-32 of A + B from crc(A), crc(B) and ``zeros_operator(len(B))``."""
    return _apply(zeros_b, crc_a) ^ crc_b


# -- the page ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive static families: raw deflate ending on a sync flush, and the text's CRC."""

    deflated: bytes
    crc: int
    size: int
    zeros: _Matrix


class _SegmentWriter:
    def __init__(self) -> None:
        self._packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._parts: list[bytes] = []
        self._crc = 0
        self._size = 0

    def add(self, text: bytes) -> None:
        self._crc = zlib.crc32(text, self._crc)
        self._size += len(text)
        self._parts.append(self._packer.compress(text))

    def close(self) -> Segment | None:
        if not self._size:
            return None
        self._parts.append(self._packer.flush(zlib.Z_SYNC_FLUSH))
        return Segment(b"".join(self._parts), self._crc, self._size, zeros_operator(self._size))


@dataclass(frozen=True, slots=True)
class Page:
    """One bucket's page for one set of records: segments and instant family names in order."""

    bucket: int
    nodes: tuple[ServedNode, ...]
    parts: tuple[Segment | str, ...]


def _page_is_exact(collector: DcgmCollector) -> bool:
    """Whether every static family really is constant within a bucket. DCGM_EXP_CLOCK_EVENTS_
    COUNT counts DCGM samples (one per collect interval) in a sliding window: its value moves
    only on bucket boundaries when both the interval and the window are whole buckets (the
    defaults: 30 s and 5 min); with other settings the page would go stale within a bucket,
    so it is not used and every scrape renders straight."""
    options = collector.options
    if options.names.clock_events_count not in {f.name for f in options.fields()}:
        return True
    bucket_ms = int(BUCKET_SECONDS * 1000)
    return (
        options.collect_interval_ms % bucket_ms == 0
        and options.clock_events_window_ms % bucket_ms == 0
    )


class PageCache:
    """Builds and keeps the current bucket's page (and the next one, when prepared ahead)."""

    def __init__(self, collector: DcgmCollector, *, keep: int = 2, all_served: bool = True) -> None:
        self.collector = collector
        self._keep = keep  # buckets kept: 2 = the current one and the one prepared ahead
        self._all_served = all_served  # False: one node of many (a per-node target)
        # bucket -> (the records it was built for, the page or None: faults, render straight)
        self._pages: dict[int, tuple[tuple[ServedNode, ...], Page | None]] = {}
        self._fields = {f.name: f for f in collector.options.fields()}
        self._building = threading.Lock()
        self.builds = 0
        self.usable = _page_is_exact(collector)

    @staticmethod
    def _same(page_nodes: Sequence[ServedNode], nodes: Sequence[ServedNode]) -> bool:
        # Records are replaced, never mutated, when a ConfigMap changes: identity is enough.
        return len(page_nodes) == len(nodes) and all(
            a.topology is b.topology and a.hostname == b.hostname
            for a, b in zip(page_nodes, nodes, strict=True)
        )

    def lookup(self, nodes: Sequence[ServedNode], t: float) -> Page | None:
        """The page for ``nodes`` at ``t``; None = render straight.

        A bucket gets at most one page: when records change after it was built (pod churn), the
        rest of the bucket is rendered straight rather than paying a build per scrape, and the
        next bucket's page (rendered ahead) picks the new records up.
        """
        bucket = bucket_of(t)
        hit = self._pages.get(bucket)
        if hit is not None:
            return hit[1] if self._same(hit[0], nodes) else None
        with self._building:
            # Concurrent scrapes of a new bucket wait for one build instead of each doing it
            # (and one build at a time bounds the memory it takes).
            hit = self._pages.get(bucket)
            if hit is not None:
                return hit[1] if self._same(hit[0], nodes) else None
            return self._build(nodes, bucket)

    def newest(self) -> int | None:
        """The newest bucket with a page (or a decision), None before the first."""
        return max(self._pages, default=None)

    def has(self, bucket: int) -> bool:
        """Whether ``bucket`` has a page (or the decision to render straight) already."""
        return bucket in self._pages

    def build(self, nodes: Sequence[ServedNode], bucket: int) -> Page | None:
        """Render ``nodes`` for ``bucket`` (any instant in it gives the same static text)."""
        with self._building:
            return self._build(nodes, bucket)

    def _build(self, nodes: Sequence[ServedNode], bucket: int) -> Page | None:
        self.builds += 1
        frozen = tuple(nodes)
        page: Page | None = None
        faults = any(gpu.faults for served in frozen for gpu in served.topology.gpus)
        if self.usable and not faults:
            page = Page(bucket, frozen, tuple(self._parts(frozen, bucket * BUCKET_SECONDS)))
        # Keep two buckets (the current one and the one prepared ahead); older pages are never
        # asked for again. New dicts are swapped in: a scrape in another thread may be reading.
        pages = {b: p for b, p in self._pages.items() if b != bucket}
        pages[bucket] = (frozen, page)
        for old in sorted(pages)[: -self._keep]:
            del pages[old]
        self._pages = pages
        return page

    def _parts(self, nodes: Sequence[ServedNode], t: float) -> Iterator[Segment | str]:
        collector = self.collector
        entities = collector.entities(nodes, t, all_served=self._all_served)
        writer = _SegmentWriter()
        for chunk in collector.render(entities):  # one chunk per family: "# HELP <name> ..."
            family_name = chunk[len("# HELP ") : chunk.index(" ", len("# HELP "))]
            if family_name in INSTANT_FIELDS:
                segment = writer.close()
                if segment is not None:
                    yield segment
                writer = _SegmentWriter()
                yield family_name
            else:
                writer.add(chunk.encode())
        segment = writer.close()
        if segment is not None:
            yield segment

    def instant_family(self, name: str, nodes: Sequence[ServedNode], t: float) -> bytes:
        """One instant family at ``t``, in the straightforward renderer's exact text."""
        fld = self._fields[name]
        value = INSTANT_FIELDS[name]
        fmt = _format_float if fld.value_type == "float" else _format_int
        boot = self.collector.options.boot_time
        lines = [
            f"{name}{label} {text}\n"
            for served in nodes
            for shape in self.collector._shapes(served)  # cached label text of the record
            if name in shape.supported
            for text in (fmt(value(shape, t, boot)),)
            for label in shape.labels
        ]
        if not lines:
            return b""
        return (f"# HELP {name} {fld.help}\n# TYPE {name} {fld.kind}\n" + "".join(lines)).encode()


def gzip_pieces(
    cache: PageCache, page: Page, t: float, sizes: list[int] | None = None
) -> Iterator[bytes]:
    """The gzip body of ``page`` at ``t``, piece by piece (segments are sent as kept); the
    uncompressed size is appended to ``sizes`` at the end."""
    yield GZIP_HEADER
    crc = size = 0
    for part in page.parts:
        if isinstance(part, Segment):
            crc = crc32_combine(crc, part.crc, part.zeros)
            size += part.size
            yield part.deflated
            continue
        text = cache.instant_family(part, page.nodes, t)
        if text:
            crc = zlib.crc32(text, crc)
            size += len(text)
            packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
            yield packer.compress(text) + packer.flush(zlib.Z_SYNC_FLUSH)
    final = zlib.compressobj(_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    if sizes is not None:
        sizes.append(size)
    yield final.flush() + struct.pack("<II", crc, size & _MASK)


def plain_pieces(
    cache: PageCache, page: Page, t: float, sizes: list[int] | None = None
) -> Iterator[bytes]:
    """The uncompressed body of ``page`` at ``t``, at most ``INFLATE_CHUNK`` bytes a piece."""
    size = 0
    for part in page.parts:
        if isinstance(part, Segment):
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            data = inflater.decompress(part.deflated, INFLATE_CHUNK)
            while data:
                size += len(data)
                yield data
                data = inflater.decompress(inflater.unconsumed_tail, INFLATE_CHUNK)
            continue
        text = cache.instant_family(part, page.nodes, t)
        if text:
            size += len(text)
            yield text
    if sizes is not None:
        sizes.append(size)
