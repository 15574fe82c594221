"""G6 inbound: Domicile's server context (`server.tls_context`) against real handshakes, each
refusal next to a control server that does accept the same client on this machine; and the
rule that plain HTTP is served on loopback addresses only (`server.check_plain_http`)."""

from __future__ import annotations

import socket
import ssl
import tomllib
from pathlib import Path

import pytest
import trustme

from domicile.config import Settings, parse_settings
from domicile.crypto.devtls import DevTlsFiles, write_dev_tls
from domicile.errors import ConfigError, InvalidInput
from domicile.server import TlsFiles, check_plain_http, serve, tls_context, tls_files
from domicile.site import render_config
from tests.tls_clients import CBC_SUITE, handshake, lax_server, old_client, tls12_client

OLD_VERSIONS = [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]
# TLS 1.2 suites refused on an EC certificate: no AEAD (CBC with SHA-1, SHA-256, SHA-384).
WEAK_EC_SUITES = ["ECDHE-ECDSA-AES128-SHA", CBC_SUITE, "ECDHE-ECDSA-AES256-SHA384"]
# ... and on an RSA certificate: no forward secrecy (RSA key exchange), even with AES-GCM.
WEAK_RSA_SUITES = ["AES128-GCM-SHA256", "AES256-SHA", "ECDHE-RSA-AES128-SHA256"]
STRONG_EC_SUITES = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                    "ECDHE-ECDSA-CHACHA20-POLY1305"]


@pytest.fixture
def dev_tls(tmp_path: Path) -> DevTlsFiles:
    return write_dev_tls(tmp_path / "tls")


@pytest.fixture
def ec_files(dev_tls: DevTlsFiles) -> TlsFiles:
    return TlsFiles(dev_tls.cert, dev_tls.key)


@pytest.fixture
def rsa_files(tmp_path: Path) -> TlsFiles:
    pem = tmp_path / "rsa.pem"
    trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        "127.0.0.1", key_type=trustme.KeyType.RSA).private_key_and_cert_chain_pem.write_to_path(
        pem)
    return TlsFiles(pem, pem)


def lax(files: TlsFiles) -> ssl.SSLContext:
    return lax_server(str(files.cert), str(files.key))


# -- versions -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", OLD_VERSIONS, ids=lambda v: v.name)
def test_control_a_lax_server_negotiates_tls_1_0_and_1_1_here(ec_files: TlsFiles,
                                                              version: ssl.TLSVersion) -> None:
    done = handshake(lax(ec_files), old_client(version))
    assert done.version == {ssl.TLSVersion.TLSv1: "TLSv1",
                            ssl.TLSVersion.TLSv1_1: "TLSv1.1"}[version]


@pytest.mark.parametrize("version", OLD_VERSIONS, ids=lambda v: v.name)
def test_domicile_refuses_tls_1_0_and_1_1(ec_files: TlsFiles, version: ssl.TLSVersion) -> None:
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
        handshake(tls_context(ec_files), old_client(version))


def test_domicile_speaks_tls_1_3_to_a_verifying_client_without_compression(
        dev_tls: DevTlsFiles) -> None:
    client = ssl.create_default_context(cafile=str(dev_tls.ca))
    done = handshake(tls_context(TlsFiles(dev_tls.cert, dev_tls.key)), client,
                     server_hostname="localhost")
    assert done.version == "TLSv1.3" and done.compression is None


# -- cipher suites ------------------------------------------------------------------------


@pytest.mark.parametrize("suite", WEAK_EC_SUITES)
def test_weak_tls_1_2_suites_are_refused_on_an_ec_certificate(ec_files: TlsFiles,
                                                              suite: str) -> None:
    assert handshake(lax(ec_files), tls12_client(suite)).cipher == suite  # the control
    with pytest.raises(ssl.SSLError, match=r"HANDSHAKE_FAILURE|NO_SHARED_CIPHER"):
        handshake(tls_context(ec_files), tls12_client(suite))


@pytest.mark.parametrize("suite", WEAK_RSA_SUITES)
def test_weak_tls_1_2_suites_are_refused_on_an_rsa_certificate(rsa_files: TlsFiles,
                                                               suite: str) -> None:
    assert handshake(lax(rsa_files), tls12_client(suite)).cipher == suite  # the control
    with pytest.raises(ssl.SSLError, match=r"HANDSHAKE_FAILURE|NO_SHARED_CIPHER"):
        handshake(tls_context(rsa_files), tls12_client(suite))


def test_python_defaults_would_accept_a_cbc_suite_so_the_refusal_is_domicile_s(
        ec_files: TlsFiles) -> None:
    """Why the refusal above guards Domicile's own cipher string: a context left at Python's
    (and uvicorn's) defaults negotiates this suite."""
    defaults = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    defaults.load_cert_chain(ec_files.cert, ec_files.key)
    assert handshake(defaults, tls12_client(CBC_SUITE)).cipher == CBC_SUITE


