"""/v1/files: refused under zero retention (G4); under regional retention streamed into the
region's content store, never through a temporary file; stored only once the whole upload is
read and valid; store faults answered 503/507, and deletes working on a full disk.

Most tests run against the in-memory store of the session's stack; those about what reaches
the disk run against a real site's `RegionalStore` (SQLite and blob files) behind its own
gateway, served by uvicorn on the same loop.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sqlite3
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import event

from domicile.gateway import create_gateway_app
from domicile.gateway import files as gateway_files
from domicile.gateway import uploads as gateway_uploads
from domicile.site import Site, init_site
from domicile.storage.blobs import FileBlobStore
from domicile.storage.db import make_engine
from domicile.storage.interfaces import BlobStore, PendingBlob, TenantRef
from domicile.storage.regional import RegionalStore
from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, Stack
from tests.gateway.support import MemoryUsageSink, ServedApp, grant

CANARY = "CANARY-upload-51c3"
MULTIPART = "multipart/form-data; boundary=XyZ"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/files"), ("GET", "/v1/files"), ("GET", "/v1/files/file-abc"),
    ("GET", "/v1/files/file-abc/content"), ("DELETE", "/v1/files/file-abc"),
    ("PATCH", "/v1/files/file-abc/other"),
])
def test_zero_retention_refuses_every_files_path(stack: Stack, method: str, path: str) -> None:
    response = stack.http().request(method, path,
                                    headers={"Authorization": f"Bearer {EU_ZERO_KEY}"},
                                    files={"file": ("a.txt", b"CANARY")})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "zero_retention"
    assert stack.store.blobs == {}


def test_the_sdk_sees_zero_retention_as_a_bad_request(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().files.create(file=("a.txt", b"hello"), purpose="assistants")
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]


def test_regional_files_round_trip_through_the_store(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    created = client.files.create(file=("notes.txt", b"regional bytes"), purpose="assistants")
    assert created.id.startswith("file-")
    assert (created.filename, created.bytes, created.purpose) == (
        "notes.txt", 14, "assistants")
    assert [f.id for f in client.files.list()] == [created.id]
    assert [f.id for f in client.files.list(purpose="batch")] == []
    assert client.files.retrieve(created.id).filename == "notes.txt"
    assert client.files.content(created.id).read() == b"regional bytes"
    stored = stack.store.blobs[("proj_key_eu_regional", "file", created.id)]
    assert stored[1] == b"regional bytes"
    assert client.files.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_a_large_upload_is_streamed_without_temporary_files(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a temporary file was created")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile",
                 "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    data = bytes(range(256)) * 12_000  # about 3 MB
    created = stack.client(EU_REGIONAL_KEY).files.create(file=("big.bin", data),
                                                         purpose="user_data")
    assert created.bytes == len(data)
    assert stack.store.chunk_counts[-1] > 1  # arrived in pieces, not as one buffer
    assert stack.client(EU_REGIONAL_KEY).files.content(created.id).read() == data


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
                 + value + b"\r\n")
    return body + f"--{boundary}--\r\n".encode()


def test_a_file_part_before_its_purpose_is_accepted(stack: Stack) -> None:
    body = _multipart([("file", "late.txt", b"file first\r\n--XyW lookalike"),
                       ("purpose", None, b"batch")])
    response = stack.http().post("/v1/files", content=body, headers={
        "Authorization": f"Bearer {EU_REGIONAL_KEY}",
        "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert response.status_code == 200, response.text
    assert response.json()["purpose"] == "batch"
    file_id = response.json()["id"]
    blob = stack.store.blobs[("proj_key_eu_regional", "file", file_id)]
    assert blob[1] == b"file first\r\n--XyW lookalike"


@pytest.mark.parametrize(("parts", "param"), [
    ([("purpose", None, b"assistants")], "file"),
    ([("file", "a.txt", b"x")], "purpose"),
    ([("purpose", None, b"nonsense"), ("file", "a.txt", b"x")], "purpose"),
])
def test_incomplete_uploads_are_400(stack: Stack, parts: list[tuple[str, str | None, bytes]],
                                    param: str) -> None:
    response = stack.http().post("/v1/files", content=_multipart(parts), headers={
        "Authorization": f"Bearer {EU_REGIONAL_KEY}",
        "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_non_multipart_upload_is_400(stack: Stack) -> None:
    response = stack.http().post("/v1/files", json={"file": "x"}, headers={
        "Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    assert response.status_code == 400


def test_ids_that_are_not_ours_are_404(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    for file_id in ("file-..%2F..%2Fetc", "file-doesnotexist", "x"):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(file_id)


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/content"),
                                               ("DELETE", "")])
def test_a_404_quotes_only_a_file_id_of_our_shape(stack: Stack, method: str,
                                                  suffix: str) -> None:
    for file_id, shown in (("CANARY-" + "x" * 300, "the given id"),
                           ("file-missing", "file-missing")):
        response = stack.http().request(method, f"/v1/files/{file_id}{suffix}", headers={
            "Authorization": f"Bearer {EU_REGIONAL_KEY}"})
        assert response.status_code == 404, response.text
        message = response.json()["error"]["message"]
        assert message == f"No such File object: {shown}" and "CANARY" not in message


def test_regional_retention_without_a_store_is_503(stack: Stack) -> None:
    secret = "dk-global-regional00000000"
    stack.auth.keys[secret] = grant("key_roaming_regional", region="global",
                                    retention="regional", per_request_residency=True)
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client(secret, stack.us).files.list()
    assert caught.value.status_code == 503
    assert caught.value.code == "content_store_unavailable"  # type: ignore[attr-defined]


def test_a_roaming_project_keeps_its_files_in_the_region_it_called(stack: Stack) -> None:
    secret = "dk-global-regional00000001"
    stack.auth.keys[secret] = grant("key_roaming_eu", region="global", retention="regional",
                                    per_request_residency=True)
    stack.client(secret).files.create(file=("r.txt", b"kept in eu"), purpose="assistants")
    (tenant, kind, _), = stack.store.blobs
    assert (tenant, kind) == ("proj_key_roaming_eu", "file")


# -- what an upload keeps, and when (in-memory store) ---------------------------------------


def _upload(client: httpx.Client, key: str, content: Any,
            headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/v1/files", content=content, headers={
        "Authorization": f"Bearer {key}", "Content-Type": MULTIPART, **(headers or {})})


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_an_upload_over_the_limit_is_413_and_keeps_nothing(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, declare_length: bool) -> None:
    monkeypatch.setattr(stack.eu_app._files, "max_upload", 64 * 1024)
    body = _multipart([("purpose", None, b"batch"), ("file", "big.bin", b"x" * 200_000)])
    pieces = [body[i:i + 16_384] for i in range(0, len(body), 16_384)]
    response = _upload(stack.http(), EU_REGIONAL_KEY, body if declare_length else iter(pieces))
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert stack.store.blobs == {} and stack.store.staged == 0


def test_a_file_before_its_purpose_is_never_held_in_memory(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack.store, "keep_bytes", False)  # the store counts, keeps nothing
    size, piece = 64 * 1024 * 1024, bytes(65_536)
    head = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    tail = (b'\r\n--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            b"batch\r\n--XyZ--\r\n")

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(size // len(piece)):
            yield piece
        yield tail

    client = stack.http()
    tracemalloc.start()
    try:
        response = _upload(client, EU_REGIONAL_KEY, body(),
                           {"Content-Length": str(len(head) + size + len(tail))})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == size
    assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held during a 64 MiB upload"


# -- stalled uploads: threads of their own, an idle bound -----------------------------------

FRESH_KEY = "dk-eu-fresh00000000000000000"  # in no cache: its lookup needs a thread


def poll(done: Callable[[], bool], failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        time.sleep(0.02)


def stalled_request(port: int, path: str, key: str, body: bytes, sent: int) -> socket.socket:
    """A multipart POST of `body` whose client sends its first `sent` bytes, then nothing."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {MULTIPART}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head + body[:sent])
    return sock


