"""The S3-compatible blob store (AWS S3, MinIO, Ceph RGW, ...): `blob_url = "s3://bucket/prefix"`.

The bytes it is given are sealed already (G5: `Envelope.seal_stream`); what S3 adds with
`sse=` is defence in depth, never instead of ours. A write is staged first, as with the file
store, and nothing is visible under its key until it is committed:

- a blob smaller than one part is held in memory and committed with one PutObject;
- a larger one streams out as a multipart upload, one part each time `part_size` bytes have
  come, up to `upload_threads` parts on the wire while the next fills (bounded: at most
  (upload_threads + 1) x part_size bytes in memory, never the whole blob); committing is
  CompleteMultipartUpload, discarding AbortMultipartUpload. A stream that fails part-way
  aborts its upload (once no part is on the wire any more) before the error goes on.

Reads stream 64 KiB at a time, and take a byte range (an HTTP Range); a body cut off part-way
is read on from where it stopped, by a ranged GET bound to the object's ETag.

An upload whose writer died (a crash) stays in the bucket, invisible but billed, until
`sweep_staged` aborts it: S3 has no lock a live writer could hold, so the sweep takes only
uploads begun more than `stale_after` seconds ago with no part newer than that (a live writer
adds a part at least every part's worth of bytes). Credentials come from boto3's default chain
(environment, shared config, instance or pod role), never from the URL.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from domicile.config import S3_OPTIONS
from domicile.errors import ConfigError
from domicile.storage.blobs import KEY, READ_SIZE, check_range, committed

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["MIN_PART_SIZE", "PART_SIZE", "PendingPut", "PendingUpload", "S3BlobStore"]

MIN_PART_SIZE: Final = 5 << 20  # S3's floor for every part but the last
PART_SIZE: Final = 8 << 20
UPLOAD_THREADS: Final = 4  # parts sent at once by one upload
STALE_AFTER: Final = 3600.0
READ_RESUMES: Final = 3  # a body cut off mid-read is read on from where it stopped, this often
BUCKET: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_READ_ERRORS: Final = (ConnectionClosedError, IncompleteReadError, ReadTimeoutError,
                       ResponseStreamingError)
_ABSENT: Final = frozenset({"404", "NoSuchKey", "NotFound"})

SSE = Literal["AES256", "aws:kms"]


class _SSEArgs(TypedDict, total=False):
    ServerSideEncryption: SSE
    SSEKMSKeyId: str


class PendingPut:
    """A staged blob smaller than one part: its bytes in memory, written by `commit`."""

    def __init__(self, store: S3BlobStore, key: str, data: bytes) -> None:
        self.key = key
        self.size = len(data)
        self._store = store
        self._data: bytes | None = data

    def commit(self) -> None:
        data, self._data = self._data, None
        if data is None:
            raise RuntimeError("a staged blob is committed or discarded once")
        self._store.client.put_object(Bucket=self._store.bucket, Key=self._store.name(self.key),
                                      Body=data, **self._store.sse_args)

    def discard(self) -> None:
        self._data = None


class PendingUpload:
    """A staged multipart upload: every part sent, the blob not yet under its key."""

    def __init__(self, store: S3BlobStore, key: str, upload_id: str,
                 parts: list[CompletedPartTypeDef], size: int) -> None:
        self.key = key
        self.size = size
        self.upload_id = upload_id
        self._store = store
        self._parts = parts
        # A cancelled commit's thread and the request's own discard can run at once: the
        # first to take the upload decides, the other finds it gone.
        self._lock = threading.Lock()
        self._open = True

    def commit(self) -> None:
        with self._lock:
            if not self._open:
                raise RuntimeError("a staged blob is committed or discarded once")
            self._store.client.complete_multipart_upload(
                Bucket=self._store.bucket, Key=self._store.name(self.key),
                UploadId=self.upload_id, MultipartUpload={"Parts": self._parts})
            self._open = False

    def discard(self) -> None:
        """Abort the upload (idempotent; after a commit, nothing to do)."""
        with self._lock:
            if self._open:
                self._store.abort(self.key, self.upload_id)
                self._open = False


class S3BlobStore:
    """Blobs as objects `<prefix>/<key>` of one bucket. Thread-safe (boto3 clients are)."""

    stale_after: float = STALE_AFTER  # seconds an upload is idle before a sweep takes it

    def __init__(self, bucket: str, prefix: str, *, client: S3Client, sse: SSE | None = None,
                 sse_kms_key_id: str | None = None, part_size: int = PART_SIZE,
                 upload_threads: int = UPLOAD_THREADS, stale_after: float | None = None) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size is at least {MIN_PART_SIZE} bytes (S3's floor)")
        if sse_kms_key_id is not None and sse != "aws:kms":
            raise ValueError("sse_kms_key_id needs sse='aws:kms'")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.part_size = part_size
        self.upload_threads = max(1, upload_threads)
        if stale_after is not None:
            self.stale_after = stale_after
        self.sse_args: _SSEArgs = {}
        if sse is not None:
            self.sse_args["ServerSideEncryption"] = sse
        if sse_kms_key_id is not None:
            self.sse_args["SSEKMSKeyId"] = sse_kms_key_id

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @classmethod
    def from_url(cls, url: str, *, field: str) -> S3BlobStore:
        """The store `s3://bucket/prefix?endpoint_url=…&region=…&sse=…&sse_kms_key_id=…`
        names; `field` names the setting in a ConfigError. Credentials: boto3's default
        chain."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(field, "an S3 URL names its bucket: s3://bucket/prefix")
        if "@" in parts.netloc:
            raise ConfigError(field, "must not carry credentials (boto3's default chain "
                                     "supplies them: environment, config file or role)")
        if not BUCKET.match(parts.netloc):
            raise ConfigError(field, "not a valid S3 bucket name")
        prefix = parts.path.strip("/")
        if prefix and not KEY.match(prefix):
            raise ConfigError(field, "the prefix is path segments of letters, digits, _ . -")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - S3_OPTIONS
        if unknown:
            raise ConfigError(field, f"unknown S3 option {sorted(unknown)[0]!r}")
        if any(len(values) != 1 or not values[0] for values in query.values()):
            raise ConfigError(field, "each S3 option takes exactly one value")
        options = {name: values[0] for name, values in query.items()}
        sse = options.get("sse")
        if sse is not None and sse not in ("AES256", "aws:kms"):
            raise ConfigError(field, "sse is AES256 or aws:kms")
        if "sse_kms_key_id" in options and sse != "aws:kms":
            raise ConfigError(field, "sse_kms_key_id needs sse=aws:kms")
        client = boto3.session.Session().client(
            "s3", endpoint_url=options.get("endpoint_url"),
            region_name=options.get("region", options.get("region_name")),
            config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 5},
                                          max_pool_connections=32))
        return cls(parts.netloc, prefix, client=client, sse=sse,  # type: ignore[arg-type]
                   sse_kms_key_id=options.get("sse_kms_key_id"))

    def name(self, key: str) -> str:
        """The object name of `key` (ValueError for a key the file store would refuse)."""
        if not KEY.match(key):
            raise ValueError(f"invalid blob key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- writes ---------------------------------------------------------------------------

    def stage(self, key: str, chunks: Iterable[bytes]) -> PendingPut | PendingUpload:
        """Stream `chunks` out; nothing is visible under `key` until the commit."""
        name = self.name(key)
        buffer = bytearray()
        source = iter(chunks)
        for chunk in source:
            buffer += chunk
            if len(buffer) >= self.part_size:
                break
        else:
            return PendingPut(self, key, bytes(buffer))
        # CRC32 per part, checked by the service, and named again at the completion.
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=name, ChecksumAlgorithm="CRC32", **self.sse_args)["UploadId"]
        sender = _PartSender(self, name, upload_id)
        try:
            while True:
                if len(buffer) >= self.part_size:
                    sender.send(bytes(buffer))
                    buffer.clear()
                following = next(source, None)
                if following is None:
                    break
                buffer += following
            if buffer or not sender.size:
                sender.send(bytes(buffer))
            parts = sender.finish()
        except BaseException:
            sender.stop()  # no part may land after the abort
            self.abort(key, upload_id)
            raise
        return PendingUpload(self, key, upload_id, parts, sender.size)

    def abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload (one already gone is no error)."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.name(key),
                                               UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":
                raise

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        return committed(self.stage(key, chunks))

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The blob's bytes `[start, end)` (to its end if `end` is None), read as they come in
        chunks of at most 64 KiB; KeyError if there is none. A body cut off part-way is read
        on from where it stopped (a ranged GET of the same version, by ETag)."""
        check_range(start, end)
        name = self.name(key)
        if end is not None and end == start:  # no bytes asked for: only whether it is there
            if not self.exists(key):
                raise KeyError(key)
            return iter(())
        answer = self._get_object(key, name, start, end, None)
        if answer is None:
            return iter(())
        return self._read(key, name, answer, start, end)

    def _get_object(self, key: str, name: str, start: int, end: int | None,
                    etag: str | None) -> Any:
        extra: dict[str, str] = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if etag is not None:
            extra["IfMatch"] = etag
        try:
            return self.client.get_object(Bucket=self.bucket, Key=name, **extra)  # type: ignore[arg-type]
        except ClientError as exc:
            code = _code(exc)
            if code in _ABSENT:
                raise KeyError(key) from None
            if code == "InvalidRange":  # past the end (or an empty blob): no bytes
                return None
            raise

    def _read(self, key: str, name: str, answer: Any, start: int,
              end: int | None) -> Iterator[bytes]:
        etag = answer["ETag"]
        position = start
        resumes = 0
        body = answer["Body"]
        try:
            while True:
                try:
                    chunk = body.read(READ_SIZE)
                except _READ_ERRORS:
                    body.close()
                    resumes += 1
                    if resumes > READ_RESUMES:
                        raise
                    # The same object (If-Match: a blob replaced meanwhile fails, it is not
                    # spliced), from the first byte not yet given out.
                    answer = self._get_object(key, name, position, end, etag)
                    if answer is None:
                        return
                    body = answer["Body"]
                    continue
                if not chunk:
                    return
                position += len(chunk)
                yield chunk
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.name(key))
        except ClientError as exc:
            if _code(exc) in _ABSENT:
                return False
            raise
        return True

    def keys(self, prefix: str = "") -> Iterator[str]:
        """The keys starting with `prefix`, in order (objects whose names no key could have
        are not ours, and are skipped)."""
        root = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root + prefix)
        for page in pages:
            for item in page.get("Contents", ()):
                key = item["Key"][len(root):]
                if KEY.match(key):
                    yield key

    # -- removal --------------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        """Delete the blob; True if there was one. (DeleteObject answers alike either way,
        hence the HeadObject first.)"""
        if not self.exists(key):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.name(key))
        return True

    def sweep_staged(self) -> int:
        """Abort the uploads of writers that are gone: begun more than `stale_after` seconds
        ago and with no part sent since. Returns how many were aborted."""
        return self.abort_staged("", stale_after=self.stale_after)

    def abort_staged(self, prefix: str, *, stale_after: float | None = None) -> int:
        """Abort the multipart uploads of keys under `prefix`: all of them (an erasure), or
        only those idle for `stale_after` seconds. Returns how many were aborted."""
        root = f"{self.prefix}/" if self.prefix else ""
        cutoff = None
        if stale_after is not None:
            cutoff = datetime.now(UTC) - timedelta(seconds=stale_after)
        aborted = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=root + prefix)
        for page in pages:
            for upload in page.get("Uploads", ()):
                key, upload_id = upload["Key"][len(root):], upload["UploadId"]
                if not KEY.match(key):
                    continue
                if cutoff is not None and (upload["Initiated"] > cutoff
                                           or self._last_part(upload["Key"], upload_id) > cutoff):
                    continue
                self.abort(key, upload_id)
                aborted += 1
        return aborted

    def _last_part(self, name: str, upload_id: str) -> datetime:
        last = datetime.min.replace(tzinfo=UTC)
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=name, UploadId=upload_id)
            for page in pages:
                for part in page.get("Parts", ()):
                    last = max(last, part["LastModified"])
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":
                raise
            return datetime.max.replace(tzinfo=UTC)  # gone meanwhile: nothing to abort
        return last


class _PartSender:
    """Sends a multipart upload's parts in order, up to `upload_threads` at once (the sealing
    goes on meanwhile): at most that many parts, and the one being filled, are in memory."""

    def __init__(self, store: S3BlobStore, name: str, upload_id: str) -> None:
        self._store = store
        self._name = name
        self._upload_id = upload_id
        self._threads = ThreadPoolExecutor(max_workers=store.upload_threads,
                                           thread_name_prefix="s3-part")
        self._in_flight: deque[Future[CompletedPartTypeDef]] = deque()
        self._parts: list[CompletedPartTypeDef] = []
        self.size = 0

    def send(self, data: bytes) -> None:
        while len(self._in_flight) >= self._store.upload_threads:
            self._parts.append(self._in_flight.popleft().result())
        number = len(self._parts) + len(self._in_flight) + 1
        self._in_flight.append(self._threads.submit(self._upload, number, data))
        self.size += len(data)

    def _upload(self, number: int, data: bytes) -> CompletedPartTypeDef:
        answer = self._store.client.upload_part(
            Bucket=self._store.bucket, Key=self._name, UploadId=self._upload_id,
            PartNumber=number, Body=data, ChecksumAlgorithm="CRC32")
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": answer["ETag"]}
        if "ChecksumCRC32" in answer:
            part["ChecksumCRC32"] = answer["ChecksumCRC32"]
        return part

    def finish(self) -> list[CompletedPartTypeDef]:
        while self._in_flight:
            self._parts.append(self._in_flight.popleft().result())
        self._threads.shutdown()
        return self._parts

    def stop(self) -> None:
        """Cancel the parts not begun and wait for those on the wire."""
        self._threads.shutdown(wait=True, cancel_futures=True)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
