"""The S3 blob store's own behaviour, against moto's server mode (an emulator of S3, not S3):
multipart staging that streams, aborts on failure and leaves no upload behind, SSE headers
sent, ranged reads across parts, reads resumed after a cut connection, the sweep of crashed
writers' uploads, URLs, and a region's store on S3 with no plaintext in the bucket. (The
behaviour it shares with the file store: tests/storage/test_blobs.py.)"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from domicile.config import load_settings
from domicile.errors import ConfigError
from domicile.site import Site
from domicile.storage.blobs import open_blob_store
from domicile.storage.interfaces import TenantRef
from domicile.storage.s3 import MIN_PART_SIZE, PendingPut, PendingUpload, S3BlobStore
from tests.conftest import SiteFactory, canary_forms
from tests.services import MotoServer

MIB = 1 << 20


def s3_store(url: str, **options: Any) -> S3BlobStore:
    store = open_blob_store(url)
    assert isinstance(store, S3BlobStore)
    if options:
        store = S3BlobStore(store.bucket, store.prefix, client=store.client,
                            sse=store.sse_args.get("ServerSideEncryption"),
                            sse_kms_key_id=store.sse_args.get("SSEKMSKeyId"), **options)
    return store


def uploads(store: S3BlobStore) -> list[dict[str, Any]]:
    return list(store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []))


def blob(size: int, seed: int = 0) -> bytes:
    return (seed.to_bytes(4, "big") + os.urandom(60)) * (size // 64) + os.urandom(size % 64)


def chunked(data: bytes, size: int = 1 << 16) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at:at + size]


def test_a_blob_larger_than_a_part_streams_out_as_a_multipart_upload(s3_bucket: str) -> None:
    # One part on the wire at a time: when part 2 is sent, part 1 has landed.
    store = s3_store(s3_bucket, part_size=MIN_PART_SIZE, upload_threads=1)
    data = blob(12 * MIB)
    parts_seen_before_the_end: list[int] = []

    def source() -> Iterator[bytes]:
        for at in range(0, len(data), 1 << 16):
            if at == 11 * MIB:  # the stream is not over: parts must be out already
                (upload,) = uploads(store)
                parts = store.client.list_parts(Bucket=store.bucket, Key=upload["Key"],
                                                UploadId=upload["UploadId"])
                parts_seen_before_the_end.append(len(parts.get("Parts", [])))
            yield data[at:at + (1 << 16)]

    pending = store.stage("t/file/big", source())
    assert len(parts_seen_before_the_end) == 1 and parts_seen_before_the_end[0] >= 1
    assert isinstance(pending, PendingUpload) and pending.size == len(data)
    parts = store.client.list_parts(Bucket=store.bucket, Key="blobs/t/file/big",
                                    UploadId=pending.upload_id)["Parts"]
    assert [p["Size"] for p in parts] == [5 * MIB, 5 * MIB, 2 * MIB]
    assert not store.exists("t/file/big") and list(store.keys()) == []
    pending.commit()
    assert uploads(store) == []
    head = store.client.head_object(Bucket=store.bucket, Key="blobs/t/file/big")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')
    assert b"".join(store.get("t/file/big")) == data


def test_the_default_part_size_and_a_small_blob_in_one_put(s3_bucket: str) -> None:
    store = s3_store(s3_bucket)
    data = blob(12 * MIB)
    pending = store.stage("t/file/big", chunked(data))
    assert isinstance(pending, PendingUpload)
    parts = store.client.list_parts(Bucket=store.bucket, Key="blobs/t/file/big",
                                    UploadId=pending.upload_id)["Parts"]
    assert [p["Size"] for p in parts] == [8 * MIB, 4 * MIB]
    pending.commit()
    small = store.stage("t/file/small", chunked(blob(store.part_size - 1)))
    assert isinstance(small, PendingPut) and uploads(store) == []
    small.commit()
    assert sorted(store.keys()) == ["t/file/big", "t/file/small"]


def test_a_staged_upload_discarded_leaves_no_upload(s3_bucket: str) -> None:
    store = s3_store(s3_bucket, part_size=MIN_PART_SIZE)
    pending = store.stage("t/file/big", chunked(blob(11 * MIB)))
    assert len(uploads(store)) == 1
    with pytest.raises(KeyError):
        store.get("t/file/big")
    pending.discard()
    pending.discard()  # idempotent
    assert uploads(store) == [] and list(store.keys()) == []
    with pytest.raises(RuntimeError):
        pending.commit()  # a discarded upload cannot come back


def test_a_discard_after_the_commit_keeps_the_blob(s3_bucket: str) -> None:
    store = s3_store(s3_bucket, part_size=MIN_PART_SIZE)
    data = blob(6 * MIB)
    pending = store.stage("t/file/big", chunked(data))
    pending.commit()
    pending.discard()
    assert b"".join(store.get("t/file/big")) == data


def test_a_stream_that_fails_part_way_aborts_its_upload(s3_bucket: str) -> None:
    store = s3_store(s3_bucket, part_size=MIN_PART_SIZE)
    store.put("t/file/big", [b"old"])

    def broken() -> Iterator[bytes]:
        yield from chunked(blob(7 * MIB))  # one part out, the next begun
        raise RuntimeError("the sealer failed")

    with pytest.raises(RuntimeError):
        store.stage("t/file/big", broken())
    assert uploads(store) == []
    assert b"".join(store.get("t/file/big")) == b"old"


def test_sse_headers_reach_the_service(s3_bucket: str, kms_key: str) -> None:
    aes = s3_store(s3_bucket + "&sse=AES256", part_size=MIN_PART_SIZE)
    aes.put("t/file/small", [b"x"])
    aes.put("t/file/big", chunked(blob(6 * MIB)))
    for key in ["blobs/t/file/small", "blobs/t/file/big"]:
        head = aes.client.head_object(Bucket=aes.bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256", key
    kms = s3_store(s3_bucket + f"&sse=aws:kms&sse_kms_key_id={kms_key}",
                   part_size=MIN_PART_SIZE)
    kms.put("t/file/small-kms", [b"x"])
    kms.put("t/file/big-kms", chunked(blob(6 * MIB)))
    for key in ["blobs/t/file/small-kms", "blobs/t/file/big-kms"]:
        head = kms.client.head_object(Bucket=kms.bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"] == kms_key, key
    plain = s3_store(s3_bucket)
    plain.put("t/file/plain", [b"x"])
    head = plain.client.head_object(Bucket=plain.bucket, Key="blobs/t/file/plain")
    assert head.get("ServerSideEncryption") in (None, "AES256")  # the bucket's default, if any
    assert "SSEKMSKeyId" not in head


def test_ranged_reads_across_parts(s3_bucket: str) -> None:
    store = s3_store(s3_bucket, part_size=MIN_PART_SIZE)
    data = blob(11 * MIB)
    store.put("t/file/big", chunked(data))
    for start, end in [(5 * MIB - 10, 5 * MIB + 10), (10 * MIB, None), (3, 7), (0, 11 * MIB)]:
        assert b"".join(store.get("t/file/big", start, end)) == data[start:end]


class CuttingProxy:
    """A loopback TCP proxy to moto that cuts the first connection's response after
    `cut_after` bytes (a connection lost mid-body); later connections pass whole."""

    def __init__(self, upstream: str, cut_after: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.cut_after = cut_after
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.cut_after if self.connections == 1 else None
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(1 << 16):
                if limit is not None and sent + len(data) >= limit:
                    sink.sendall(data[:limit - sent])
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def cutting_proxy(moto: MotoServer) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(moto.endpoint_url, cut_after=300_000)
    yield proxy
    proxy.close()


def test_a_read_cut_off_part_way_resumes_where_it_stopped(
        s3_bucket: str, moto: MotoServer, cutting_proxy: CuttingProxy) -> None:
    data = blob(2 * MIB)
    s3_store(s3_bucket).put("t/file/a", [data])
    reader = s3_store(s3_bucket.replace(moto.endpoint_url, cutting_proxy.url))
    assert b"".join(reader.get("t/file/a", 1000)) == data[1000:]
    assert cutting_proxy.connections == 2  # the cut one, then the resumed read


def test_a_resumed_read_never_splices_in_a_replaced_blob(
        s3_bucket: str, moto: MotoServer, cutting_proxy: CuttingProxy) -> None:
    writer = s3_store(s3_bucket)
    writer.put("t/file/a", [blob(2 * MIB, seed=1)])
    reader = s3_store(s3_bucket.replace(moto.endpoint_url, cutting_proxy.url))
    chunks = reader.get("t/file/a")
    next(chunks)
    writer.put("t/file/a", [blob(2 * MIB, seed=2)])  # replaced while the read is cut off
    with pytest.raises(ClientError) as caught:
        b"".join(chunks)
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"


def test_the_sweep_aborts_only_idle_uploads_under_its_prefix(s3_bucket: str) -> None:
    store = s3_store(s3_bucket, part_size=MIN_PART_SIZE)
    crashed = store.stage("t/file/crashed", chunked(blob(6 * MIB)))  # never committed
    assert isinstance(crashed, PendingUpload)
    foreign = store.client.create_multipart_upload(Bucket=store.bucket, Key="other/x")
    assert store.sweep_staged() == 0  # begun just now: it may be a live writer's
    assert len(uploads(store)) == 2
    idle_at_once = s3_store(s3_bucket, part_size=MIN_PART_SIZE, stale_after=0)
    assert idle_at_once.sweep_staged() == 1
    assert [u["UploadId"] for u in uploads(store)] == [foreign["UploadId"]]
    store.client.abort_multipart_upload(Bucket=store.bucket, Key="other/x",
                                        UploadId=foreign["UploadId"])


def test_abort_staged_takes_every_upload_under_a_prefix(s3_bucket: str) -> None:
    store = s3_store(s3_bucket, part_size=MIN_PART_SIZE)
    store.stage("t1/file/a", chunked(blob(6 * MIB)))
    kept = store.stage("t2/file/b", chunked(blob(6 * MIB)))
    assert store.abort_staged("t1/") == 1
    assert [u["Key"] for u in uploads(store)] == ["blobs/t2/file/b"]
    kept.discard()


@pytest.mark.parametrize("url", [
    "s3:///prefix", "s3://user:secret@bucket/p", "s3://Bad_Bucket/p", "s3://bucket/../x",
    "s3://bucket/p?colour=red", "s3://bucket/p?sse=DES", "s3://bucket/p?sse_kms_key_id=k",
    "s3://bucket/p?region=a&region=b", "s3://bucket/p?endpoint_url=",
])
def test_a_bad_url_is_a_config_error_naming_its_field(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        S3BlobStore.from_url(url, field="regions.eu.blob_url")
    assert caught.value.field == "regions.eu.blob_url"
    assert "secret" not in str(caught.value)


def test_a_url_names_bucket_prefix_and_sse() -> None:
    store = S3BlobStore.from_url("s3://bucket-1/a/b?region_name=eu-west-1&sse=aws:kms"
                                 "&sse_kms_key_id=alias/x", field="blob_url")
    assert (store.bucket, store.prefix) == ("bucket-1", "a/b")
    assert store.sse_args == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/x"}
    assert store.client.meta.region_name == "eu-west-1"
    assert store.name("t/file/x") == "a/b/t/file/x"
    assert "bucket-1" in repr(store) and "alias" not in repr(store)


# -- a region's content store on S3 ----------------------------------------------------------


@pytest.fixture
def s3_site(make_site: SiteFactory, s3_bucket: str) -> Site:
    """A site whose region eu keeps its blobs in a bucket of moto's S3 emulator."""
    site = make_site()
    config = site.settings.config_path
    body = config.read_text()
    old = 'blob_url = "file://eu/blobs"'
    assert old in body, "not a config `domicile init` wrote"
    config.write_text(body.replace(old, f'blob_url = "{s3_bucket}"'))
    site.close()
    reopened = Site(load_settings(config))
    reopened.migrate()
    return reopened


