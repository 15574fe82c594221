"""`init --dev-tls`'s certificates: trusted for the loopback names only, the key private and
never replaced, the CA's key never written."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from domicile.crypto.devtls import DEV_TLS_HOSTS, DevTlsFiles, write_dev_tls
from domicile.server import TlsFiles, tls_context
from tests.tls_clients import handshake


@pytest.fixture
def files(tmp_path: Path) -> DevTlsFiles:
    return write_dev_tls(tmp_path / "tls")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def trusting(files: DevTlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(files.ca))


@pytest.mark.parametrize("host", DEV_TLS_HOSTS)
def test_a_client_trusting_the_ca_verifies_the_server_for_each_loopback_name(
        files: DevTlsFiles, host: str) -> None:
    done = handshake(tls_context(TlsFiles(files.cert, files.key)), trusting(files),
                     server_hostname=host)
    assert done.version == "TLSv1.3"


def test_the_certificate_is_not_valid_for_other_names(files: DevTlsFiles) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(tls_context(TlsFiles(files.cert, files.key)), trusting(files),
                  server_hostname="domicile.example")


def test_keys_are_p256_the_key_file_is_0600_and_the_ca_key_is_not_kept(
        files: DevTlsFiles) -> None:
    assert sorted(p.name for p in files.ca.parent.iterdir()) == [
        "ca.pem", "server.key", "server.pem"]
    assert files.key.stat().st_mode & 0o777 == 0o600
    for cert in (load(files.ca), load(files.cert)):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"


def test_the_ca_is_a_constrained_ca_and_the_server_certificate_a_short_lived_leaf(
        files: DevTlsFiles) -> None:
    ca, server = load(files.ca), load(files.cert)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert set(constraints.value.permitted_subtrees or ()) == {
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_network("127.0.0.1/32")),
        x509.IPAddress(ipaddress.ip_network("::1/128"))}
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=398)  # what browsers accept
    assert server.issuer == ca.subject


def test_files_already_there_are_kept(files: DevTlsFiles) -> None:
    before = {path: path.read_bytes() for path in (files.ca, files.cert, files.key)}
    write_dev_tls(files.ca.parent)
    assert {path: path.read_bytes() for path in before} == before


def test_an_existing_key_is_reused_never_replaced(files: DevTlsFiles) -> None:
    key = files.key.read_bytes()
    files.cert.unlink()
    write_dev_tls(files.ca.parent)
    assert files.key.read_bytes() == key
    private = serialization.load_pem_private_key(key, password=None)
    assert load(files.cert).public_key() == private.public_key()
    handshake(tls_context(TlsFiles(files.cert, files.key)), trusting(files),
              server_hostname="127.0.0.1")  # the new CA signed the new certificate
