"""Certificates and keys of the local control plane, made with ``cryptography``.

The layout follows kubeadm's so the flags read familiarly: one cluster CA signs the apiserver's
serving certificate and every client certificate (admin, scheduler, controller-manager, KWOK);
a separate front-proxy CA signs the apiserver's aggregation client, because the apiserver
refuses requestheader authentication from certificates issued by its main client CA's peers.
ECDSA P-256 keys keep generation instant on a 2-core machine; every Kubernetes component and
Python's ``ssl`` accept them. Material is created once per state directory and reused on every
``up`` so kubeconfigs handed out earlier stay valid.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough that nobody's local cluster expires mid-project; short enough to be a lifetime
# Go's TLS stack accepts without complaint.
_VALIDITY = dt.timedelta(days=3650)

# The first address of --service-cluster-ip-range is the in-cluster `kubernetes` Service.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"

APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IPS = ("127.0.0.1", KUBERNETES_SERVICE_IP)

FRONT_PROXY_CLIENT_CN = "front-proxy-client"

# The apiserver's client certificate towards kubelets (logs, exec, port-forward). The kubelets
# run with webhook authorization, and system:masters passes it (kubeadm's older layout).
APISERVER_KUBELET_CLIENT = "apiserver-kubelet-client"


@dataclass(frozen=True)
class ClientIdentity:
    """Who a client certificate says it is: user name (CN) and groups (O)."""

    file_stem: str
    common_name: str
    organizations: tuple[str, ...] = ()


# The scheduler and controller-manager identities are the ones the apiserver's bootstrap RBAC
# policy grants their roles to. KWOK writes status for every fake node and pod, which no
# bootstrap role covers, so it is a cluster admin here (as in kwokctl clusters).
ADMIN = ClientIdentity("admin", "kubernetes-admin", ("system:masters",))
SCHEDULER = ClientIdentity("scheduler", "system:kube-scheduler")
CONTROLLER_MANAGER = ClientIdentity("controller-manager", "system:kube-controller-manager")
KWOK = ClientIdentity("kwok", "kwok-controller", ("system:masters",))
CLIENT_IDENTITIES = (ADMIN, SCHEDULER, CONTROLLER_MANAGER, KWOK)


@dataclass(frozen=True)
class Pki:
    """Paths of every PEM file under ``<state>/pki``."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def front_proxy_ca_cert(self) -> Path:
        return self.root / "front-proxy-ca.crt"

    @property
    def front_proxy_ca_key(self) -> Path:
        return self.root / "front-proxy-ca.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    def cert(self, stem: str) -> Path:
        return self.root / f"{stem}.crt"

    def key(self, stem: str) -> Path:
        return self.root / f"{stem}.key"

    def complete(self) -> bool:
        needed = [self.ca_cert, self.ca_key, self.front_proxy_ca_cert, self.sa_key, self.sa_pub]
        for stem in (
            "apiserver",
            "front-proxy-client",
            "kube-scheduler-serving",
            "kube-controller-manager-serving",
            *(i.file_stem for i in CLIENT_IDENTITIES),
        ):
            needed += [self.cert(stem), self.key(stem)]
        return all(p.is_file() for p in needed)

    def ensure(self) -> bool:
        """Create whatever is missing; returns True if anything was (re)generated.

        A partial directory (an interrupted first ``up``) is regenerated as a whole, because
        leaf certificates signed by a CA that no longer exists would be useless.
        """
        if self.complete():
            return self._ensure_added_leaves()
        self.root.mkdir(parents=True, exist_ok=True)
        ca_key, ca_cert = _new_ca("fgo-local-ca")
        fp_key, fp_cert = _new_ca("fgo-local-front-proxy-ca")
        _write_key(self.ca_key, ca_key)
        _write_cert(self.ca_cert, ca_cert)
        _write_key(self.front_proxy_ca_key, fp_key)
        _write_cert(self.front_proxy_ca_cert, fp_cert)

        self._issue(
            "apiserver",
            ca_key,
            ca_cert,
            "kube-apiserver",
            (),
            dns=APISERVER_DNS_NAMES,
            ips=APISERVER_IPS,
            server=True,
        )
        self._issue("front-proxy-client", fp_key, fp_cert, FRONT_PROXY_CLIENT_CN, ())
        # Serving certificates for the scheduler's and controller-manager's health ports, so
        # our health checks verify them against our own CA instead of skipping verification.
        for stem in ("kube-scheduler-serving", "kube-controller-manager-serving"):
            self._issue(
                stem,
                ca_key,
                ca_cert,
                stem.removesuffix("-serving"),
                (),
                dns=("localhost",),
                ips=("127.0.0.1",),
                server=True,
            )
        for ident in CLIENT_IDENTITIES:
            self._issue(ident.file_stem, ca_key, ca_cert, ident.common_name, ident.organizations)
        self._issue_apiserver_kubelet_client(ca_key, ca_cert)

        sa_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(self.sa_key, sa_key)
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return True

    def load_ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.ca_key} is not an ECDSA key")
        return key, x509.load_pem_x509_certificate(self.ca_cert.read_bytes())

    def issue_leaf(
        self,
        path_stem: Path,
        cn: str,
        orgs: tuple[str, ...] = (),
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        server: bool = False,
    ) -> None:
        """A certificate + key signed by the cluster CA, written to ``<path_stem>.crt/.key``."""
        ca_key, ca_cert = self.load_ca()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_certificate(
            key.public_key(), ca_key, ca_cert, cn, orgs, dns=dns, ips=ips, server=server
        )
        path_stem.parent.mkdir(parents=True, exist_ok=True)
        _write_key(path_stem.with_suffix(".key"), key)
        _write_cert(path_stem.with_suffix(".crt"), cert)

    def _ensure_added_leaves(self) -> bool:
        """Leaves added after a state dir was first made: issued from the existing CA, so
        earlier kubeconfigs stay valid."""
        stem = APISERVER_KUBELET_CLIENT
        if self.cert(stem).is_file() and self.key(stem).is_file():
            return False
        self._issue_apiserver_kubelet_client(*self.load_ca())
        return True

    def _issue_apiserver_kubelet_client(
        self, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
    ) -> None:
        self._issue(
            APISERVER_KUBELET_CLIENT,
            ca_key,
            ca_cert,
            "kube-apiserver-kubelet-client",
            ("system:masters",),
        )

    def _issue(
        self,
        stem: str,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        cn: str,
        orgs: tuple[str, ...],
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        server: bool = False,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_certificate(
            key.public_key(), ca_key, ca_cert, cn, orgs, dns=dns, ips=ips, server=server
        )
        _write_key(self.key(stem), key)
        _write_cert(self.cert(stem), cert)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _new_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(cn)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_certificate(
    public_key: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    orgs: tuple[str, ...] = (),
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    server: bool = False,
) -> x509.Certificate:
    """A leaf certificate: client auth always, server auth (with SANs) when ``server``."""
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, orgs))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    # Keys are created owner-only from the start, never world-readable even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
