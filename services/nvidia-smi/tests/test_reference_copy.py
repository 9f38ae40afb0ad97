"""The repository's copy of the H100 capture must equal the team's ground truth."""

from __future__ import annotations

import pytest
from smi_testlib import REFERENCE_COPY, SHARED_REFERENCE


def test_copy_matches_shared_reference() -> None:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"{SHARED_REFERENCE} is not present beside this clone")
    shared = {p.name: p.read_bytes() for p in SHARED_REFERENCE.iterdir() if p.is_file()}
    copy = {p.name: p.read_bytes() for p in REFERENCE_COPY.iterdir() if p.is_file()}
    assert copy == shared
