"""`domicile serve` as `make run` starts it: both regions answer, in one or several workers."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from tests.e2e.harness import DOMICILE, Server, Site, init_site


def tls_1_1_client() -> ssl.SSLContext:
    """A client that offers only TLS 1.0/1.1 (RECIPES.md: it does negotiate where allowed)."""
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    return old


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
    finally:
        server.stop()


def test_tls_server_refuses_tls_1_1_and_accepts_1_2(tmp_path: Path) -> None:
    """G6: the real handshake, with a TLS 1.1 client that could succeed against a lax server."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    site = init_site(tmp_path / "site")
    server = Server(site, tmp_path, "--region", "eu", "--tls-cert", str(tmp_path / "server.pem"),
                    "--tls-key", str(tmp_path / "server.pem"))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    try:
        trusting = ssl.create_default_context(cafile=str(ca_file))
        server.wait_ready(("eu",), scheme="https", verify=trusting)
        old = tls_1_1_client()
        import socket
        with socket.create_connection(("127.0.0.1", site.port_base)) as raw:
            with pytest.raises(ssl.SSLError):
                old.wrap_socket(raw).do_handshake()
        good = ssl.create_default_context(cafile=str(ca_file))
        good.minimum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", site.port_base)) as raw:
            with good.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        response = httpx.get(f"https://127.0.0.1:{site.port_base}/healthz", verify=trusting)
        assert response.json()["region"] == "eu"
    finally:
        server.stop()


def test_the_tls_1_1_client_does_negotiate_with_a_lax_server(tmp_path: Path) -> None:
    """Control for the refusal above: the same old client succeeds where TLS 1.1 is allowed."""
    import socket
    import threading

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    lax.minimum_version = ssl.TLSVersion.TLSv1
    cert.configure_cert(lax)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept_one() -> None:
        conn, _ = listener.accept()
        try:
            with lax.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()
    old = tls_1_1_client()
    with socket.create_connection(("127.0.0.1", port)) as raw, old.wrap_socket(raw) as tls:
        assert tls.version() == "TLSv1.1"
    thread.join(5)
    listener.close()


UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nope_{region}"  # nothing listens on port 1


def break_database(site: Site, region: str) -> None:
    config = site.config.read_text()
    current = f'database_url = "sqlite:///{region}/store.db"'
    assert current in config
    unreachable = UNREACHABLE.format(region=region)
    site.config.write_text(config.replace(current, f'database_url = "{unreachable}"'))


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
