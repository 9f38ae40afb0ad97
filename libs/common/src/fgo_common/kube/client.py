"""API client from in-cluster config or a kubeconfig."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from kubernetes_asyncio import client, config

_SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def _in_cluster() -> bool:
    return _SA_TOKEN.exists() and "KUBERNETES_SERVICE_HOST" in os.environ


@asynccontextmanager
async def api_client(
    kubeconfig: str | None = None, *, qps_connections: int = 64
) -> AsyncIterator[client.ApiClient]:
    """An ApiClient for ``kubeconfig`` (path), else in-cluster config, else ``$KUBECONFIG``."""
    configuration = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    elif _in_cluster():
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(client_configuration=configuration)
    # Many concurrent writes per node at scale: the default pool of 4 would serialise them.
    configuration.connection_pool_maxsize = qps_connections
    async with client.ApiClient(configuration) as api:
        yield api
