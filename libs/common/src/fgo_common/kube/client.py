"""API client from in-cluster config or a kubeconfig."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from kubernetes_asyncio import client, config

_SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class KubeConfigError(RuntimeError):
    """No usable API configuration: neither in a pod nor a loadable kubeconfig."""


def _in_cluster() -> bool:
    return _SA_TOKEN.exists() and "KUBERNETES_SERVICE_HOST" in os.environ


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def _load(kubeconfig: str | None, configuration: client.Configuration) -> None:
    # Its "Config not found" warning would print before logging is configured; the error below
    # says the same in its one line.
    logging.getLogger("kubernetes_asyncio.config.kube_config").setLevel(logging.ERROR)
    try:
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        elif _in_cluster():
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise KubeConfigError(
            "no Kubernetes API configuration: not in a pod with a service account "
            f"(KUBERNETES_SERVICE_HOST and {_SA_TOKEN}) and kubeconfig {where} is not usable "
            f"({_first_line(exc)}); set KUBECONFIG to a kubeconfig file"
        ) from None


async def check_kube_config(kubeconfig: str | None = None) -> None:
    """Raise :class:`KubeConfigError` unless :func:`api_client` would find a configuration."""
    await _load(kubeconfig, client.Configuration())


@asynccontextmanager
async def api_client(
    kubeconfig: str | None = None, *, qps_connections: int = 64
) -> AsyncIterator[client.ApiClient]:
    """An ApiClient for ``kubeconfig`` (path), else in-cluster config, else ``$KUBECONFIG``."""
    configuration = client.Configuration()
    await _load(kubeconfig, configuration)
    # Many concurrent writes per node at scale: the default pool of 4 would serialise them.
    configuration.connection_pool_maxsize = qps_connections
    async with client.ApiClient(configuration) as api:
        yield api
