"""/v1/uploads: refused under zero retention (G4); under regional retention each part sealed
into the store as it arrives, within its limits or not at all; completing makes a normal File
of the parts in the order named; cancelled, completed and expired uploads keep no parts.

The official SDK (strict: every answer validates against its types) drives the happy paths;
raw HTTP the refusals. Tests about what reaches the disk run against a real site's store.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from domicile.gateway import create_gateway_app
from domicile.gateway import uploads as gateway_uploads
from domicile.storage.interfaces import TenantRef
from tests.conftest import scan_for_canary
from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, Stack
from tests.gateway.support import ServedApp
from tests.gateway.test_files import Clock, Disk, disk  # noqa: F401 - a fixture

TENANT = "proj_key_eu_regional"
AUTH = {"Authorization": f"Bearer {EU_REGIONAL_KEY}"}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def _new(client: openai.OpenAI, size: int, **extra: Any) -> Any:
    return client.uploads.create(bytes=size, filename="big.jsonl", mime_type="text/jsonl",
                                 purpose="batch", **extra)


def _parts(stack: Stack) -> list[str]:
    return [blob_id for (tenant, kind, blob_id) in stack.store.blobs if kind == "upload-part"]


def _files(stack: Stack) -> list[str]:
    return [blob_id for (tenant, kind, blob_id) in stack.store.blobs if kind == "file"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/uploads"), ("POST", "/v1/uploads/upload_abc/parts"),
    ("POST", "/v1/uploads/upload_abc/complete"), ("POST", "/v1/uploads/upload_abc/cancel"),
    ("GET", "/v1/uploads/upload_abc"), ("DELETE", "/v1/uploads/upload_abc/parts"),
])
def test_zero_retention_refuses_every_uploads_path(stack: Stack, method: str,
                                                   path: str) -> None:
    response = stack.http().request(method, path, files={"data": ("d", b"CANARY")},
                                    headers={"Authorization": f"Bearer {EU_ZERO_KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "zero_retention"
    assert stack.store.records == {} and stack.store.blobs == {}


def test_the_sdk_sees_zero_retention_on_uploads_as_a_bad_request(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _new(stack.client(), 10)
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]


def test_an_upload_in_parts_becomes_a_file_in_the_order_named(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    pieces = [b"first|" * 1000, b"second|" * 1000, b"third|" * 1000]
    upload = _new(client, sum(map(len, pieces)))
    assert (upload.status, upload.object, upload.purpose) == ("pending", "upload", "batch")
    assert upload.expires_at == upload.created_at + 3600 and upload.file is None
    parts = [client.uploads.parts.create(upload_id=upload.id, data=piece) for piece in pieces]
    assert {p.upload_id for p in parts} == {upload.id}
    assert len(_parts(stack)) == 3
    order = [parts[2], parts[0], parts[1]]
    whole = pieces[2] + pieces[0] + pieces[1]
    done = client.uploads.complete(upload_id=upload.id, part_ids=[p.id for p in order],
                                   md5=hashlib.md5(whole).hexdigest())
    assert done.status == "completed" and done.file is not None
    assert (done.file.bytes, done.file.filename, done.file.purpose) == (
        len(whole), "big.jsonl", "batch")
    assert client.files.content(done.file.id).read() == whole
    assert client.files.retrieve(done.file.id) == done.file
    assert _parts(stack) == []  # the parts are gone once the file is made
    assert [f.id for f in client.files.list(purpose="batch")] == [done.file.id]


def test_the_sdks_chunked_upload_helper_works(stack: Stack, tmp_path: Path) -> None:
    data = os.urandom(200_001)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    client = stack.client(EU_REGIONAL_KEY)
    done = client.uploads.upload_file_chunked(file=path, mime_type="application/octet-stream",
                                              purpose="user_data", part_size=64_000,
                                              md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed" and done.file is not None
    assert client.files.content(done.file.id).read() == data
    assert _parts(stack) == []


def test_expires_after_of_an_upload_is_its_files(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    upload = _new(client, 3, expires_after={"anchor": "created_at", "seconds": 7200})
    part = client.uploads.parts.create(upload_id=upload.id, data=b"abc")
    done = client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert done.file is not None and done.file.expires_at == done.file.created_at + 7200


def test_an_md5_mismatch_is_400_and_the_upload_stays_pending(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    upload = _new(client, 5)
    part = client.uploads.parts.create(upload_id=upload.id, data=b"hello")
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload_id=upload.id, part_ids=[part.id], md5="0" * 32)
    assert caught.value.param == "md5"  # type: ignore[attr-defined]
    assert _files(stack) == [] and stack.store.staged == 0
    done = client.uploads.complete(upload_id=upload.id, part_ids=[part.id],
                                   md5=hashlib.md5(b"hello").hexdigest().upper())
    assert done.status == "completed"


@pytest.mark.parametrize("choose", [
    lambda own, other: own[:1],  # short of `bytes`
    lambda own, other: [*own, other],  # another upload's part
    lambda own, other: [own[0], own[0]],  # a part twice
    lambda own, other: [*own, "part_doesnotexist"],
    lambda own, other: ["../etc/passwd"],
    lambda own, other: "not a list",
], ids=["short", "foreign-part", "twice", "unknown", "path", "not-a-list"])
def test_completing_with_the_wrong_parts_is_400_and_makes_no_file(
        stack: Stack, choose: Callable[[list[str], str], Any]) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    upload, other = _new(client, 6), _new(client, 3)
    own = [client.uploads.parts.create(upload_id=upload.id, data=b"abc").id for _ in range(2)]
    foreign = client.uploads.parts.create(upload_id=other.id, data=b"xyz").id
    response = stack.http().post(f"/v1/uploads/{upload.id}/complete", headers=AUTH,
                                 json={"part_ids": choose(own, foreign)})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "part_ids"
    assert _files(stack) == [] and stack.store.staged == 0
    assert len(_parts(stack)) == 3


def test_a_part_for_a_cancelled_or_completed_upload_is_refused(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    cancelled = _new(client, 10)
    client.uploads.parts.create(upload_id=cancelled.id, data=b"12345")
    assert _parts(stack)
    assert client.uploads.cancel(cancelled.id).status == "cancelled"
    assert _parts(stack) == []  # deleted on cancel
    completed = _new(client, 2)
    part = client.uploads.parts.create(upload_id=completed.id, data=b"ok")
    client.uploads.complete(upload_id=completed.id, part_ids=[part.id])
    for upload_id, status in ((cancelled.id, "cancelled"), (completed.id, "completed")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.uploads.parts.create(upload_id=upload_id, data=b"late")
        assert status in caught.value.message
        with pytest.raises(openai.BadRequestError):
            client.uploads.complete(upload_id=upload_id, part_ids=[part.id])
        with pytest.raises(openai.BadRequestError):
            client.uploads.cancel(upload_id)
    assert _parts(stack) == [] and len(_files(stack)) == 1


def test_an_unknown_upload_is_404(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    for upload_id in ("upload_doesnotexist", "upload_..%2F..%2Fx", "file-abc"):
        with pytest.raises(openai.NotFoundError):
            client.uploads.parts.create(upload_id=upload_id, data=b"x")
        with pytest.raises(openai.NotFoundError):
            client.uploads.cancel(upload_id)


@pytest.mark.parametrize("action", ["parts", "complete", "cancel"])
def test_a_404_quotes_only_an_id_of_our_shape(stack: Stack, action: str) -> None:
    hostile = "upload_CANARY<script>" + "x" * 200
    for upload_id, shown in ((hostile, "the given id"), ("upload_abc", "upload_abc")):
        response = stack.http().post(f"/v1/uploads/{upload_id}/{action}", headers=AUTH,
                                     json={"part_ids": []} if action == "complete" else {})
        assert response.status_code == 404, response.text
        message = response.json()["error"]["message"]
        assert message == f"No such Upload object: {shown}" and "CANARY" not in message


def _multipart(fields: list[tuple[str, bytes]], boundary: str = "XyZ") -> bytes:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="blob"'
        f"\r\n\r\n".encode() + value + b"\r\n" for name, value in fields)
    return body + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize(("fields", "param"), [
    ([("data", b"one"), ("data", b"two")], "data"),
    ([("other", b"one")], None),
    ([("data", b"x" * 11)], "data"),  # more than the upload's 10 bytes
    ([], "data"),
], ids=["two-data-parts", "unknown-field", "past-bytes", "no-data"])
def test_a_bad_part_is_400_and_stores_nothing(stack: Stack, fields: list[tuple[str, bytes]],
                                              param: str | None) -> None:
    upload = _new(stack.client(EU_REGIONAL_KEY), 10)
    response = stack.http().post(f"/v1/uploads/{upload.id}/parts",
                                 content=_multipart(fields), headers={
                                     **AUTH, "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert _parts(stack) == [] and stack.store.staged == 0


def test_parts_past_the_uploads_bytes_in_all_are_refused(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    upload = _new(client, 10)
    client.uploads.parts.create(upload_id=upload.id, data=b"x" * 6)
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.parts.create(upload_id=upload.id, data=b"x" * 5)
    assert caught.value.param == "data"  # type: ignore[attr-defined]
    assert len(_parts(stack)) == 1
    client.uploads.parts.create(upload_id=upload.id, data=b"x" * 4)


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_a_part_over_the_part_limit_is_413_and_stores_nothing(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, declare_length: bool) -> None:
    monkeypatch.setattr(gateway_uploads, "MAX_PART", 64 * 1024)
    upload = _new(stack.client(EU_REGIONAL_KEY), 10 * 1024 * 1024)
    # Past the part limit, within the request's (which allows for the multipart framing).
    body = _multipart([("data", b"x" * (64 * 1024 + 1000))])
    content: Any = body if declare_length else iter(
        [body[i:i + 16_384] for i in range(0, len(body), 16_384)])
    response = stack.http().post(f"/v1/uploads/{upload.id}/parts", content=content, headers={
        **AUTH, "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert _parts(stack) == [] and stack.store.staged == 0


@pytest.mark.parametrize(("body", "param"), [
    ({"bytes": 1, "filename": "a", "mime_type": "t", "purpose": "batch_output"}, "purpose"),
    ({"bytes": -1, "filename": "a", "mime_type": "t", "purpose": "batch"}, "bytes"),
    ({"bytes": True, "filename": "a", "mime_type": "t", "purpose": "batch"}, "bytes"),
    ({"bytes": 1.0, "filename": "a", "mime_type": "t", "purpose": "batch"}, "bytes"),
    ({"bytes": 8 * 2**30 + 1, "filename": "a", "mime_type": "t", "purpose": "batch"},
     "bytes"),
    ({"bytes": 1, "filename": "", "mime_type": "t", "purpose": "batch"}, "filename"),
    ({"bytes": 1, "filename": "a", "purpose": "batch"}, "mime_type"),
    ({"bytes": 1, "filename": "a", "mime_type": "t", "purpose": "batch",
      "expires_after": {"anchor": "created_at", "seconds": "3600"}}, "expires_after"),
    ({"bytes": 1, "filename": "a", "mime_type": "t", "purpose": "batch",
      "expires_after": {"anchor": "created_at", "seconds": 60}}, "expires_after"),
    ({"bytes": 1, "filename": "a", "mime_type": "t", "purpose": "batch", "extra": 1}, None),
    ({"bytes": 1, "filename": "a", "mime_type": "t", "purpose": ["batch"]}, "purpose"),
    ({"bytes": 1, "filename": "a", "mime_type": "t", "purpose": {}}, "purpose"),
    ({"bytes": 1, "filename": "a", "mime_type": "t", "purpose": 7}, "purpose"),
])
def test_a_bad_upload_is_400_and_keeps_nothing(stack: Stack, body: dict[str, Any],
                                               param: str | None) -> None:
    response = stack.http().post("/v1/uploads", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert stack.store.records == {}


def test_an_expired_upload_takes_nothing_more(stack: Stack, clock: Clock) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    upload = _new(client, 4)
    part = client.uploads.parts.create(upload_id=upload.id, data=b"abcd")
    clock.offset = 3600
    for late in (lambda: client.uploads.parts.create(upload_id=upload.id, data=b"x"),
                 lambda: client.uploads.complete(upload_id=upload.id, part_ids=[part.id]),
                 lambda: client.uploads.cancel(upload.id)):
        with pytest.raises(openai.BadRequestError) as caught:
            late()
        assert "expired" in caught.value.message
    assert _files(stack) == []


def test_the_sweep_deletes_expired_uploads_and_stray_parts(stack: Stack, clock: Clock) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    old = _new(client, 4)
    client.uploads.parts.create(upload_id=old.id, data=b"ab")
    clock.offset = 1800
    pending = _new(client, 4)
    for _ in range(2):
        client.uploads.parts.create(upload_id=pending.id, data=b"cd")
    done = _new(client, 1)
    client.uploads.complete(upload_id=done.id, part_ids=[
        client.uploads.parts.create(upload_id=done.id, data=b"z").id])
    # A part stored after its upload's completion had cleaned up (a race): a stray.
    stack.store.put_blob(TenantRef(TENANT, "eu", "org"), "upload-part",
                         f"{done.id}.part_stray", "part", [b"zz"], {"upload_id": done.id})
    swept = gateway_uploads.sweep_expired_uploads(stack.store, now=clock.now() + 1800)
    assert (swept.uploads, swept.parts) == (1, 2)  # the old upload and its part; the stray
    left = _parts(stack)
    assert len(left) == 2 and all(p.startswith(pending.id + ".") for p in left)
    records = {r for (_, kind, r) in stack.store.records if kind == "upload"}
    assert records == {pending.id, done.id}
    swept = gateway_uploads.sweep_expired_uploads(stack.store, now=clock.now() + 3600)
    assert (swept.uploads, swept.parts) == (2, 2)
    assert _parts(stack) == []
    assert not {r for (_, kind, r) in stack.store.records if kind == "upload"}


# -- what reaches the disk: a real site's store -----------------------------------------------


@pytest.fixture
def upload_disk(disk: Disk) -> Iterator[Disk]:  # noqa: F811 - the imported fixture
    yield disk
    gateway_uploads.sweep_expired_uploads(disk.store, now=time.time() + 86_400)
    with disk.http() as client:
        for file_id in disk.listed(client):
            client.delete(f"/v1/files/{file_id}")


def _disk_client(served: Disk) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.served.url + "/v1", api_key=served.key, max_retries=0,
                         timeout=30, _strict_response_validation=True)


def test_parts_are_sealed_at_rest_and_gone_after_cancel(upload_disk: Disk) -> None:
    canary = f"UPLOAD-CANARY-{os.urandom(8).hex()}"
    client = _disk_client(upload_disk)
    upload = _new(client, 2 * 50 * len(canary))
    for _ in range(2):
        client.uploads.parts.create(upload_id=upload.id, data=canary.encode() * 50)
    assert len(upload_disk.files_on_disk()) == 2
    assert scan_for_canary([upload_disk.blob_root.parents[1]], canary) == []
    client.uploads.cancel(upload.id)
    assert upload_disk.files_on_disk() == []


def test_a_client_that_leaves_mid_part_leaves_nothing_stored(upload_disk: Disk) -> None:
    client = _disk_client(upload_disk)
    upload = _new(client, 10 * 1024 * 1024)
    head = (b'--XyZ\r\nContent-Disposition: form-data; name="data"; filename="d"\r\n\r\n'
            + b"x" * 300_000)
    request = (f"POST /v1/uploads/{upload.id}/parts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {upload_disk.key}\r\n"
               "Content-Type: multipart/form-data; boundary=XyZ\r\n"
               f"Content-Length: {len(head) + 5_000_000}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", upload_disk.served.port)) as sock:
        sock.sendall(request + head)
        _poll(lambda: any(p.name.startswith(".") for p in upload_disk.files_on_disk()),
              "the part was never being staged")
    # Gone: the staged temp file is removed, and no part is stored.
    _poll(lambda: upload_disk.files_on_disk() == [], "a half part stayed on disk")
    (project,) = upload_disk.store.tenants_holding("upload")
    assert upload_disk.store.list_blobs(TenantRef(project, "eu", ""), "upload-part") == []
    # The upload itself still takes parts.
    part = client.uploads.parts.create(upload_id=upload.id, data=b"x")
    assert part.upload_id == upload.id


def _poll(done: Callable[[], bool], failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        time.sleep(0.02)


def test_the_sweep_deletes_an_expired_uploads_parts_from_disk(upload_disk: Disk) -> None:
    client = _disk_client(upload_disk)
    upload = _new(client, 8)
    client.uploads.parts.create(upload_id=upload.id, data=b"abcd")
    assert len(upload_disk.files_on_disk()) == 1
    assert gateway_uploads.sweep_expired_uploads(upload_disk.store).total == 0
    swept = gateway_uploads.sweep_expired_uploads(upload_disk.store, now=time.time() + 3600)
    assert (swept.uploads, swept.parts) == (1, 1)
    assert upload_disk.files_on_disk() == []
    with pytest.raises(openai.NotFoundError):
        client.uploads.cancel(upload.id)


def test_completing_streams_the_parts_into_one_sealed_file(upload_disk: Disk) -> None:
    client = _disk_client(upload_disk)
    pieces = [os.urandom(100_000) for _ in range(3)]
    upload = _new(client, 300_000)
    ids = [client.uploads.parts.create(upload_id=upload.id, data=p).id for p in pieces]
    done = client.uploads.complete(upload_id=upload.id, part_ids=ids)
    assert done.file is not None
    with httpx.Client(base_url=upload_disk.served.url, timeout=30) as http:
        got = http.get(f"/v1/files/{done.file.id}/content",
                       headers={"Authorization": f"Bearer {upload_disk.key}"}).content
    assert got == b"".join(pieces)
    assert len(upload_disk.files_on_disk()) == 1  # the file; its parts are gone


def test_a_part_opens_only_its_own_uploads_parts(upload_disk: Disk,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    client = _disk_client(upload_disk)
    busy = _new(client, 40)
    for _ in range(20):
        client.uploads.parts.create(upload_id=busy.id, data=b"ab")
    opened: list[str] = []
    store = upload_disk.store
    stored_blob = store._stored_blob

    def counted(tenant: TenantRef, row: Any) -> Any:
        opened.append(row.blob_id)
        return stored_blob(tenant, row)

    monkeypatch.setattr(store, "_stored_blob", counted)
    other = _new(client, 6)
    first = client.uploads.parts.create(upload_id=other.id, data=b"abc")
    client.uploads.parts.create(upload_id=other.id, data=b"def")
    assert opened == [f"{other.id}.{first.id}"]  # the other upload's 20 parts never opened


def test_a_part_past_the_most_an_upload_takes_is_refused(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_uploads, "MAX_PARTS", 2)
    client = stack.client(EU_REGIONAL_KEY)
    upload = _new(client, 10)
    for _ in range(2):
        client.uploads.parts.create(upload_id=upload.id, data=b"a")
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.parts.create(upload_id=upload.id, data=b"a")
    assert caught.value.param == "data"  # type: ignore[attr-defined]
    assert len(_parts(stack)) == 2


# -- complete and cancel across servers: one store-level transition --------------------------


@pytest.fixture
def second_server(upload_disk: Disk, served: Stack) -> Iterator[ServedApp]:
    """Another gateway (a replica) over the same real store as `upload_disk`'s."""
    app = create_gateway_app(upload_disk.site.settings, "eu",
                             authenticator=upload_disk.site.directory,
                             usage_sink=upload_disk.store, content_store=upload_disk.store,
                             providers=[])
    serving = ServedApp(served.loop, app)
    yield serving
    serving.stop()