def test_a_regional_store_on_s3_round_trips_with_no_plaintext_in_the_bucket(
        s3_site: Site) -> None:
    canary = f"CANARY-{secrets.token_hex(12)}"
    org = s3_site.directory.create_org("Acme")
    project = s3_site.directory.create_project(org.id, "app", "eu", retention="regional")
    tenant = TenantRef(project.id, "eu", org.id)
    store = s3_site.store("eu")
    blobs = store.blobs
    assert isinstance(blobs, S3BlobStore)
    big = (canary.encode() + os.urandom(40)) * (300_000)  # ~19 MiB: a multipart upload
    for blob_id, data in [("small", canary.encode() * 100), ("big", big), ("empty", b"")]:
        store.put_blob(tenant, "file", blob_id, f"{canary}.txt", chunked(data), {"p": canary})
        assert b"".join(store.open_blob(tenant, "file", blob_id)) == data
    assert sorted(blobs.keys()) == [f"{tenant.id}/file/{name}"
                                    for name in ("big", "empty", "small")]
    staged = store.stage_blob(tenant, "file", "discarded", chunked(big))
    store.discard_blob(staged)
    assert uploads(blobs) == []
    assert store.delete_blob(tenant, "file", "small")
    assert not blobs.exists(f"{tenant.id}/file/small")

    def objects_holding(forms: list[bytes]) -> list[str]:
        hits = []
        for page in blobs.client.get_paginator("list_objects_v2").paginate(Bucket=blobs.bucket):
            for item in page.get("Contents", []):
                body = blobs.client.get_object(Bucket=blobs.bucket, Key=item["Key"])["Body"].read()
                hits += [item["Key"] for form in forms if form in body]
        return hits

    assert objects_holding(canary_forms(canary)) == []
    blobs.put("planted", [canary.encode()])  # the scan can fail
    assert objects_holding(canary_forms(canary)) == ["blobs/planted"]


