"""Compare our output with a capture: layout exact, volatile values by pattern.

Volatile values (time stamps, temperatures, power, clocks, serials derived from the UUID) are
named per capture: by a literal substring of the capture (``literals``), or - for key/value
reports - by the path of the key (``keys``: "Clocks/SM", "gpu/clocks/sm_clock"). A masked value
must still have the capture's shape (digits for digits, unit for unit); fixed-width tables must
also keep every line's exact length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DATE = r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d \d{4}"


def shape(value: str) -> str:
    """Regex matching ``value`` with every number free: "131.52 W" -> "\\d+\\.\\d+ W"."""
    if re.fullmatch(DATE, value):
        return DATE
    if re.fullmatch(r"0x[0-9a-f]+", value):
        return r"0x[0-9a-f]+"
    return re.sub(r"\\-?\d+|\d+", r"-?\\d+", re.escape(value))


def _diff(actual: list[str], expected: list[str]) -> str:
    import difflib

    return "\n".join(difflib.unified_diff(expected, actual, "capture", "ours", lineterm=""))


def assert_lines(
    actual: str,
    expected: str,
    *,
    literals: Iterable[tuple[str, str]] = (),
    fixed_width: bool = False,
) -> None:
    """Line-by-line match; each (literal, regex) in ``literals`` frees that part of the capture."""
    exp, act = expected.split("\n"), actual.split("\n")
    assert len(act) == len(exp), "line count differs:\n" + _diff(act, exp)
    pairs = list(literals)
    for number, (e, a) in enumerate(zip(exp, act, strict=True), 1):
        pattern = re.escape(e)
        for literal, regex in pairs:
            pattern = pattern.replace(re.escape(literal), regex)
        assert re.fullmatch(pattern, a), f"line {number}:\n ours:    {a!r}\n capture: {e!r}"
        if fixed_width:
            assert len(a) == len(e), f"line {number} width {len(a)} != {len(e)}: {a!r}"


def assert_q_text(actual: str, expected: str, volatile: set[str]) -> None:
    """``-q`` report: keys (indent-derived paths) and label padding exact; values exact unless
    the key path is in ``volatile`` (then by shape)."""
    exp, act = expected.split("\n"), actual.split("\n")
    assert len(act) == len(exp), "line count differs:\n" + _diff(act, exp)
    stack: list[tuple[int, str]] = []
    for number, (e, a) in enumerate(zip(exp, act, strict=True), 1):
        label, sep, value = e.partition(" : ")
        indent = len(label) - len(label.lstrip(" "))
        name = label.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([s for _, s in stack[1:]] + [name]) if stack else name
        if not sep:
            stack.append((indent, name))
            assert a == e, f"line {number}: {a!r} != {e!r}"
            continue
        pattern = re.escape(label + sep) + (shape(value) if path in volatile else re.escape(value))
        assert re.fullmatch(pattern, a), (
            f"line {number} ({path}):\n ours:    {a!r}\n capture: {e!r}"
        )


_TAG = re.compile(r"^(\t*)<([A-Za-z0-9_]+)(?: [^>]*)?>(.*)</\2>$")


def assert_xml(actual: str, expected: str, volatile: set[str]) -> None:
    """``-q -x``: indentation, tags and order exact; leaf values exact unless their tag path
    (``gpu/clocks/sm_clock``) is in ``volatile``."""
    exp, act = expected.split("\n"), actual.split("\n")
    assert len(act) == len(exp), "line count differs:\n" + _diff(act, exp)
    stack: list[str] = []
    for number, (e, a) in enumerate(zip(exp, act, strict=True), 1):
        leaf = _TAG.match(e)
        if leaf:
            tabs, tag, value = leaf.groups()
            path = "/".join([*stack[1:], tag])
            regex = shape(value) if path in volatile else re.escape(value)
            pattern = re.escape(f"{tabs}<{tag}>") + regex + re.escape(f"</{tag}>")
            assert re.fullmatch(pattern, a), f"line {number} ({path}):\n ours: {a!r}\n cap: {e!r}"
            continue
        assert a == e, f"line {number}:\n ours:    {a!r}\n capture: {e!r}"
        opened = re.match(r"^\t*<([A-Za-z0-9_]+)[ >]", e)
        if opened and not e.strip().startswith("</") and not e.strip().endswith("/>"):
            stack.append(opened.group(1))
        elif e.strip().startswith("</"):
            stack.pop()
