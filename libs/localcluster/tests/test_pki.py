from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fgo_localcluster.pki import CLIENT_IDENTITIES, Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("pki"))
    assert p.ensure() is True
    return p


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):
        return False
    return True


def test_apiserver_certificate_covers_every_name_clients_use(pki: Pki) -> None:
    cert = _cert(pki.cert("apiserver"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) >= {
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    }
    assert set(san.get_values_for_type(x509.IPAddress)) >= {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.96.0.1"),
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert _signed_by(cert, _cert(pki.ca_cert))


def test_client_certificates_carry_user_and_groups(pki: Pki) -> None:
    ca = _cert(pki.ca_cert)
    for ident in CLIENT_IDENTITIES:
        cert = _cert(pki.cert(ident.file_stem))
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        assert cn == ident.common_name
        assert tuple(orgs) == ident.organizations
        assert _signed_by(cert, ca)
    admin = _cert(pki.cert("admin"))
    assert [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "system:masters"
    ]


def test_front_proxy_client_is_signed_by_the_separate_front_proxy_ca(pki: Pki) -> None:
    client = _cert(pki.cert("front-proxy-client"))
    assert _signed_by(client, _cert(pki.front_proxy_ca_cert))
    assert not _signed_by(client, _cert(pki.ca_cert))


def test_keys_are_owner_only_and_service_account_key_pair_matches(pki: Pki) -> None:
    from cryptography.hazmat.primitives import serialization

    for key in pki.root.glob("*.key"):
        assert key.stat().st_mode & 0o077 == 0, key
    private = serialization.load_pem_private_key(pki.sa_key.read_bytes(), None)
    public = serialization.load_pem_public_key(pki.sa_pub.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert private.public_key().public_numbers() == public.public_numbers()


def test_ensure_keeps_existing_material_and_repairs_a_partial_dir(tmp_path: Path) -> None:
    p = Pki(tmp_path / "pki")
    assert p.ensure() is True
    ca_before = p.ca_cert.read_bytes()
    assert p.ensure() is False
    assert p.ca_cert.read_bytes() == ca_before
    p.cert("kwok").unlink()
    assert p.ensure() is True
    assert p.complete()
    assert _signed_by(_cert(p.cert("kwok")), _cert(p.ca_cert))


def test_apiserver_kubelet_client_is_added_to_an_older_state_dir(tmp_path: Path) -> None:
    from fgo_localcluster.pki import APISERVER_KUBELET_CLIENT

    p = Pki(tmp_path)
    assert p.ensure() is True
    ca_before = p.ca_cert.read_bytes()
    p.cert(APISERVER_KUBELET_CLIENT).unlink()
    assert p.ensure() is True  # only the missing leaf, from the same CA
    assert p.ca_cert.read_bytes() == ca_before
    cert = _cert(p.cert(APISERVER_KUBELET_CLIENT))
    assert _signed_by(cert, _cert(p.ca_cert))
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:masters"
    )
    assert p.ensure() is False


def test_issue_leaf_names_the_node(tmp_path: Path) -> None:
    p = Pki(tmp_path / "pki")
    p.ensure()
    p.issue_leaf(
        tmp_path / "node" / "kubelet-serving",
        "system:node:n1",
        ("system:nodes",),
        ips=("10.250.0.2",),
        server=True,
    )
    cert = _cert(tmp_path / "node" / "kubelet-serving.crt")
    assert _signed_by(cert, _cert(p.ca_cert))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.250.0.2") in sans.get_values_for_type(x509.IPAddress)
