"""Settings of the kwok-dra-plugin (environment variables, validated at start)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

from fgo_common.dradevices import (
    UNHEALTHY_POLICIES,
    DeviceNaming,
    UnhealthyPolicy,
    device_naming_setting,
)
from fgo_common.kube.leader import LeaderElectionSettings
from fgo_common.names import DRA, DraNames
from fgo_common.runtime.settings import SettingsError, env_field

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Settings(LeaderElectionSettings):
    topology_namespace: str = env_field(
        "TOPOLOGY_CM_NAMESPACE", "gpu-operator",
        "namespace of the per-node topology ConfigMaps (label `node-name`) written by the "
        "status-updater",
    )  # fmt: skip
    unhealthy_devices: str = env_field(
        "UNHEALTHY_DEVICES", "taint",
        "what an unhealthy GPU becomes: `taint` (NoSchedule device taint, as the NVIDIA driver "
        "does), `omit` (left out of the slice; for clusters without DRADeviceTaints) or "
        "`publish` (ignored); the same for GPUs held through an extended resource",
        choices=UNHEALTHY_POLICIES,
    )  # fmt: skip
    dra_driver_version: str = env_field(
        "DRA_DRIVER_VERSION", "0.4",
        "NVIDIA DRA driver release whose attribute names to publish",
        choices=tuple(DRA),
    )  # fmt: skip
    device_naming: str = device_naming_setting()
    instance: str = env_field(
        "INSTANCE", "kwok-dra-plugin",
        "value of the `fake-gpu-operator/publisher` label on our slices (and the field "
        "manager): installs with different values ignore each other's slices",
    )  # fmt: skip
    workers: int = env_field("WORKERS", 32, "nodes reconciled concurrently")
    resync_seconds: float = env_field(
        "RESYNC_SECONDS", 300.0, "period of the full re-check of every node (no writes if equal)"
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
        if not self.topology_namespace:
            raise SettingsError("TOPOLOGY_CM_NAMESPACE: must not be empty")
        self.validate_leader_election()

    @property
    def dra_names(self) -> DraNames:
        return DRA[self.dra_driver_version]

    @property
    def unhealthy_policy(self) -> UnhealthyPolicy:
        return cast("UnhealthyPolicy", self.unhealthy_devices)

    @property
    def naming(self) -> DeviceNaming:
        return cast("DeviceNaming", self.device_naming)
