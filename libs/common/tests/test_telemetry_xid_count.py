"""Telemetry model: XID events counted in a window (DCGM_EXP_XID_ERRORS_COUNT)."""

from __future__ import annotations

from typing import Any

from fgo_common.faults import XID_DOUBLE_BIT_ECC, parse_entry, record_faults
from fgo_common.telemetry import XID_COUNT_WINDOW_SECONDS, faults_at, xid_counts

T0 = 1_780_000_000.0


def _xid(code: int, since: float, **extra: Any) -> dict[str, Any]:
    return {"kind": "xid", "code": code, "since": since, **extra}


def test_no_faults_no_counts() -> None:
    assert xid_counts([], T0) == {}
    assert xid_counts([{"kind": "thermal", "since": T0 - 1}], T0) == {}


def test_events_inside_the_window_count_those_outside_do_not() -> None:
    window = 300.0
    faults = [
        _xid(79, T0),  # at t: in
        _xid(79, T0 - 10),
        _xid(79, T0 - window),  # at the window's start: in
        _xid(79, T0 - window - 0.001),  # just before it: out
        _xid(79, T0 + 5),  # later than t (a clock ahead of ours): not yet
    ]
    assert xid_counts(faults, T0, window_s=window) == {79: 3}
    # The same record later: the oldest two have aged out, the later one has happened.
    assert xid_counts(faults, T0 + 100, window_s=window) == {79: 3}
    assert xid_counts(faults, T0 + window + 6, window_s=window) == {}


def test_several_codes_are_counted_separately() -> None:
    faults = [_xid(79, T0 - 1), _xid(13, T0 - 2), _xid(13, T0 - 3), _xid(94, T0 - 4000)]
    assert xid_counts(faults, T0) == {79: 1, 13: 2}


def test_a_declaration_is_one_event_at_its_start_whatever_its_duration() -> None:
    # Ten minutes long, begun two minutes ago: one event.
    long = _xid(79, T0 - 120, until=T0 + 480)
    assert xid_counts([long], T0) == {79: 1}
    # Still active but begun before the window: the event has left the count, while the last
    # XID (DCGM_FI_DEV_XID_ERRORS) still shows the code.
    old = _xid(79, T0 - XID_COUNT_WINDOW_SECONDS - 60, until=T0 + 480)
    assert xid_counts([old], T0) == {}
    assert faults_at([old], T0).xid_last == 79
    # Ended 30 s ago, still held by the record: its event happened in the window.
    short = _xid(48, T0 - 60, until=T0 - 30)
    assert xid_counts([short], T0) == {48: 1}


def test_the_double_bit_ecc_fault_counts_as_xid_48() -> None:
    spec = parse_entry(
        {"node": "n", "gpu": 0, "kind": "ecc", "count": 3, "doubleBit": 1},
        "faults[0]",
        "cm",
        created=T0 - 30,
    )
    assert xid_counts(record_faults(spec), T0) == {XID_DOUBLE_BIT_ECC: 1}
    single = parse_entry(
        {"node": "n", "gpu": 0, "kind": "ecc", "count": 3}, "faults[0]", "cm", created=T0 - 30
    )
    assert xid_counts(record_faults(single), T0) == {}


def test_declared_xid_counts_once_at_its_start() -> None:
    spec = parse_entry(
        {"node": "n", "gpu": 0, "kind": "xid", "code": 79, "start": "10s", "duration": "1h"},
        "faults[0]",
        "cm",
        created=T0 - 70,
    )
    faults = record_faults(spec)
    assert xid_counts(faults, T0) == {79: 1}
    assert xid_counts(faults, T0 - 70 + 10 + XID_COUNT_WINDOW_SECONDS + 1) == {}


def test_mig_device_events_count_for_the_gpu() -> None:
    faults = [_xid(79, T0 - 5, mig="MIG-a"), _xid(79, T0 - 6, mig="MIG-b"), _xid(79, T0 - 7)]
    assert xid_counts(faults, T0) == {79: 3}


def test_bad_or_unknown_entries_are_ignored() -> None:
    faults: list[Any] = [
        "not a mapping",
        {"kind": "xid", "code": 79},  # no since: when it happened is unknown
        {"kind": "xid", "code": "x", "since": T0 - 1},
        {"kind": "xid", "code": 0, "since": T0 - 1},
        {"kind": "xid", "code": 79, "since": "yesterday"},
        {"xid": 48, "since": T0 - 1},  # no kind: not an XID entry of the telemetry schema
        _xid(43, T0 - 1),
    ]
    assert xid_counts(faults, T0) == {43: 1}


def test_a_non_positive_window_counts_nothing() -> None:
    assert xid_counts([_xid(79, T0)], T0, window_s=0) == {}
