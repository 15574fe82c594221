"""/v1/uploads end to end, against `domicile serve`, with the official SDK: a 50 MB file sent in
parts comes back identical, and no part of it is ever on disk in plaintext (G5): not its
parts while they wait, not the file they make, not the log, not the server's temp folder.
Zero-retention projects are refused every upload path (G4), and keep nothing of what they
sent.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator

import httpx
import openai
import pytest
import trustme

from tests.conftest import scan_for_canary
from tests.e2e.conftest import Deployment, deployed
from tests.gateway.upstream import FakeUpstream

PART = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory,
         upstreams: tuple[dict[str, FakeUpstream], trustme.CA]) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("uploads"), upstreams) as deployment:
        yield deployment


def _fifty_megabytes(canary: str) -> bytes:
    """50 MB of random bytes with the canary all through it (once per MB)."""
    block = 1024 * 1024
    return b"".join(canary.encode() + os.urandom(block - len(canary)) for _ in range(50))


def test_a_50_mb_upload_in_parts_comes_back_identical_and_never_plain_at_rest(
        site: Deployment) -> None:
    canary = f"UPLOAD-CANARY-{secrets.token_hex(16)}"
    data = _fifty_megabytes(canary)
    client = site.client("eu_regional")
    upload = client.uploads.create(bytes=len(data), filename="corpus.bin", purpose="user_data",
                                   mime_type="application/octet-stream")
    part_ids = [client.uploads.parts.create(upload_id=upload.id, data=data[i:i + PART]).id
                for i in range(0, len(data), PART)]
    assert len(part_ids) == 7
    # The parts wait in the region's store: sealed, nowhere in plaintext.
    assert scan_for_canary(site.places(), canary) == []
    done = client.uploads.complete(upload_id=upload.id, part_ids=part_ids,
                                   md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed" and done.file is not None
    assert done.file.bytes == len(data)
    digest = hashlib.sha256()
    with client.files.with_streaming_response.content(done.file.id) as response:
        for chunk in response.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert scan_for_canary(site.places(), canary) == []
    # The parts are gone: one blob (the file) for the project in eu, none in us.
    eu_blobs = [p for p in (site.site.root / "eu" / "blobs").rglob("*") if p.is_file()]
    assert len(eu_blobs) == 1
    assert not [p for p in (site.site.root / "us" / "blobs").rglob("*") if p.is_file()]
    client.files.delete(done.file.id)


def test_the_sdks_chunked_helper_uploads_a_file(site: Deployment) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    client = site.client("eu_regional")
    done = client.uploads.upload_file_chunked(
        file=data, filename="helper.bin", bytes=len(data), mime_type="application/octet-stream",
        purpose="assistants", part_size=1024 * 1024, md5=hashlib.md5(data).hexdigest())
    assert done.file is not None
    assert client.files.content(done.file.id).read() == data
    client.files.delete(done.file.id)


def test_zero_retention_projects_are_refused_uploads_and_keep_nothing(
        site: Deployment) -> None:
    canary = f"ZDR-UPLOAD-CANARY-{secrets.token_hex(16)}"
    client = site.client("eu_zero")
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.create(bytes=len(canary), filename=f"{canary}.txt", purpose="batch",
                              mime_type="text/plain")
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]
    for path in ("/v1/uploads/upload_abc/parts", "/v1/uploads/upload_abc/complete",
                 "/v1/uploads/upload_abc/cancel"):
        response = httpx.post(site.site.url("eu") + path, files={"data": ("d", canary.encode())},
                              headers={"Authorization": f"Bearer {site.keys['eu_zero']}"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "zero_retention"
    assert scan_for_canary(site.places(), canary) == []
