"""Kubeconfig files with the certificates embedded, so each file is usable on its own."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from fgo_localcluster.layout import write_atomic

CLUSTER_NAME = "fgo-local"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def render_kubeconfig(
    server: str, ca_cert: Path, client_cert: Path, client_key: Path, user: str
) -> dict[str, Any]:
    """One cluster, one user, one context (named like the cluster), current."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client_cert),
                    "client-key-data": _b64(client_key),
                },
            }
        ],
        "contexts": [
            {
                "name": CLUSTER_NAME,
                "context": {"cluster": CLUSTER_NAME, "user": user},
            }
        ],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> None:
    # Owner-only: the file carries a private key.
    write_atomic(path, yaml.safe_dump(config, sort_keys=False), mode=0o600)
