"""Fixtures for integration tests: components against the real local control plane.

The session's control plane is ``local_cluster`` from tests/conftest.py (shared with e2e).
Here: an async API client, a fresh namespace per test, and KWOK nodes that are removed after
the test. Every test in this directory is marked ``integration``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodes import api_client
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    unique_name,
)
from kubernetes_asyncio import client

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest_asyncio.fixture
async def kube(local_cluster: LocalCluster) -> AsyncIterator[client.ApiClient]:
    """kubernetes-asyncio ApiClient with the cluster admin's credentials."""
    async with api_client(local_cluster.kubeconfig) as api:
        yield api


@pytest_asyncio.fixture
async def namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A namespace named after the test, deleted afterwards (without waiting)."""
    name = unique_name(f"t-{request.node.name}")
    await create_namespace(kube, name)
    yield name
    await delete_namespace(kube, name)


@pytest_asyncio.fixture
async def kwok_nodes(
    kube: client.ApiClient, request: pytest.FixtureRequest
) -> AsyncIterator[KwokNodeFactory]:
    """``await kwok_nodes(2, extra_capacity={...})`` -> names of new Ready KWOK nodes."""
    factory = KwokNodeFactory(kube, unique_name(f"kwok-{request.node.name}", 40) + "-")
    yield factory
    await factory.cleanup()