def test_the_site_sweeps_an_s3_region_when_it_opens(s3_site: Site,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = s3_site.store("eu").blobs
    assert isinstance(blobs, S3BlobStore)
    blobs.stage("t/file/a", chunked(blob(9 * MIB)))  # begun now: it may be a live writer's
    s3_site.open_for_serving()
    assert len(uploads(blobs)) == 1
    # An hour later (the store's idle bound, brought to now), its writer is taken for dead.
    monkeypatch.setattr(S3BlobStore, "stale_after", 0.0)
    s3_site.open_for_serving()
    assert uploads(blobs) == []


def test_an_erasure_leaves_no_object_and_no_unfinished_upload_of_the_tenant(
        s3_site: Site) -> None:
    import domicile.workspace.models  # noqa: F401 - registers the tables erasure goes through
    from domicile.compliance.erasure import Erasure

    org = s3_site.directory.create_org("Acme")
    erased = s3_site.directory.create_project(org.id, "gone", "eu", retention="regional")
    kept = s3_site.directory.create_project(org.id, "kept", "eu", retention="regional")
    store = s3_site.store("eu")
    blobs = store.blobs
    assert isinstance(blobs, S3BlobStore)
    for project in (erased, kept):
        tenant = TenantRef(project.id, "eu", org.id)
        store.put_blob(tenant, "file", "f1", "a.txt", [b"kept until erased"])
        store.stage_blob(tenant, "file", "f2", chunked(blob(9 * MIB)))  # an upload cut short
    Erasure(s3_site.directory, s3_site.store, list(s3_site.settings.regions),
            s3_site.directory_engine).erase("project", erased.id)
    assert list(blobs.keys(f"{erased.id}/")) == []
    assert [u["Key"] for u in uploads(blobs)] == [f"blobs/{kept.id}/file/f2"]
    assert list(blobs.keys(f"{kept.id}/")) == [f"{kept.id}/file/f1"]
