"""/v1/files: refused under zero retention (G4); under regional retention streamed into the
region's content store, never through a temporary file."""

from __future__ import annotations

import tempfile
from typing import Any

import openai
import pytest

from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, Stack
from tests.gateway.support import grant


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