def _at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


@pytest.mark.parametrize("second", ["cancel", "complete"])
def test_complete_racing_a_cancel_or_complete_on_another_server_has_one_winner(
        upload_disk: Disk, second_server: ServedApp, second: str) -> None:
    client = _disk_client(upload_disk)
    store = upload_disk.store
    with upload_disk.http() as one, httpx.Client(
            base_url=second_server.url, timeout=30,
            headers={"Authorization": f"Bearer {upload_disk.key}"}) as other:
        for _ in range(8):
            pieces = [os.urandom(200_000) for _ in range(4)]
            upload = _new(client, sum(map(len, pieces)))
            ids = [client.uploads.parts.create(upload_id=upload.id, data=p).id for p in pieces]
            files_before = set(upload_disk.listed(one))
            path = f"/v1/uploads/{upload.id}"
            answers = _at_once(
                lambda: one.post(f"{path}/complete", json={"part_ids": ids}),
                lambda: other.post(f"{path}/{second}",
                                   json={"part_ids": ids} if second == "complete" else {}))
            codes = [a.status_code for a in answers]
            assert codes.count(200) == 1 and set(codes) <= {200, 400, 409}, [
                a.text for a in answers]
            loser = next(a for a in answers if a.status_code != 200)
            assert loser.json()["error"]["type"] == "invalid_request_error"
            winner = next(a for a in answers if a.status_code == 200).json()
            made = set(upload_disk.listed(one)) - files_before
            (project,) = store.tenants_holding("upload")
            tenant = TenantRef(project, "eu", "")
            kept = gateway_uploads._load(store, tenant, upload.id)
            assert kept is not None and kept.status == winner["status"]
            if winner["status"] == "completed":
                assert made == {winner["file"]["id"]}
                assert one.get(f"/v1/files/{winner['file']['id']}/content").content == (
                    b"".join(pieces))
            else:
                assert winner["status"] == "cancelled" and made == set()
            assert store.list_blobs(tenant, "upload-part") == []


