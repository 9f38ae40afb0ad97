"""Every option of the device plugin, read once from the environment into one typed object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fgo_common.kube.leader import LeaderElectionSettings
from fgo_common.nodestate import DEFAULT_STATE_DIR, SMI_CONTAINER_PATHS
from fgo_common.runtime.settings import SettingsError, env_field

MODE_NODE = "node"
MODE_KWOK = "kwok"
MIG_STRATEGIES = ("none", "single", "mixed")
DEFAULT_TOPOLOGY_NAMESPACE = "gpu-operator"


@dataclass(frozen=True)
class Settings(LeaderElectionSettings):
    mode: str = env_field(
        "DEVICE_PLUGIN_MODE",
        MODE_NODE,
        "node: kubelet device plugin on this node (DaemonSet); kwok: keep the GPU capacity of "
        "every KWOK node's status equal to its topology (one central Deployment)",
        choices=(MODE_NODE, MODE_KWOK),
    )
    node_name: str = env_field(
        "NODE_NAME", "", "node this agent serves (downward API spec.nodeName); node mode only"
    )
    pod_namespace: str = env_field(
        "POD_NAMESPACE", "", "namespace of this pod (downward API); default topology namespace"
    )
    topology_namespace: str = env_field(
        "TOPOLOGY_CM_NAMESPACE",
        "",
        f"namespace of the topology ConfigMaps (default: POD_NAMESPACE, else "
        f"{DEFAULT_TOPOLOGY_NAMESPACE})",
    )
    topology_name: str = env_field(
        "TOPOLOGY_CM_NAME", "topology", "prefix of the per-node ConfigMaps `<prefix>-<node>`"
    )
    kubeconfig: str = env_field(
        "KUBECONFIG", "", "kubeconfig file (empty: in-cluster config, else ~/.kube/config)"
    )
    mig_strategy: str = env_field(
        "MIG_STRATEGY",
        "",
        "none, single or mixed; empty: the migStrategy of the node's topology record",
        choices=("", *MIG_STRATEGIES),
    )
    device_plugin_dir: str = env_field(
        "DEVICE_PLUGIN_DIR",
        "/var/lib/kubelet/device-plugins",
        "the kubelet's device-plugins directory (kubelet.sock and our sockets)",
    )
    kubelet_poll_interval_seconds: float = env_field(
        "KUBELET_POLL_INTERVAL_SECONDS",
        1.0,
        "how often kubelet.sock and our sockets are checked (kubelet restart, wiped directory)",
    )
    visible_devices_env_name: str = env_field(
        "VISIBLE_DEVICES_ENV_NAME",
        "NVIDIA_VISIBLE_DEVICES",
        "container variable carrying the allocated device UUIDs (e.g. FGO_VISIBLE_DEVICES on "
        "nodes that also run the real NVIDIA container runtime)",
    )
    nvidia_smi_host_path: str = env_field(
        "NVIDIA_SMI_HOST_PATH",
        "/var/lib/fake-gpu-operator/bin/nvidia-smi",
        "host path of the fake nvidia-smi mounted into GPU containers (empty: no mount)",
    )
    nvidia_smi_container_path: str = env_field(
        "NVIDIA_SMI_CONTAINER_PATH",
        ",".join(SMI_CONTAINER_PATHS),
        "where GPU containers find nvidia-smi (comma-separated: one mount each; /bin too for "
        "images without a merged /usr)",
    )
    nvidia_smi_bundle_host_dir: str = env_field(
        "NVIDIA_SMI_BUNDLE_HOST_DIR",
        "/var/lib/fake-gpu-operator/nvidia-smi",
        "host directory of the nvidia-smi bundle the launcher executes (empty: no mount)",
    )
    nvidia_smi_bundle_container_dir: str = env_field(
        "NVIDIA_SMI_BUNDLE_CONTAINER_DIR",
        "/usr/local/fake-gpu",
        "where GPU containers see the bundle (exported to them as FGO_NVIDIA_SMI_HOME)",
    )
    seed: int = env_field(
        "FGO_SEED",
        0,
        "telemetry seed passed to GPU containers (must equal the status-exporter's)",
    )
    state_dir: str = env_field(
        "STATE_DIR",
        "/var/lib/fake-gpu-operator/state",
        "directory (as this container sees it) the node-local topology snapshot is written to",
    )
    state_host_dir: str = env_field(
        "STATE_HOST_DIR",
        "",
        "host path of STATE_DIR, mounted read-only into GPU containers (empty: same as STATE_DIR)",
    )
    state_container_dir: str = env_field(
        "STATE_CONTAINER_DIR",
        DEFAULT_STATE_DIR,
        "where GPU containers see the snapshot (exported to them as FGO_STATE_DIR)",
    )
    pod_resources_socket: str = env_field(
        "POD_RESOURCES_SOCKET",
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        "the kubelet's pod resources socket, read to learn which GPUs a pod got (empty: off)",
    )
    pod_resources_interval_seconds: float = env_field(
        "POD_RESOURCES_INTERVAL_SECONDS",
        30.0,
        "period of the pod resources resync (it also runs shortly after every Allocate)",
    )
    dra_shares_gpus: bool = env_field(
        "DRA_SHARES_GPUS",
        False,
        "kwok mode: the kwok-dra-plugin publishes the same GPUs as DRA devices, so GPUs held "
        "through DRA claims are left out of allocatable nvidia.com/gpu and nvidia.com/mig-*",
    )
    kwok_workers: int = env_field("KWOK_WORKERS", 32, "concurrent node status patches in kwok mode")
    kwok_resync_seconds: float = env_field(
        "KWOK_RESYNC_SECONDS",
        300.0,
        "kwok mode: period of a full pass over the nodes, repairing capacity edited by hand "
        "(0: off; failed patches are retried with back-off regardless)",
    )
    health_port: int = env_field("HEALTH_PORT", 8080, "port of /healthz, /readyz, /metrics")
    log_level: str = env_field(
        "LOG_LEVEL", "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )

    def validate(self) -> None:
        if self.leader_election and self.mode == MODE_NODE:
            raise SettingsError(
                "LEADER_ELECTION: only for DEVICE_PLUGIN_MODE=kwok (one central controller); "
                "a node agent is alone on its node"
            )
        self.validate_leader_election()
        if self.mode == MODE_NODE and not self.node_name:
            raise SettingsError("NODE_NAME is required when DEVICE_PLUGIN_MODE=node")
        if self.kubelet_poll_interval_seconds <= 0:
            raise SettingsError("KUBELET_POLL_INTERVAL_SECONDS must be > 0")
        if self.pod_resources_interval_seconds <= 0:
            raise SettingsError("POD_RESOURCES_INTERVAL_SECONDS must be > 0")
        if self.kwok_workers < 1:
            raise SettingsError("KWOK_WORKERS must be >= 1")
        if self.kwok_resync_seconds < 0:
            raise SettingsError("KWOK_RESYNC_SECONDS must be >= 0")
        if not self.visible_devices_env_name.replace("_", "").isalnum():
            raise SettingsError(
                f"VISIBLE_DEVICES_ENV_NAME={self.visible_devices_env_name!r}: "
                "expected an environment variable name ([A-Za-z0-9_])"
            )

    @property
    def effective_topology_namespace(self) -> str:
        return self.topology_namespace or self.pod_namespace or DEFAULT_TOPOLOGY_NAMESPACE

    @property
    def effective_state_host_dir(self) -> str:
        return self.state_host_dir or self.state_dir

    @property
    def plugin_dir(self) -> Path:
        return Path(self.device_plugin_dir)
