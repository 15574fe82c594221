"""`domicile serve` as `make run` starts it: both regions answer, in one or several workers."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from tests.e2e.harness import DOMICILE, Server, Site, free_port_pair, init_site
from tests.tls_clients import CBC_SUITE, connect, old_client, tls12_client

HSTS = "strict-transport-security"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_answers_healthz_for_eu_and_us(tmp_path: Path, workers: str) -> None:
    site = init_site(tmp_path / "site")
    server = Server(site, tmp_path, "--workers", workers)
    try:
        server.wait_ready()
        for region in ("eu", "us"):
            response = httpx.get(site.url(region) + "/healthz")
            assert response.json() == {"status": "ok", "region": region}
            assert response.headers["x-domicile-region"] == region
        # a key made while serving works at once in every worker: none keeps its own state
        _project, key = site.project_key("eu")
        client = openai.OpenAI(base_url=site.url("eu") + "/v1", api_key=key, max_retries=0)
        for n in range(20):
            reply = client.chat.completions.create(
                model="dev-echo", messages=[{"role": "user", "content": f"ping {n}"}])
            assert reply.choices[0].message.content == f"ping {n}"
    finally:
        server.stop()


def test_serve_only_the_named_region(tmp_path: Path) -> None:
    site = init_site(tmp_path / "site")
    server = Server(site, tmp_path, "--region", "us")
    try:
        server.wait_ready(("us",))
        with pytest.raises(httpx.ConnectError):
            httpx.get(site.url("eu") + "/healthz", timeout=2)
        page = httpx.get(site.url("us") + "/workspace/login")
        assert page.status_code == 200 and HSTS not in page.headers  # plain HTTP: no HSTS
    finally:
        server.stop()


def assert_only_strong_tls(port: int, ca_file: Path) -> None:
    """G6 on a running server: TLS 1.0/1.1 and a CBC suite that Python's (and uvicorn's) own
    defaults accept are refused, so what is served is Domicile's context; 1.2 with an AEAD
    suite and 1.3 are spoken. The lax control is tests/test_tls.py. (uvloop's TLS closes a
    refused handshake without an alert: the client sees EOF, an `SSLError` still.)"""
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError):
            connect(old_client(version), "127.0.0.1", port)
    with pytest.raises(ssl.SSLError):
        connect(tls12_client(CBC_SUITE), "127.0.0.1", port)
    aead = connect(tls12_client("ECDHE-ECDSA-AES128-GCM-SHA256"), "127.0.0.1", port)
    assert aead.version == "TLSv1.2"
    verified = connect(ssl.create_default_context(cafile=str(ca_file)), "127.0.0.1", port,
                       server_hostname="127.0.0.1")
    assert verified.version == "TLSv1.3"


def test_tls_from_flags_refuses_old_versions_and_weak_suites(tmp_path: Path) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    cert = ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.ECDSA)
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    (tmp_path / "server.pem").chmod(0o600)  # a key file: serve refuses one others may read
    site = init_site(tmp_path / "site")
    server = Server(site, tmp_path, "--region", "eu", "--tls-cert", str(tmp_path / "server.pem"),
                    "--tls-key", str(tmp_path / "server.pem"))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    try:
        trusting = ssl.create_default_context(cafile=str(ca_file))
        server.wait_ready(("eu",), scheme="https", verify=trusting)
        assert_only_strong_tls(site.port_base, ca_file)
        response = httpx.get(f"https://127.0.0.1:{site.port_base}/healthz", verify=trusting)
        assert response.json()["region"] == "eu"
    finally:
        server.stop()


def init_dev_tls_site(root: Path) -> tuple[Site, dict[str, object]]:
    port_base = free_port_pair()
    done = subprocess.run([DOMICILE, "init", "--dir", str(root), "--port-base", str(port_base),
                           "--dev-tls", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return Site(root, port_base), json.loads(done.stdout)


def test_init_dev_tls_serves_https_from_the_config_with_hsts(tmp_path: Path) -> None:
    site, made = init_dev_tls_site(tmp_path / "site")
    ca_file = tmp_path / "site" / "tls" / "ca.pem"
    assert made["regions"] == {"eu": f"https://127.0.0.1:{site.port_base}",
                               "us": f"https://127.0.0.1:{site.port_base + 1}"}
    assert made["tls"] == {"ca": str(ca_file.resolve()),
                           "cert": str((tmp_path / "site" / "tls" / "server.pem").resolve())}
    assert (tmp_path / "site" / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
    server = Server(site, tmp_path)  # no flags: the certificate comes from [server]
    try:
        trusting = ssl.create_default_context(cafile=str(ca_file))
        server.wait_ready(scheme="https", verify=trusting)
        assert_only_strong_tls(site.port_base + 1, ca_file)
        page = httpx.get(f"https://localhost:{site.port_base}/workspace/login",
                         verify=trusting)
        assert page.status_code == 200
        assert page.headers[HSTS] == "max-age=63072000; includeSubDomains"
    finally:
        server.stop()


def test_serve_refuses_plain_http_off_loopback_unless_told_insecure(tmp_path: Path) -> None:
    site = init_site(tmp_path / "site")
    us_listen = f"0.0.0.0:{site.port_base + 1}"
    config = site.config.read_text()
    site.config.write_text(config.replace(f'listen = "127.0.0.1:{site.port_base + 1}"',
                                          f'listen = "{us_listen}"'))
    done = subprocess.run([DOMICILE, "serve", "--config", str(site.config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert "regions.us.listen" in message and "region us would serve plain HTTP" in message
    assert us_listen in message
    for way_out in ("--tls-cert/--tls-key", "[server] tls_cert/tls_key", "--insecure-http"):
        assert way_out in message
    assert "Traceback" not in done.stderr
    server = Server(site, tmp_path, "--insecure-http")
    try:
        server.wait_ready()  # 0.0.0.0 answers on 127.0.0.1 too
    finally:
        server.stop()


UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nope_{region}"  # nothing listens on port 1


def break_database(site: Site, region: str) -> None:
    config = site.config.read_text()
    current = f'database_url = "sqlite:///{region}/store.db"'
    assert current in config
    unreachable = UNREACHABLE.format(region=region)
    site.config.write_text(config.replace(
        current, f'database_url = "{unreachable}"\nkeystore_url = "{unreachable}_keys"'))


def test_a_region_whose_database_is_unreachable_is_named_and_the_others_serve(
        tmp_path: Path) -> None:
    site = init_site(tmp_path / "site")
    break_database(site, "us")
    server = Server(site, tmp_path)
    try:
        server.wait_ready(("eu",))
        assert httpx.get(site.url("eu") + "/healthz").json() == {"status": "ok", "region": "eu"}
        with pytest.raises(httpx.ConnectError):
            httpx.get(site.url("us") + "/healthz", timeout=2)
        log = server.log()
        named = [line for line in log.splitlines() if "region us" in line]
        assert len(named) == 1, log
        assert "not served" in named[0] and "OperationalError" in named[0]
        assert "Connection refused" in named[0]
        assert "Traceback" not in log
    finally:
        server.stop()


def test_serve_exits_1_naming_each_region_when_none_can_start(tmp_path: Path) -> None:
    site = init_site(tmp_path / "site")
    break_database(site, "eu")
    break_database(site, "us")
    done = subprocess.run([DOMICILE, "serve", "--config", str(site.config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert [line.split(" not served:")[0] for line in lines[:2]] == ["region eu", "region us"]
    assert len(lines) == 3 and lines[2].startswith("error: no region can be served")
    assert "Traceback" not in done.stderr + done.stdout