def test_the_sweep_leaves_the_parts_of_an_upload_being_completed(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    upload = _new(client, 6)
    ids = [client.uploads.parts.create(upload_id=upload.id, data=d).id for d in (b"abc", b"def")]
    opened = stack.store.open_blob
    swept: list[int] = []

    def sweep_first(*args: Any) -> Iterator[bytes]:
        if not swept:  # a sweep runs while the parts are read, the upload's hour just over
            swept.append(gateway_uploads.sweep_expired_uploads(
                stack.store, now=time.time() + 3600).total)
        return opened(*args)

    monkeypatch.setattr(stack.store, "open_blob", sweep_first)
    done = client.uploads.complete(upload_id=upload.id, part_ids=ids)
    assert swept == [0] and done.status == "completed" and done.file is not None
    assert client.files.content(done.file.id).read() == b"abcdef"


def test_a_part_gone_during_completion_is_409_and_the_upload_stays_pending(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    upload = _new(client, 6)
    ids = [client.uploads.parts.create(upload_id=upload.id, data=d).id for d in (b"abc", b"def")]
    opened = stack.store.open_blob

    def deleted_meanwhile(tenant: TenantRef, kind: str, blob_id: str) -> Iterator[bytes]:
        if blob_id.endswith(ids[1]):  # deleted by another server after the parts were listed
            stack.store.delete_blob(tenant, kind, blob_id)
        return opened(tenant, kind, blob_id)

    monkeypatch.setattr(stack.store, "open_blob", deleted_meanwhile)
    with pytest.raises(openai.ConflictError) as caught:
        client.uploads.complete(upload_id=upload.id, part_ids=ids)
    assert caught.value.param == "part_ids"  # type: ignore[attr-defined]
    assert _files(stack) == []
    monkeypatch.undo()
    assert client.uploads.cancel(upload.id).status == "cancelled"  # pending again


def test_a_completing_upload_refuses_cancel_parts_and_completion_with_409(
        stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    upload = _new(client, 3)
    tenant = TenantRef(TENANT, "eu", "")
    held = gateway_uploads._load(stack.store, tenant, upload.id)
    assert held is not None
    stack.store.put_record(tenant, "upload", upload.id,
                           held.with_status("completing").to_record())
    for attempt in (lambda: client.uploads.cancel(upload.id),
                    lambda: client.uploads.complete(upload_id=upload.id, part_ids=[]),
                    lambda: client.uploads.parts.create(upload_id=upload.id, data=b"abc")):
        with pytest.raises(openai.ConflictError):
            attempt()
    assert _parts(stack) == []
