"""Settings of the compute-domain-controller (environment variables, validated at start)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fgo_common.kube.leader import LeaderElectionSettings
from fgo_common.runtime.settings import SettingsError, env_field

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Settings(LeaderElectionSettings):
    kwok_channels: bool = env_field(
        "KWOK_CHANNELS", True,
        "publish a channel-0 ResourceSlice (driver compute-domain.nvidia.com) for every KWOK "
        "node, which has no kubelet plugin to publish it",
    )  # fmt: skip
    instance: str = env_field(
        "INSTANCE", "compute-domain-controller",
        "value of the `fake-gpu-operator/publisher` label on our slices (and the field manager)",
    )  # fmt: skip
    workers: int = env_field("WORKERS", 8, "ComputeDomains (and nodes) reconciled concurrently")
    resync_seconds: float = env_field(
        "RESYNC_SECONDS", 300.0, "period of the full re-check of every ComputeDomain and node"
    )
    kubeconfig: str = env_field(
        "KUBECONFIG", "", "kubeconfig path (empty: in-cluster config, else ~/.kube/config)"
    )
    health_port: int = env_field("HEALTH_PORT", 8080, "port of /healthz, /readyz, /metrics")
    log_level: str = env_field("LOG_LEVEL", "INFO", "log level", choices=LOG_LEVELS)

    def validate(self) -> None:
        if not 1 <= self.workers <= 64:
            raise SettingsError(f"WORKERS={self.workers}: must be between 1 and 64")
        if self.resync_seconds <= 0:
            raise SettingsError(f"RESYNC_SECONDS={self.resync_seconds}: must be positive")
        if not _LABEL_VALUE.match(self.instance):
            raise SettingsError(f"INSTANCE={self.instance!r}: must be a label value (1-63 chars)")
        self.validate_leader_election()