@pytest.mark.parametrize("suite", STRONG_EC_SUITES)
def test_strong_tls_1_2_suites_are_accepted(ec_files: TlsFiles, suite: str) -> None:
    done = handshake(tls_context(ec_files), tls12_client(suite))
    assert (done.version, done.cipher) == ("TLSv1.2", suite)


def test_the_context_disables_compression_and_renegotiation(ec_files: TlsFiles) -> None:
    context = tls_context(ec_files)
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_an_unusable_certificate_is_refused_naming_the_file(tmp_path: Path,
                                                            ec_files: TlsFiles) -> None:
    with pytest.raises(InvalidInput, match=r"missing\.pem"):
        tls_context(TlsFiles(tmp_path / "missing.pem", ec_files.key))
    with pytest.raises(InvalidInput, match="cannot be used"):
        tls_context(TlsFiles(ec_files.cert, ec_files.cert))  # a certificate is not a key


# -- plain HTTP only on loopback ----------------------------------------------------------


def settings_listening(tmp_path: Path, eu: str, us: str) -> Settings:
    body = render_config(8400).replace('listen = "127.0.0.1:8400"', f'listen = "{eu}"')
    body = body.replace('listen = "127.0.0.1:8401"', f'listen = "{us}"')
    return parse_settings(tomllib.loads(body), config_path=tmp_path / "domicile.toml",
                          check_files=False)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "[::1]", "localhost"])
def test_plain_http_is_allowed_on_loopback(tmp_path: Path, address: str) -> None:
    settings = settings_listening(tmp_path, f"{address}:8400", f"{address}:8401")
    check_plain_http(settings, ["eu", "us"], tls=None, insecure_http=False)


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.20", "[::]", "[2001:db8::1]",
                                     "domicile.example"])
def test_plain_http_elsewhere_is_refused_naming_the_region_and_the_ways_out(
        tmp_path: Path, address: str) -> None:
    settings = settings_listening(tmp_path, "127.0.0.1:8400", f"{address}:8401")
    with pytest.raises(ConfigError) as caught:
        check_plain_http(settings, ["eu", "us"], tls=None, insecure_http=False)
    error = caught.value
    assert error.field == "regions.us.listen"
    assert error.exit_code == 2
    assert "region us " in error.message and f"{address}:8401" in error.message
    for way_out in ("--tls-cert/--tls-key", "tls_cert/tls_key", "--insecure-http"):
        assert way_out in error.message
    # served with a certificate, or plain on the operator's word, or only the loopback region
    check_plain_http(settings, ["eu", "us"], tls=TlsFiles(Path("c"), Path("k")),
                     insecure_http=False)
    check_plain_http(settings, ["eu", "us"], tls=None, insecure_http=True)
    check_plain_http(settings, ["eu"], tls=None, insecure_http=False)


def test_serve_applies_the_rule_before_binding_anything(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = settings_listening(tmp_path, f"127.0.0.1:{port}", "0.0.0.0:8401")
    with pytest.raises(ConfigError, match=r"regions\.us\.listen"):
        serve(settings)
    with socket.socket() as again:  # eu's port was never bound
        again.bind(("127.0.0.1", port))


# -- where the certificate comes from -----------------------------------------------------


def test_flags_take_precedence_over_the_config_and_go_together(tmp_path: Path) -> None:
    body = render_config(8400, dev_tls=True)
    settings = parse_settings(tomllib.loads(body), config_path=tmp_path / "domicile.toml",
                              check_files=False)
    assert tls_files(settings) == TlsFiles(tmp_path / "tls" / "server.pem",
                                           tmp_path / "tls" / "server.key")
    flags = TlsFiles(Path("/etc/c.pem"), Path("/etc/k.pem"))
    assert tls_files(settings, flags.cert, flags.key) == flags
    with pytest.raises(InvalidInput, match="go together"):
        tls_files(settings, flags.cert, None)
    plain = parse_settings(tomllib.loads(render_config(8400)),
                           config_path=tmp_path / "domicile.toml", check_files=False)
    assert tls_files(plain) is None


def test_serve_refuses_a_tls_key_others_may_read_before_binding(tmp_path: Path,
                                                                 ec_files: TlsFiles) -> None:
    """The key given by flag is checked like the site's own (`check_key_files`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = settings_listening(tmp_path, f"127.0.0.1:{port}", "127.0.0.1:8401")
    ec_files.key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as refused:
        serve(settings, ["eu"], tls=ec_files)
    assert refused.value.field == "--tls-key"
    with socket.socket() as again:  # nothing was bound
        again.bind(("127.0.0.1", port))
