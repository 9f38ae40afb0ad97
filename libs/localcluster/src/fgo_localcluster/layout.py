"""Where everything of one local cluster lives, and the small record that survives restarts.

One state directory holds one cluster: PKI, kubeconfigs, etcd data, KWOK stages, pid files and
per-component logs. ``cluster.json`` remembers the ports chosen at the first ``up`` so the
kubeconfig handed to users keeps working across ``down``/``up``; ports are re-chosen only when
one of them is taken by something else by then.
"""

from __future__ import annotations

import json
import os
import random
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fgo_localcluster.pki import Pki

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


@dataclass
class Ports:
    """Loopback ports of one cluster; 0 means "pick a free one at start"."""

    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0
    kwok: int = 0

    def unset(self) -> list[str]:
        return [name for name, value in asdict(self).items() if value == 0]

    def values(self) -> list[int]:
        return [v for v in asdict(self).values() if v]


@dataclass
class ClusterRecord:
    """Contents of ``cluster.json``."""

    ports: Ports = field(default_factory=Ports)
    # Feature gates chosen from the apiserver's --help, cached per binary (size + mtime).
    feature_gates: dict[str, bool] = field(default_factory=dict)
    feature_gates_key: str = ""
    # kube-apiserver --runtime-config (components.default_runtime_config or FGO_RUNTIME_CONFIG)
    # and the apiserver's minor version, both chosen at the last fresh start.
    runtime_config: str | None = None
    kubernetes_minor: int | None = None

    @classmethod
    def load(cls, path: Path) -> ClusterRecord:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return cls()
        return cls(
            ports=Ports(
                **{
                    k: int(v)
                    for k, v in raw.get("ports", {}).items()
                    if k in Ports.__dataclass_fields__
                }
            ),
            feature_gates={str(k): bool(v) for k, v in raw.get("feature_gates", {}).items()},
            feature_gates_key=str(raw.get("feature_gates_key", "")),
            runtime_config=raw.get("runtime_config"),
            kubernetes_minor=raw.get("kubernetes_minor"),
        )

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class StateLayout:
    """Paths under one state directory."""

    root: Path

    @property
    def record(self) -> Path:
        return self.root / "cluster.json"

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig users and tests point KUBECONFIG at."""
        return self.root / "kubeconfig"

    def component_kubeconfig(self, component: str) -> Path:
        return self.root / "kubeconfigs" / f"{component}.yaml"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def kwok_dir(self) -> Path:
        return self.root / "kwok"

    @property
    def kwok_stages(self) -> Path:
        return self.kwok_dir / "stages.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def pid_file(self, component: str) -> Path:
        return self.run / f"{component}.pid"


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write temp -> fsync -> rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR matches what the Go servers do, so TIME_WAIT leftovers of our own
        # previous run do not count as "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (and of bind to 0)."""
    try:
        low, high = (int(v) for v in _EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def fresh_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A free loopback port outside the ephemeral range.

    A listen port from the ephemeral range (what binding to port 0 gives) can be taken, while
    its server restarts, by the local end of any outgoing connection on the machine, and the
    restart then fails with "address already in use". Ports below the range are only ever
    taken by explicit binds.
    """
    low, high = ephemeral_port_range()
    candidates = range(10000, low) if low > 11000 else range(high + 1, 65536)
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.choice(candidates)
        if port not in taken and port_is_free(port):
            return port
    raise OSError(f"no free loopback port outside the ephemeral range {low}-{high}")


def choose_ports(wanted: Ports, previous: Ports) -> Ports:
    """Explicit ports win; otherwise reuse the previous run's port if free, else a fresh one
    from outside the ephemeral range (:func:`fresh_port`)."""
    chosen: dict[str, int] = {}
    for name in Ports.__dataclass_fields__:
        explicit = getattr(wanted, name)
        old = getattr(previous, name)
        if explicit:
            chosen[name] = explicit
        elif old and old not in chosen.values() and port_is_free(old):
            chosen[name] = old
        else:
            chosen[name] = fresh_port(set(chosen.values()))
    return Ports(**chosen)
