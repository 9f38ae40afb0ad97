from __future__ import annotations

import pytest
from fgo_common.profiles import BUILTIN_CATALOG


@pytest.fixture
def h100_known() -> None:
    if BUILTIN_CATALOG.find("h100") is None:
        pytest.fail("the built-in catalog has no H100 profile")
