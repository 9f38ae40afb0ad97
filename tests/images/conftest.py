"""The images of `make images`, started as runc containers (fgo_localcluster.oci). Every test
here is marked ``integration``: it needs root, buildah's store and runc (make node-tools)."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
