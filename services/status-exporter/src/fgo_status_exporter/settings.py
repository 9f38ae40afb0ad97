"""The status-exporter's settings: one typed object, loaded from the environment once."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fgo_common.kube.leader import LeaderElectionSettings
from fgo_common.names import DCGM_EXPORTER, DCGM_EXPORTER_DEFAULT_VERSION
from fgo_common.runtime.settings import SettingsError, env_field

MODE_NODE = "node"
MODE_KWOK = "kwok"


@dataclass(frozen=True)
class Settings(LeaderElectionSettings):
    mode: str = env_field(
        "EXPORTER_MODE",
        MODE_NODE,
        "`node`: serve the GPUs of `NODE_NAME` (DaemonSet); `kwok`: serve every KWOK GPU node "
        "(one Deployment)",
        choices=(MODE_NODE, MODE_KWOK),
    )
    node_name: str = env_field(
        "NODE_NAME", "", "node this pod serves (downward API `spec.nodeName`); node mode only"
    )
    namespace: str = env_field(
        "TOPOLOGY_CM_NAMESPACE", "gpu-operator", "namespace of the per-node topology ConfigMaps"
    )
    topology_cm_name: str = env_field(
        "TOPOLOGY_CM_NAME", "topology", "prefix of the per-node ConfigMaps (`<prefix>-<node>`)"
    )
    kubeconfig: str = env_field(
        "KUBECONFIG", "", "kubeconfig path; empty = in-cluster service account"
    )
    metrics_port: int = env_field(
        "METRICS_PORT", 9400, "port of the dcgm-exporter `/metrics` endpoint (all interfaces)"
    )
    health_port: int = env_field("HEALTH_PORT", 8080, "port of /healthz, /readyz and own /metrics")
    dcgm_version: str = env_field(
        "DCGM_EXPORTER_VERSION",
        DCGM_EXPORTER_DEFAULT_VERSION,
        "dcgm-exporter version whose names, HELP texts and label set to reproduce",
        choices=tuple(DCGM_EXPORTER),
    )
    hostname_label: str = env_field(
        "HOSTNAME_LABEL",
        "",
        "name of the host label (`Hostname` or `hostname`); empty = what the version uses",
        choices=("", "Hostname", "hostname"),
    )
    reference_hostname: bool = env_field(
        "REFERENCE_HOSTNAME",
        False,
        "node mode: host label value is the reference's `nvidia-dcgm-exporter-<6 hex of "
        "sha1(node)>` instead of the node name (kwok mode always uses the node name)",
    )
    no_hostname: bool = env_field(
        "DCGM_EXPORTER_NO_HOSTNAME", False, "omit the host label (dcgm-exporter's knob)"
    )
    empty_pod_labels: bool = env_field(
        "EMPTY_POD_LABELS",
        False,
        "print empty container/namespace/pod labels on GPUs no pod holds (older dcgm-exporter "
        "releases); default omits them, as current releases do",
    )
    replace_blanks_in_model_name: bool = env_field(
        "DCGM_EXPORTER_REPLACE_BLANKS_IN_MODEL_NAME",
        False,
        "`modelName` with blanks replaced by `-` (dcgm-exporter's knob)",
    )
    pod_uid_label: bool = env_field(
        "DCGM_EXPORTER_ENABLE_POD_UID", False, "add a `pod_uid` label to pod-attributed series"
    )
    extra_metrics: str = env_field(
        "EXPORTER_EXTRA_METRICS",
        "",
        "comma-separated DCGM fields to add to the default set (e.g. DCGM_FI_PROF_SM_ACTIVE, "
        "DCGM_FI_DEV_FB_TOTAL); see the README for the list",
    )
    clock_events_window_ms: int = env_field(
        "DCGM_EXPORTER_CLOCK_EVENTS_COUNT_WINDOW_SIZE",
        300000,
        "window (ms) of DCGM_EXP_CLOCK_EVENTS_COUNT (dcgm-exporter's knob and default)",
    )
    collect_interval_ms: int = env_field(
        "DCGM_EXPORTER_INTERVAL",
        30000,
        "DCGM's sampling interval (ms) that DCGM_EXP_CLOCK_EVENTS_COUNT counts samples of "
        "(dcgm-exporter's collect interval knob and default); values are computed at scrape time",
    )
    xid_count_window_ms: int = env_field(
        "DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE",
        300000,
        "window (ms) of DCGM_EXP_XID_ERRORS_COUNT (dcgm-exporter's knob and default)",
    )
    telemetry_seed: int = env_field(
        "FGO_SEED",
        0,
        "seed of the telemetry model's random parts (the same variable as nvidia-smi's)",
    )
    gfd_labels: bool = env_field(
        "GFD_LABELS_ENABLED", True, "write GPU feature discovery labels on the served nodes"
    )
    label_workers: int = env_field(
        "LABEL_WORKERS", 32, "concurrent node label patches (a read and a patch per new node)"
    )
    label_resync_seconds: float = env_field(
        "LABEL_RESYNC_SECONDS",
        600.0,
        "re-read served nodes and repair their labels this often (0 = never)",
    )
    runai_proc_dir: str = env_field(
        "RUNAI_PROC_DIR",
        "",
        "node mode: write Run:ai's per-pod GPU files (pod/<uid>/metrics/gpu/<idx>/"
        "utilization.sm, memory.allocated; events) for fractional pods under this directory, "
        "e.g. /runai/proc (empty: off; docs/runai.md)",
    )
    pod_resources_socket: str = env_field(
        "POD_RESOURCES_SOCKET",
        "",
        "node mode: serve a fake kubelet podresources v1 API (List, GetAllocatableResources, Get) "
        "for the node's simulated GPUs on this unix socket, e.g. "
        "/var/lib/fake-gpu-operator/pod-resources/kubelet.sock (empty: off; never the "
        "kubelet's own /var/lib/kubelet/pod-resources/kubelet.sock; docs/numa.md)",
    )
    sysfs_root: str = env_field(
        "SYSFS_ROOT",
        "",
        "node mode: write the node's NUMA layout as sysfs files (devices/system/node/node*/"
        "cpulist, online, possible, ...) under this directory, which stands for /sys, e.g. "
        "/var/lib/fake-gpu-operator/sys (empty: off)",
    )
    log_level: str = env_field(
        "LOG_LEVEL", "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )

    def validate(self) -> None:
        if self.mode == MODE_NODE and not self.node_name:
            raise SettingsError("NODE_NAME is required when EXPORTER_MODE=node")
        if self.leader_election and self.mode == MODE_NODE:
            raise SettingsError(
                "LEADER_ELECTION: only for EXPORTER_MODE=kwok (the node-mode exporter is alone "
                "on its node)"
            )
        self.validate_leader_election()
        if self.runai_proc_dir and self.mode != MODE_NODE:
            raise SettingsError(
                "RUNAI_PROC_DIR: only in EXPORTER_MODE=node (KWOK nodes have no filesystem)"
            )
        if self.runai_proc_dir and not self.runai_proc_dir.startswith("/"):
            raise SettingsError(f"RUNAI_PROC_DIR={self.runai_proc_dir}: must be an absolute path")
        for option, path in (
            ("POD_RESOURCES_SOCKET", self.pod_resources_socket),
            ("SYSFS_ROOT", self.sysfs_root),
        ):
            if path and self.mode != MODE_NODE:
                raise SettingsError(
                    f"{option}: only in EXPORTER_MODE=node (a KWOK node runs no agent that could "
                    "read it)"
                )
            if path and not path.startswith("/"):
                raise SettingsError(f"{option}={path}: must be an absolute path")
        if self.pod_resources_socket and _is_the_kubelets_socket(self.pod_resources_socket):
            raise SettingsError(
                f"POD_RESOURCES_SOCKET={self.pod_resources_socket}: that is the kubelet's own "
                "podresources socket; the fake one must not shadow it (e.g. "
                "/var/lib/fake-gpu-operator/pod-resources/kubelet.sock)"
            )
        if self.sysfs_root and os.path.normpath(self.sysfs_root) == "/sys":
            raise SettingsError(
                "SYSFS_ROOT=/sys: the host's sysfs; give a directory that stands for it (e.g. "
                "/var/lib/fake-gpu-operator/sys)"
            )
        if not 0 < self.metrics_port < 65536:
            raise SettingsError(f"METRICS_PORT={self.metrics_port}: port out of range")
        if self.label_workers < 1:
            raise SettingsError(f"LABEL_WORKERS={self.label_workers}: must be at least 1")
        for var, value in (
            ("DCGM_EXPORTER_CLOCK_EVENTS_COUNT_WINDOW_SIZE", self.clock_events_window_ms),
            ("DCGM_EXPORTER_INTERVAL", self.collect_interval_ms),
            ("DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE", self.xid_count_window_ms),
        ):
            if value <= 0:
                raise SettingsError(f"{var}={value}: must be a positive number of milliseconds")
        names = DCGM_EXPORTER[self.dcgm_version]
        known = {f.name for f in names.optional_counters}
        unknown = [m for m in self.extra_metric_names if m not in known]
        if unknown:
            raise SettingsError(
                f"EXPORTER_EXTRA_METRICS: unknown field(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(sorted(known))}"
            )

    @property
    def extra_metric_names(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.extra_metrics.split(",") if m.strip())


def _is_the_kubelets_socket(path: str) -> bool:
    # Imported only when a socket is configured: the stubs pull in gRPC (~15 MiB of RSS).
    from fgo_kubelet_api.podresources_v1 import POD_RESOURCES_SOCKET

    return os.path.normpath(path) == os.path.normpath(POD_RESOURCES_SOCKET) or (
        os.path.realpath(path) == os.path.realpath(POD_RESOURCES_SOCKET)
    )
