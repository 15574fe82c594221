"""Through `domicile serve`: a kill -9 in the middle of an upload leaves its temp blob, and the
next start sweeps it; with the region's PostgreSQL stopped, uploads, lists, downloads and
deletes answer 503 `store_unavailable` (nothing kept, nothing deleted), and work again once it
is back."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from sqlalchemy import create_engine, text

from domicile import site as sites
from domicile.config import load_settings
from tests.e2e.harness import Server, Site, free_port_pair

T = TypeVar("T")


def _until(found: Callable[[], T], what: str, timeout: float = 30) -> T:
    """Poll another process's effect (a file appearing), bounded."""
    deadline = time.monotonic() + timeout
    while not (value := found()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return value


def _site_with_key(root: Path, eu_database_url: str | None = None,
                   eu_keystore_url: str | None = None) -> tuple[Site, str]:
    """A site made in process (no CLI start-ups), without the embedding model (seconds per
    server start), eu's store where asked, and a key of an eu project with regional
    retention."""
    port_base = free_port_pair()
    config = sites.init_site(root, port_base=port_base).config_path
    body = config.read_text()
    for region in ("eu", "us"):
        body = body.replace(
            f'[[regions.{region}.providers]]\nname = "{region}-embeddings"\n'
            'kind = "local-embeddings"\nmodels = ["all-minilm-l6-v2"]\n', "")
    if eu_database_url is not None:
        body = body.replace('database_url = "sqlite:///eu/store.db"',
                            f'database_url = "{eu_database_url}"\n'
                            f'keystore_url = "{eu_keystore_url}"')
    config.write_text(body)
    opened = sites.Site(load_settings(config))
    try:
        opened.migrate()
        org = opened.directory.create_org("Acme")
        project = opened.directory.create_project(org.id, "app", "eu", retention="regional")
        key = opened.directory.create_api_key(project.id).secret
    finally:
        opened.close()
    return Site(root, port_base), key


def _temp_blobs(site: Site) -> list[Path]:
    return sorted((site.root / "eu" / "blobs").rglob(".*.tmp"))


def test_a_kill_9_mid_upload_leaves_a_temp_blob_the_next_start_sweeps(tmp_path: Path) -> None:
    site, key = _site_with_key(tmp_path / "site")
    first = Server(site, tmp_path / "first")
    try:
        first.wait_ready()
        head = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
                b"\r\n")
        request = (f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {key}\r\n"
                   "Content-Type: multipart/form-data; boundary=XyZ\r\n"
                   f"Content-Length: {100 * 1024 * 1024}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", site.port_base)) as upload:
            upload.sendall(request + head + bytes(4 * 1024 * 1024))  # 4 MiB of 100 promised
            left = _until(lambda: _temp_blobs(site), "the upload's temp blob")
            first.process.kill()  # SIGKILL: no cleanup of any kind
            first.process.wait(30)
        assert [p.exists() for p in left] == [True]
        assert left[0].stat().st_size > 0
    finally:
        first.stop()

    second = Server(site, tmp_path / "second")
    try:
        second.wait_ready()
        assert _temp_blobs(site) == []
        assert "region eu: removed 1 temporary blobs of interrupted uploads" in second.log()
        listed = httpx.get(site.url("eu") + "/v1/files",
                           headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert listed.status_code == 200 and listed.json()["data"] == []
    finally:
        second.stop()


def test_a_stopped_postgresql_is_503_and_the_region_recovers(
        tmp_path: Path, postgres_server: object) -> None:
    from tests.pgserver import ThrowawayPostgres

    postgres = postgres_server
    assert isinstance(postgres, ThrowawayPostgres)
    admin = create_engine(postgres.url().replace("postgresql://", "postgresql+psycopg://"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "eu_store"'))
        conn.execute(text('CREATE DATABASE "eu_keys"'))
    admin.dispose()
    site, key = _site_with_key(tmp_path / "site", postgres.url("eu_store"),
                               postgres.url("eu_keys"))
    server = Server(site, tmp_path)
    auth = {"Authorization": f"Bearer {key}"}
    blob_files = site.root / "eu" / "blobs"

    def upload(client: httpx.Client, name: str) -> httpx.Response:
        return client.post("/v1/files", headers=auth,
                           files={"file": (name, b"kept in eu")}, data={"purpose": "batch"})

    try:
        server.wait_ready()
        with httpx.Client(base_url=site.url("eu"), timeout=30) as client:
            kept = upload(client, "before.txt")
            assert kept.status_code == 200, kept.text
            postgres.stop()
            try:
                for response in (upload(client, "during.txt"),
                                 client.get("/v1/files", headers=auth),
                                 client.get(f"/v1/files/{kept.json()['id']}/content",
                                            headers=auth),
                                 client.delete(f"/v1/files/{kept.json()['id']}",
                                               headers=auth)):
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "store_unavailable"
                    assert response.headers["x-domicile-region"] == "eu"
            finally:
                postgres.start()
            listed = client.get("/v1/files", headers=auth)
            assert listed.status_code == 200, listed.text
            assert [f["filename"] for f in listed.json()["data"]] == ["before.txt"]
            content = client.get(f"/v1/files/{kept.json()['id']}/content", headers=auth)
            assert content.content == b"kept in eu"  # the refused DELETE took nothing
            assert upload(client, "after.txt").status_code == 200
        assert len([p for p in blob_files.rglob("*") if p.is_file()]) == 2  # nothing half-kept
        assert "store fault (503 store_unavailable)" in server.log()
        assert "during.txt" not in server.log()
    finally:
        server.stop()
