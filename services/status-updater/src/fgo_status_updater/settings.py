"""The status-updater's settings: one typed object from environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from fgo_common.kube.leader import LeaderElectionSettings
from fgo_common.runtime.settings import SettingsError, env_field
from fgo_common.topology import UtilizationRange

from fgo_status_updater.runai import parse_go_duration
from fgo_status_updater.usage import UtilizationFormatError, parse_utilization

DEFAULT_NAMESPACE = "gpu-operator"


@dataclass(frozen=True)
class Settings(LeaderElectionSettings):
    topology_cm_name: str = env_field(
        "TOPOLOGY_CM_NAME",
        "topology",
        "name of the cluster topology ConfigMap; per-node records are `<name>-<node>`",
    )
    topology_cm_namespace: str = env_field(
        "TOPOLOGY_CM_NAMESPACE",
        "",
        "namespace of the topology ConfigMaps (empty: the pod's own namespace, POD_NAMESPACE, "
        "else gpu-operator)",
    )
    pod_namespace: str = env_field(
        "POD_NAMESPACE", "", "the status-updater's own namespace (downward API)"
    )
    pod_name: str = env_field(
        "POD_NAME", "", "the status-updater's own pod name (downward API; Events about itself)"
    )
    reservation_namespace: str = env_field(
        "RESOURCE_RESERVATION_NAMESPACE",
        "runai-reservation",
        "namespace of Run:ai GPU reservation pods (fractional GPUs)",
    )
    prometheus_url: str = env_field(
        "PROMETHEUS_URL",
        "http://prometheus-operated.runai:9090",
        "Prometheus base URL for Knative request rates (empty: Knative polling off)",
    )
    knative_full_load_rps: float = env_field(
        "KNATIVE_FULL_UTILIZATION_REQUESTS_PER_SECOND",
        100.0,
        "request rate (req/s, per pod) shown as 100 % GPU utilisation; lower rates scale "
        "linearly (the reference's implicit scale: 1 req/s = 1 %)",
    )
    knative_poll_seconds: float = env_field(
        "KNATIVE_POLL_INTERVAL_SECONDS", 15.0, "how often Knative pods' request rates are read"
    )
    prometheus_timeout_seconds: float = env_field(
        "PROMETHEUS_TIMEOUT_SECONDS", 5.0, "timeout of one Prometheus query"
    )
    default_gpu_utilization: str = env_field(
        "DEFAULT_GPU_UTILIZATION",
        "50-90",
        'utilisation ("N" or "N-M" percent) of a running GPU pod that gives no hint '
        "(no annotation, no workload kind); the reference used 100",
    )
    disable_node_labeling: bool = env_field(
        "DISABLE_NODE_LABELING",
        False,
        "do not add/remove the nvidia.com/gpu.deploy.* labels on pool nodes",
    )
    node_resource_topology: bool = env_field(
        "NODE_RESOURCE_TOPOLOGY_ENABLED",
        False,
        "publish a NodeResourceTopology object (topology.node.k8s.io/v1alpha2) for every node "
        "of a pool with a numa block, its available resources following the pods (docs/numa.md)",
    )
    debounce_seconds: float = env_field(
        "DEBOUNCE_SECONDS",
        0.2,
        "how long a node's changes are collected before its record is written (batching)",
    )
    workers: int = env_field("WORKERS", 16, "nodes reconciled concurrently")
    mig_reconfigure_seconds: float = env_field(
        "MIG_RECONFIGURE_SECONDS",
        5.0,
        "how long nvidia.com/mig.config.state stays pending before a new MIG config applies",
    )
    resync_seconds: float = env_field(
        "RESYNC_SECONDS",
        600.0,
        "every node is re-checked this often even without events (0: never)",
    )
    optional_api_retry_seconds: float = env_field(
        "OPTIONAL_API_RETRY_SECONDS",
        60.0,
        "how often an absent optional API (ResourceClaims, Run:ai PodGroups) is looked for again",
    )
    runai_integration_enabled: bool = env_field(
        "RUNAI_INTEGRATION_ENABLED",
        False,
        "create the PrometheusRule fake-gpu-operator-kwok-dcgm (runai_dcgm_* recording rules) "
        "in RUNAI_NAMESPACE once it exists; when false, delete it at start (docs/runai.md)",
    )
    runai_integration_polling_interval: str = env_field(
        "RUNAI_INTEGRATION_POLLING_INTERVAL",
        "2m",
        "how often the Run:ai PrometheusRule is checked (a Go duration: 30s, 2m, 1h30m)",
    )
    runai_namespace: str = env_field(
        "RUNAI_NAMESPACE", "runai", "namespace of the Run:ai control plane (the rule's home)"
    )
    kubeconfig: str = env_field(
        "KUBECONFIG", "", "kubeconfig path (empty: in-cluster config, else ~/.kube/config)"
    )
    health_port: int = env_field("HEALTH_PORT", 8080, "port of /healthz, /readyz, /metrics")
    log_level: str = env_field(
        "LOG_LEVEL", "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )

    @property
    def namespace(self) -> str:
        return self.topology_cm_namespace or self.pod_namespace or DEFAULT_NAMESPACE

    @property
    def default_utilization(self) -> UtilizationRange:
        return parse_utilization(self.default_gpu_utilization)

    @property
    def runai_poll_seconds(self) -> float:
        return parse_go_duration(self.runai_integration_polling_interval)

    def validate(self) -> None:
        self.validate_leader_election()
        try:
            parse_utilization(self.default_gpu_utilization)
        except UtilizationFormatError as exc:
            raise SettingsError(f"DEFAULT_GPU_UTILIZATION: {exc}") from None
        try:
            poll = parse_go_duration(self.runai_integration_polling_interval)
        except ValueError as exc:
            raise SettingsError(f"RUNAI_INTEGRATION_POLLING_INTERVAL: {exc}") from None
        if poll <= 0:
            raise SettingsError(
                f"RUNAI_INTEGRATION_POLLING_INTERVAL={self.runai_integration_polling_interval}: "
                "must be greater than 0"
            )
        if not self.runai_namespace:
            raise SettingsError("RUNAI_NAMESPACE: must not be empty")
        positive = (
            ("KNATIVE_FULL_UTILIZATION_REQUESTS_PER_SECOND", self.knative_full_load_rps),
            ("KNATIVE_POLL_INTERVAL_SECONDS", self.knative_poll_seconds),
            ("PROMETHEUS_TIMEOUT_SECONDS", self.prometheus_timeout_seconds),
            ("WORKERS", self.workers),
            ("OPTIONAL_API_RETRY_SECONDS", self.optional_api_retry_seconds),
        )
        for name, value in positive:
            if value <= 0:
                raise SettingsError(f"{name}={value}: must be greater than 0")
        for name, value in (
            ("DEBOUNCE_SECONDS", self.debounce_seconds),
            ("MIG_RECONFIGURE_SECONDS", self.mig_reconfigure_seconds),
            ("RESYNC_SECONDS", self.resync_seconds),
        ):
            if value < 0:
                raise SettingsError(f"{name}={value}: must be 0 or more")