def answer_of(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the one answer on `sock` (socket timeout: 30 s)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or _closed()
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536) or _closed()
    return int(head.split(b" ", 2)[1]), json.loads(body[:length])


def _closed() -> bytes:
    raise AssertionError("the server closed the connection without an answer")


def _stalled_file(port: int) -> socket.socket:
    body = _multipart([("purpose", None, b"batch"), ("file", "a.bin", b"x" * 100_000)])
    return stalled_request(port, "/v1/files", EU_REGIONAL_KEY, body, 300)  # the file begun


def test_stalled_uploads_never_hold_the_threads_other_requests_need(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # As many stalled uploads as the event loop has default threads: were they streamed in
    # those, a key lookup and every store call would wait for them.
    size = min(32, (os.cpu_count() or 1) + 4)
    monkeypatch.setattr(gateway_files, "STREAMS", gateway_files.UploadStreams(size))
    monkeypatch.setitem(stack.auth.keys, FRESH_KEY, grant("key_fresh"))
    stalled = [_stalled_file(stack.eu.port) for _ in range(size)]
    try:
        poll(lambda: gateway_files.STREAMS.busy == size, "the uploads never began streaming")
        http = stack.http()
        busy = _upload(http, EU_REGIONAL_KEY, _multipart([("purpose", None, b"batch"),
                                                          ("file", "b.txt", b"b")]))
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "server_busy"
        assert busy.headers["retry-after"] == "5"
        models = http.get("/v1/models", headers={"Authorization": f"Bearer {FRESH_KEY}"})
        assert models.status_code == 200, models.text
        listed = http.get("/v1/files", headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"})
        assert listed.status_code == 200, listed.text
        assert gateway_files.STREAMS.busy == size  # answered while every upload still waits
    finally:
        for sock in stalled:
            sock.close()
    poll(lambda: gateway_files.STREAMS.busy == 0, "a left upload kept its thread")
    assert stack.store.blobs == {} and stack.store.staged == 0


def test_stalled_uploads_end_408_after_the_idle_bound_and_store_nothing(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_files, "IDLE_READ_S", 0.2)
    upload = stack.client(EU_REGIONAL_KEY).uploads.create(
        bytes=100_000, filename="a.bin", mime_type="text/plain", purpose="batch")
    part = _multipart([("data", "d", b"x" * 100_000)])
    stalled = [_stalled_file(stack.eu.port) for _ in range(3)]
    stalled.append(stalled_request(stack.eu.port, f"/v1/uploads/{upload.id}/parts",
                                   EU_REGIONAL_KEY, part, 200))
    try:
        for sock in stalled:
            status, body = answer_of(sock)
            assert status == 408, body
            assert body["error"]["code"] == "request_timeout"
            assert body["error"]["type"] == "invalid_request_error"
    finally:
        for sock in stalled:
            sock.close()
    assert stack.store.blobs == {} and stack.store.staged == 0
    poll(lambda: gateway_files.STREAMS.busy == 0, "an ended upload kept its thread")


def test_a_download_stops_reading_when_its_client_leaves(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    file_id = client.files.create(file=("big.bin", bytes(20_000_000)), purpose="batch").id
    total = len(list(stack.store.open_blob(TenantRef("proj_key_eu_regional", "eu", ""),
                                           "file", file_id)))
    opened = stack.store.open_blob
    read: list[int] = []
    closed: list[bool] = []

    def counted(*args: Any) -> Iterator[bytes]:
        try:
            for chunk in opened(*args):
                read.append(len(chunk))
                yield chunk
        finally:
            closed.append(True)

    monkeypatch.setattr(stack.store, "open_blob", counted)
    with socket.create_connection(("127.0.0.1", stack.eu.port), timeout=30) as sock:
        sock.sendall(f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {EU_REGIONAL_KEY}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    poll(lambda: bool(closed), "the blob was never closed")
    assert len(read) < total // 2, (len(read), total)  # read: far fewer than all chunks


# -- what reaches the disk: a real site's store behind its own gateway ----------------------


class FullDisk:
    """The region's disk with no room left: blob writes fail with ENOSPC (after their first
    chunk, as a real disk would part-way) and SQL writes with SQLite's SQLITE_FULL, until a
    blob's deletion frees space. Wraps a `BlobStore`; hooks the store's engine."""

    def __init__(self, store: RegionalStore) -> None:
        self.inner: BlobStore = store.blobs
        self.full = False
        store.blobs = self
        event.listen(store.engine, "before_cursor_execute", self._refuse_writes)

    def detach(self, store: RegionalStore) -> None:
        store.blobs = self.inner
        event.remove(store.engine, "before_cursor_execute", self._refuse_writes)

    def _refuse_writes(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.full and statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            raise _real_sqlite_full()

    def stage(self, key: str, chunks: Iterable[bytes]) -> PendingBlob:
        if not self.full:
            return self.inner.stage(key, chunks)

        def filling() -> Iterator[bytes]:
            for chunk in chunks:
                yield chunk
                raise OSError(errno.ENOSPC, "No space left on device")

        return self.inner.stage(key, filling())

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        pending = self.stage(key, chunks)
        pending.commit()
        return pending.size

    def delete(self, key: str) -> bool:
        removed = self.inner.delete(key)
        self.full = self.full and not removed
        return removed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _real_sqlite_full() -> sqlite3.OperationalError:
    db = sqlite3.connect(":memory:")
    try:
        db.execute("PRAGMA max_page_count = 2")
        db.execute("CREATE TABLE t (x BLOB)")
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        db.close()
    raise AssertionError("SQLite did not run out of room")


@dataclass
class Disk:
    site: Site
    store: RegionalStore
    served: ServedApp
    key: str
    blob_root: Path

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.served.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.key}"})

    def files_on_disk(self) -> list[Path]:
        return sorted(p for p in self.blob_root.rglob("*") if p.is_file())

    def listed(self, client: httpx.Client) -> list[str]:
        response = client.get("/v1/files")
        assert response.status_code == 200, response.text
        return [f["id"] for f in response.json()["data"]]


@pytest.fixture(scope="module")
def disk(served: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Disk]:
    root = tmp_path_factory.mktemp("files-disk")
    site = Site(init_site(root / "site", port_base=18600))
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu", retention="regional")
    key = site.directory.create_api_key(project.id).secret
    store = site.store("eu")
    app = create_gateway_app(site.settings, "eu", authenticator=site.directory,
                             usage_sink=store, content_store=store, providers=[])
    serving = ServedApp(served.loop, app)
    assert isinstance(store.blobs, FileBlobStore)
    yield Disk(site, store, serving, key, store.blobs.root)
    serving.stop()
    site.close()


@pytest.fixture
def clean_disk(disk: Disk) -> Iterator[Disk]:
    yield disk
    with disk.http() as client:
        for file_id in disk.listed(client):
            client.delete(f"/v1/files/{file_id}")


@pytest.fixture
def blob_inserts(disk: Disk) -> Iterator[list[str]]:
    """Every INSERT into the blobs table while the test runs (a stored file, however briefly)."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "INSERT INTO blobs" in statement:
            seen.append(statement)

    event.listen(disk.store.engine, "before_cursor_execute", note)
    yield seen
    event.remove(disk.store.engine, "before_cursor_execute", note)


@pytest.mark.parametrize(("parts", "param"), [
    ([("purpose", None, b"assistants"), ("file", "a.txt", CANARY.encode() * 4000),
      ("file", "b.txt", b"second")], "file"),
    ([("file", "a.txt", CANARY.encode() * 4000), ("file", "b.txt", b"second"),
      ("purpose", None, b"assistants")], "file"),
    ([("file", "a.txt", CANARY.encode() * 4000), ("purpose", None, b"nonsense")], "purpose"),
    ([("file", "a.txt", CANARY.encode() * 4000)], "purpose"),
], ids=["two-files", "two-files-before-purpose", "bad-purpose-after-file", "no-purpose"])
def test_an_invalid_upload_stores_nothing_ever(
        clean_disk: Disk, blob_inserts: list[str],
        parts: list[tuple[str, str | None, bytes]], param: str) -> None:
    with clean_disk.http() as client:
        response = client.post("/v1/files", content=_multipart(parts),
                               headers={"Content-Type": MULTIPART})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        assert clean_disk.listed(client) == []
    assert blob_inserts == []  # not stored, not even for a moment
    assert clean_disk.files_on_disk() == []


def test_an_upload_is_stored_once_complete(clean_disk: Disk, blob_inserts: list[str]) -> None:
    with clean_disk.http() as client:
        response = client.post("/v1/files", content=_multipart([
            ("file", "late.txt", b"file first"), ("purpose", None, b"batch")]),
            headers={"Content-Type": MULTIPART})
        assert response.status_code == 200, response.text
        assert clean_disk.listed(client) == [response.json()["id"]]
        assert client.get(f"/v1/files/{response.json()['id']}/content").content == b"file first"
    assert len(blob_inserts) == 1
    assert [p.name.startswith(".") for p in clean_disk.files_on_disk()] == [False]


def test_a_row_whose_bytes_are_gone_is_404_not_500(clean_disk: Disk) -> None:
    with clean_disk.http() as client:
        file_id = client.post("/v1/files", content=_multipart([
            ("purpose", None, b"batch"), ("file", "gone.txt", b"soon gone")]),
            headers={"Content-Type": MULTIPART}).json()["id"]
        for path in clean_disk.files_on_disk():
            path.unlink()
        response = client.get(f"/v1/files/{file_id}/content")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
        assert client.delete(f"/v1/files/{file_id}").status_code == 200
        assert clean_disk.listed(client) == []


def test_a_full_disk_is_507_and_deletes_free_it(
        clean_disk: Disk, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    disk = FullDisk(clean_disk.store)
    try:
        with clean_disk.http() as client:
            kept = client.post("/v1/files", content=_multipart([
                ("purpose", None, b"batch"), ("file", "kept.txt", b"kept")]),
                headers={"Content-Type": MULTIPART}).json()["id"]
            before = clean_disk.files_on_disk()
            disk.full = True
            refused = client.post("/v1/files", content=_multipart([
                ("purpose", None, b"batch"), ("file", f"{CANARY}.txt", CANARY.encode() * 9000)]),
                headers={"Content-Type": MULTIPART})
            assert refused.status_code == 507, refused.text
            error = refused.json()["error"]
            assert (error["code"], error["type"]) == ("insufficient_storage", "server_error")
            assert refused.headers["x-domicile-region"] == "eu"
            assert clean_disk.files_on_disk() == before  # nothing stored, no temp file left
            with pytest.raises(openai.APIStatusError) as caught:
                openai.OpenAI(base_url=clean_disk.served.url + "/v1", api_key=clean_disk.key,
                              max_retries=0).files.create(file=("b.txt", b"b"), purpose="batch")
            assert caught.value.status_code == 507

            deleted = client.delete(f"/v1/files/{kept}")  # works on the full disk
            assert deleted.status_code == 200, deleted.text
            assert not disk.full and clean_disk.files_on_disk() == []
            assert clean_disk.listed(client) == []
            assert client.post("/v1/files", content=_multipart([
                ("purpose", None, b"batch"), ("file", "again.txt", b"room again")]),
                headers={"Content-Type": MULTIPART}).status_code == 200
    finally:
        disk.detach(clean_disk.store)
    faults = [r.getMessage() for r in caplog.records if "store fault" in r.getMessage()]
    assert faults and "errno 28 (ENOSPC)" in faults[0], faults
    assert CANARY not in caplog.text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_database_that_cannot_be_reached_is_503(
        disk: Disk, served: Stack, tmp_path: Path) -> None:
    unreachable = RegionalStore(
        "eu", make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/eu"),
        FileBlobStore(tmp_path / "blobs"), disk.store.keys, audit_key=b"k" * 32)
    app = create_gateway_app(disk.site.settings, "eu", authenticator=disk.site.directory,
                             usage_sink=MemoryUsageSink(), content_store=unreachable,
                             providers=[])
    serving = ServedApp(served.loop, app)
    try:
        client = openai.OpenAI(base_url=serving.url + "/v1", api_key=disk.key, max_retries=0)
        for action in (lambda: client.files.list(),
                       lambda: client.files.retrieve("file-abc"),
                       lambda: client.files.create(file=("a.txt", b"a"), purpose="batch")):
            with pytest.raises(openai.InternalServerError) as caught:
                action()
            assert caught.value.status_code == 503
            assert caught.value.code == "store_unavailable"  # type: ignore[attr-defined]
        assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
    finally:
        serving.stop()
        unreachable.engine.dispose()


# -- listing: pages, order, purpose, hostile queries (in-memory store) -----------------------


def _create(client: openai.OpenAI, count: int, purpose: Any = "user_data") -> list[str]:
    return [client.files.create(file=(f"f{i}.txt", b"x" * i), purpose=purpose).id
            for i in range(count)]


def test_list_pages_by_limit_and_after_newest_first(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    made = _create(client, 5)
    newest_first = made[::-1]
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == newest_first[:2]
    assert page.has_more is True
    raw = stack.http().get("/v1/files", params={"limit": 2, "after": newest_first[1]},
                           headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"}).json()
    assert [f["id"] for f in raw["data"]] == newest_first[2:4]
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (
        newest_first[2], newest_first[3], True)
    last = client.files.list(limit=2, after=newest_first[3])
    assert [f.id for f in last.data] == newest_first[4:] and last.has_more is False
    # The SDK's auto-pagination walks every page by `after`.
    assert [f.id for f in client.files.list(limit=2)] == newest_first
    assert [f.id for f in client.files.list()] == newest_first  # default: 10000, desc


def test_list_in_ascending_order(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    made = _create(client, 4)
    assert [f.id for f in client.files.list(order="asc", limit=3)] == made
    page = client.files.list(order="asc", limit=1, after=made[1])
    assert [f.id for f in page.data] == [made[2]] and page.has_more is True


def test_an_empty_list_has_no_first_or_last_id(stack: Stack) -> None:
    raw = stack.http().get("/v1/files", headers={
        "Authorization": f"Bearer {EU_REGIONAL_KEY}"}).json()
    assert raw == {"object": "list", "data": [], "has_more": False, "first_id": None,
                   "last_id": None}


def test_list_filters_by_purpose_and_pages_within_it(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    batch = _create(client, 3, "batch")
    _create(client, 2, "vision")
    page = client.files.list(purpose="batch", limit=2)
    assert [f.id for f in page.data] == batch[::-1][:2] and page.has_more is True
    assert [f.id for f in client.files.list(purpose="batch", limit=2)] == batch[::-1]
    assert len(client.files.list(purpose="vision").data) == 2
    assert client.files.list(purpose="batch_output").data == []


def test_a_filtered_list_scans_a_bounded_number_of_files(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_files, "MAX_SCAN", 3)
    client = stack.client(EU_REGIONAL_KEY)
    batch = _create(client, 1, "batch")
    _create(client, 4, "vision")  # newer: read first
    page = client.files.list(purpose="batch", limit=1)
    assert page.data == [] and page.has_more is True  # cut short: the SDK stops here
    assert [f.id for f in client.files.list(purpose="batch", limit=1,
                                            order="asc").data] == batch


def test_an_evals_file_is_shown_as_user_data_and_listed_under_both(stack: Stack) -> None:
    # OpenAI's File schema (and the SDK's strict types) have no `evals` purpose.
    client = stack.client(EU_REGIONAL_KEY)
    made = client.files.create(file=("e.jsonl", b"{}"), purpose="evals")
    assert made.purpose == "user_data"
    assert [f.id for f in client.files.list(purpose="evals")] == [made.id]
    assert [f.id for f in client.files.list(purpose="user_data")] == [made.id]


@pytest.mark.parametrize(("query", "param"), [
    ("limit=%C2%B2", "limit"),  # a superscript two: a digit to str.isdigit
    ("limit=-1", "limit"),
    ("limit=0", "limit"),
    ("limit=10001", "limit"),
    ("limit=NaN", "limit"),
    ("limit=1e3", "limit"),
    ("limit=", "limit"),
    ("limit=99999999999999999999999", "limit"),
    ("limit=1&limit=2", "limit"),
    ("order=sideways", "order"),
    ("order=asc&order=desc", "order"),
    ("after=file-abc&after=file-def", "after"),
    ("after=..%2F..%2Fetc", "after"),
    ("after=%7B%22%24gt%22%3A%22%22%7D", "after"),  # {"$gt":""}
    ("after=file-doesnotexist", "after"),  # the shape of an id, but no file of ours
    ("purpose=nonsense", "purpose"),
    ("after[id]=file-abc", None),  # a nested cursor
    ("after%5B%5D=file-abc", None),
    ("unknown=1", None),
    ("after=%FF%FE", None),  # not UTF-8
    ("purpose=%C3", None),  # a UTF-8 sequence cut short
])
def test_hostile_list_queries_are_400_in_the_one_shape(stack: Stack, query: str,
                                                       param: str | None) -> None:
    _create(stack.client(EU_REGIONAL_KEY), 1)
    response = stack.http().get(f"/v1/files?{query}", headers={
        "Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "invalid_request", param)


def test_the_sdk_sees_a_bad_limit_as_a_bad_request(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client(EU_REGIONAL_KEY).files.list(limit=0)
    assert caught.value.param == "limit"  # type: ignore[attr-defined]


# -- shapes and expiry ------------------------------------------------------------------------


class Clock:
    """The gateway's clock for files and uploads, moved by the test (expiry takes an hour)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        fake = SimpleNamespace(time=self.now)
        monkeypatch.setattr(gateway_files, "time", fake)
        monkeypatch.setattr(gateway_uploads, "time", fake)

    def now(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def test_a_file_object_has_no_nulls_the_schema_does_not_allow(stack: Stack) -> None:
    response = stack.http().post("/v1/files", files={"file": ("a.txt", b"a")},
                                 data={"purpose": "assistants"},
                                 headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    body = response.json()
    assert set(body) == {"id", "object", "bytes", "created_at", "filename", "purpose", "status"}
    listed = stack.http().get("/v1/files", headers={
        "Authorization": f"Bearer {EU_REGIONAL_KEY}"}).json()["data"][0]
    assert listed == body


def test_expires_after_is_kept_shown_and_honoured(stack: Stack, clock: Clock) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    made = client.files.create(file=("soon.txt", b"short-lived"), purpose="assistants",
                               expires_after={"anchor": "created_at", "seconds": 3600})
    kept = client.files.create(file=("kept.txt", b"kept"), purpose="assistants")
    assert made.expires_at == made.created_at + 3600
    assert client.files.retrieve(made.id).expires_at == made.expires_at
    assert kept.expires_at is None
    clock.offset = 3599
    assert client.files.content(made.id).read() == b"short-lived"
    clock.offset = 3601
    for gone in (lambda: client.files.retrieve(made.id),
                 lambda: client.files.content(made.id)):
        with pytest.raises(openai.NotFoundError):
            gone()
    assert [f.id for f in client.files.list()] == [kept.id]
    with pytest.raises(openai.NotFoundError):
        client.files.delete(made.id)
    assert ("proj_key_eu_regional", "file", made.id) not in stack.store.blobs  # deleted too


def test_a_batch_file_expires_after_30_days_by_default(stack: Stack) -> None:
    made = stack.client(EU_REGIONAL_KEY).files.create(file=("in.jsonl", b"{}"),
                                                      purpose="batch")
    assert made.expires_at == made.created_at + 30 * 86_400


@pytest.mark.parametrize("fields", [
    {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"},
    {"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"},
    {"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
    {"expires_after[anchor]": "created_at", "expires_after[seconds]": "-3600"},
    {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600.5"},
    {"expires_after[seconds]": "3600"},
    {"expires_after[anchor]": "created_at"},
], ids=["short", "long", "anchor", "negative", "fraction", "no-anchor", "no-seconds"])
def test_a_bad_expires_after_is_400_and_stores_nothing(stack: Stack,
                                                       fields: dict[str, str]) -> None:
    response = stack.http().post("/v1/files", files={"file": ("a.txt", b"a")},
                                 data={"purpose": "assistants", **fields},
                                 headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "expires_after"
    assert stack.store.blobs == {} and stack.store.staged == 0


def test_the_sweep_deletes_expired_files_from_a_real_store(clean_disk: Disk,
                                                           clock: Clock) -> None:
    client = openai.OpenAI(base_url=clean_disk.served.url + "/v1", api_key=clean_disk.key,
                           max_retries=0, _strict_response_validation=True)
    soon = client.files.create(file=("soon.txt", b"soon gone"), purpose="user_data",
                               expires_after={"anchor": "created_at", "seconds": 7200})
    kept = client.files.create(file=("kept.txt", b"kept"), purpose="user_data")
    assert len(clean_disk.files_on_disk()) == 2
    assert gateway_files.sweep_expired_files(clean_disk.store, now=clock.now()) == 0
    clock.offset = 7200
    assert [f.id for f in client.files.list()] == [kept.id]  # expired: no longer listed
    assert gateway_files.sweep_expired_files(clean_disk.store, now=clock.now()) == 1
    assert len(clean_disk.files_on_disk()) == 1
    (project,) = clean_disk.store.tenants_holding("file")
    tenant = TenantRef(project, "eu", org_id="")
    assert [b.id for b in clean_disk.store.list_blobs(tenant, "file")] == [kept.id]
    assert soon.id != kept.id
