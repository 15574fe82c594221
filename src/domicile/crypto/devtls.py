"""`domicile init --dev-tls`: a local CA and a certificate for 127.0.0.1, ::1 and localhost.

EC P-256 keys (accepted by browsers and by Python's `ssl`). The CA's private key is never
written: once it has signed the server certificate it is dropped, so a browser told to trust
`ca.pem` trusts that one certificate and nothing a stolen CA key could sign later. The CA is
also name-constrained to the loopback names. An existing server key is never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEV_TLS_HOSTS", "DevTlsFiles", "issue_dev_certificate", "write_dev_tls"]

DEV_TLS_HOSTS = ("127.0.0.1", "::1", "localhost")
CA_DAYS = 825
# Browsers refuse server certificates valid for more than 398 days.
SERVER_DAYS = 397


@dataclass(frozen=True, slots=True)
class DevTlsFiles:
    ca: Path
    cert: Path
    key: Path


def _names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _permitted(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    permitted: list[x509.GeneralName] = []
    for host in hosts:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            permitted.append(x509.DNSName(host))
        else:
            permitted.append(x509.IPAddress(ipaddress.ip_network(address)))
    return permitted


def issue_dev_certificate(
    server_key: ec.EllipticCurvePrivateKey, hosts: tuple[str, ...] = DEV_TLS_HOSTS,
    *, now: datetime.datetime | None = None,
) -> tuple[x509.Certificate, x509.Certificate]:
    """A fresh CA certificate and a server certificate for `hosts` it signed, for
    `server_key`: (ca, server). The CA's key lives only in this call."""
    now = now or datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(minutes=5)  # a little clock skew between hosts
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Domicile development"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Domicile dev CA {now:%Y-%m-%d %H:%M:%S}"),
    ])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.NameConstraints(permitted_subtrees=_permitted(hosts),
                                            excluded_subtrees=None), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca, server


def write_dev_tls(directory: Path) -> DevTlsFiles:
    """`directory`/ca.pem, server.pem and server.key (0600). Files already there are kept:
    an existing key is reused to issue a missing certificate, never replaced."""
    files = DevTlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if files.key.exists():
        loaded = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{files.key} is not an EC private key")
        key = loaded
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    if files.cert.exists() and files.ca.exists():
        return files
    ca, server = issue_dev_certificate(key)
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    return files
