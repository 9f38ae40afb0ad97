"""Command lines of the five control-plane processes, as pure functions of the layout.

Everything listens on 127.0.0.1 only. Flags are kept close to what kubeadm/kwokctl use, minus
what a single-host cluster does not need (no cloud provider, no leader election). Real nodes
(``add-real-node``) reach the apiserver through :mod:`fgo_localcluster.apiforward`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fgo_localcluster.layout import Ports, StateLayout
from fgo_localcluster.pki import (
    APISERVER_KUBELET_CLIENT,
    FRONT_PROXY_CLIENT_CN,
    SERVICE_CLUSTER_IP_RANGE,
)

# The DRA features the simulator's later work relies on. Gates that are GA (and locked on) in
# the pinned release are no longer listed by `--help`; we only pass the ones that are, so the
# same list works across Kubernetes minors without "unrecognized feature gate" start failures.
WANTED_FEATURE_GATES = (
    "DRAAdminAccess",
    "DRAConsumableCapacity",
    "DRADeviceBindingConditions",
    "DRADeviceTaintRules",
    "DRADeviceTaints",
    "DRAExtendedResource",
    "DRAPartitionableDevices",
    "DRAPrioritizedList",
    "DRAResourceClaimDeviceStatus",
)

# resource.k8s.io/v1 is GA and on by default; the beta versions are served too so objects from
# older DRA drivers (and DeviceTaintRule, beta in v1beta2) can be created.
RUNTIME_CONFIG = "resource.k8s.io/v1beta1=true,resource.k8s.io/v1beta2=true"
_VERSION = re.compile(r"v1\.(?P<minor>\d+)\.")


def kubernetes_minor(version_text: str) -> int | None:
    """The minor of ``kube-apiserver --version`` output (``Kubernetes v1.31.14`` -> 31)."""
    match = _VERSION.search(version_text)
    return int(match["minor"]) if match else None


def default_runtime_config(minor: int | None) -> str:
    """What the apiserver of ``minor`` is started with: the DRA versions it can serve (1.33+:
    v1beta1 and v1beta2 next to v1 (GA in 1.34); 1.32: v1beta1; 1.31 and older: nothing, DRA is
    alpha there (v1alpha3) and this project does not speak it). An unknown version gets the
    current default."""
    if minor is None or minor >= 33:
        return RUNTIME_CONFIG
    if minor == 32:
        return "resource.k8s.io/v1beta1=true"
    return ""


_GATE_LINE = re.compile(
    r"^\s*(?:kube:)?(?P<name>[A-Za-z0-9]+)=true\|false \((?P<stage>[A-Z]+) - "
    r"default=(?P<default>true|false)\)"
)


@dataclass(frozen=True)
class FeatureGate:
    name: str
    stage: str
    default: bool


def parse_feature_gates(help_text: str) -> dict[str, FeatureGate]:
    """The gates a Kubernetes binary lists in ``--help`` (alpha, beta and deprecated ones)."""
    gates: dict[str, FeatureGate] = {}
    for line in help_text.splitlines():
        match = _GATE_LINE.match(line)
        if match:
            name = match["name"]
            gates[name] = FeatureGate(name, match["stage"], match["default"] == "true")
    return gates


def select_feature_gates(
    available: dict[str, FeatureGate], wanted: tuple[str, ...] = WANTED_FEATURE_GATES
) -> dict[str, bool]:
    """``wanted`` gates the binary still lets us set, all switched on."""
    return {name: True for name in wanted if name in available}


def feature_gates_flag(gates: dict[str, bool]) -> list[str]:
    if not gates:
        return []
    value = ",".join(f"{k}={'true' if v else 'false'}" for k, v in sorted(gates.items()))
    return [f"--feature-gates={value}"]


@dataclass(frozen=True)
class Health:
    """How to tell a component is up: URL plus whether it is TLS with our CA."""

    url: str
    tls: bool
    client_cert: bool = False


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    argv: list[str]
    health: Health
    env: dict[str, str] = field(default_factory=dict)


def etcd_spec(bin_dir: Path, layout: StateLayout, ports: Ports) -> ComponentSpec:
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    argv = [
        str(bin_dir / "etcd"),
        "--name=fgo",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=fgo={peer}",
        "--initial-cluster-state=new",
        # 4 GiB leaves room for thousands of KWOK nodes and their pods (NVSentinel hit the
        # default-sized quota only past 200k pods) while staying a bounded local footprint.
        "--quota-backend-bytes=4294967296",
        # A local, disposable cluster: skipping fsync makes every write several times faster on
        # a shared 2-core VM. A killed etcd process loses nothing (the page cache survives);
        # only a machine crash could lose recent writes.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]
    return ComponentSpec("etcd", argv, Health(f"{client}/health", tls=False))


def apiserver_spec(
    bin_dir: Path,
    layout: StateLayout,
    ports: Ports,
    gates: dict[str, bool],
    runtime_config: str = RUNTIME_CONFIG,
) -> ComponentSpec:
    pki = layout.pki
    argv = [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki.cert('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--allow-privileged=true",
        *([f"--runtime-config={runtime_config}"] if runtime_config else []),
        # Aggregated API servers (metrics-server, custom metrics) authenticate the apiserver's
        # proxied requests with this front-proxy client certificate.
        f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.cert('front-proxy-client')}",
        f"--proxy-client-key-file={pki.key('front-proxy-client')}",
        "--enable-aggregator-routing=true",
        # Real nodes (`add-real-node`): the apiserver authenticates to kubelets (webhook
        # authn/authz) and dials them by InternalIP, so node names never go to DNS. The
        # kubelets' serving certificates are not verified (no --kubelet-certificate-authority)
        # because KWOK's kubelet endpoint serves a self-signed one.
        f"--kubelet-client-certificate={pki.cert(APISERVER_KUBELET_CLIENT)}",
        f"--kubelet-client-key={pki.key(APISERVER_KUBELET_CLIENT)}",
        "--kubelet-preferred-address-types=InternalIP",
        *feature_gates_flag(gates),
    ]
    health = Health(f"https://127.0.0.1:{ports.apiserver}/readyz", tls=True, client_cert=True)
    return ComponentSpec("kube-apiserver", argv, health)


def controller_manager_spec(
    bin_dir: Path, layout: StateLayout, ports: Ports, gates: dict[str, bool]
) -> ComponentSpec:
    pki = layout.pki
    kubeconfig = layout.component_kubeconfig("kube-controller-manager")
    argv = [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        f"--tls-cert-file={pki.cert('kube-controller-manager-serving')}",
        f"--tls-private-key-file={pki.key('kube-controller-manager-serving')}",
        "--leader-elect=false",
        # Every default-on controller, which in 1.36 includes resourceclaim (claims from
        # templates) and the DRA device-taint eviction controller.
        "--controllers=*",
        f"--service-account-private-key-file={pki.sa_key}",
        "--use-service-account-credentials=true",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        # The default client limit (20 qps) throttles claim creation from templates at scale;
        # a simulator must not be the bottleneck of the scheduler tests it serves.
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        *feature_gates_flag(gates),
    ]
    health = Health(f"https://127.0.0.1:{ports.controller_manager}/healthz", tls=True)
    return ComponentSpec("kube-controller-manager", argv, health)


def scheduler_spec(
    bin_dir: Path, layout: StateLayout, ports: Ports, gates: dict[str, bool]
) -> ComponentSpec:
    pki = layout.pki
    kubeconfig = layout.component_kubeconfig("kube-scheduler")
    argv = [
        str(bin_dir / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.scheduler}",
        f"--tls-cert-file={pki.cert('kube-scheduler-serving')}",
        f"--tls-private-key-file={pki.key('kube-scheduler-serving')}",
        "--leader-elect=false",
        # Default 50 qps caps DRA binding (two writes per pod) near 25 pods/s; scheduler_perf
        # runs the scheduler with far higher limits, and so do we.
        "--kube-api-qps=1000",
        "--kube-api-burst=2000",
        *feature_gates_flag(gates),
    ]
    health = Health(f"https://127.0.0.1:{ports.scheduler}/healthz", tls=True)
    return ComponentSpec("kube-scheduler", argv, health)


def kwok_spec(
    bin_dir: Path, layout: StateLayout, ports: Ports, log_level: str = "WARN"
) -> ComponentSpec:
    argv = [
        str(bin_dir / "kwok"),
        # At INFO KWOK logs every lease renewal: 100 lines/s with 1000 nodes, drowning the rest.
        f"--v={log_level}",
        f"--kubeconfig={layout.component_kubeconfig('kwok')}",
        f"--config={layout.kwok_stages}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--server-address=127.0.0.1:{ports.kwok}",
        # Every fake node reports the loopback address as its InternalIP (KWOK's own
        # deployments likewise give all nodes the controller's IP); pods get IPs from KWOK's
        # fake pod CIDR.
        "--node-ip=127.0.0.1",
        # KWOK renews a Lease per node (as a kubelet would), so node status needs only a rare
        # heartbeat; 40s is the kubelet's default lease duration.
        "--node-lease-duration-seconds=40",
    ]
    # KWOK also reads ~/.kwok/kwok.yaml when it exists; a private work dir keeps a user's
    # personal KWOK configuration out of this cluster.
    env = {"KWOK_WORKDIR": str(layout.kwok_dir)}
    return ComponentSpec(
        "kwok", argv, Health(f"http://127.0.0.1:{ports.kwok}/healthz", tls=False), env
    )


def all_specs(
    bin_dir: Path,
    layout: StateLayout,
    ports: Ports,
    gates: dict[str, bool],
    kwok_log_level: str = "WARN",
    *,
    runtime_config: str = RUNTIME_CONFIG,
) -> dict[str, ComponentSpec]:
    """In start order."""
    specs = [
        etcd_spec(bin_dir, layout, ports),
        apiserver_spec(bin_dir, layout, ports, gates, runtime_config),
        controller_manager_spec(bin_dir, layout, ports, gates),
        scheduler_spec(bin_dir, layout, ports, gates),
        kwok_spec(bin_dir, layout, ports, kwok_log_level),
    ]
    return {s.name: s for s in specs}
