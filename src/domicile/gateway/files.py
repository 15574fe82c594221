"""`/v1/files` for projects with regional retention: uploads go straight into the region's
encrypted `ContentStore`, streamed, never through a plaintext temporary file.

The store is blocking, so it runs in threads; an upload's bytes are pulled by the store's
thread from the request as they arrive (the thread asks the event loop for the next chunk)
and sealed into a staged blob, so no part is ever held whole, whatever the order of the
parts. That thread waits on the client, so it is one of a small pool of its own
(`UPLOAD_STREAMS`), never one of the threads key lookups and every other store call share: a
full pool answers 503 `server_busy` at once, and an upload that sends nothing for
`IDLE_READ_S` seconds ends with a 408, nothing stored.

The blob is stored (committed) only once the whole request has been read and is valid: one
`file`, one known `purpose`, the closing boundary. On anything else (a second file, a bad
purpose, a body past `max_upload` (413), a client that leaves, a store fault) the staged
blob is discarded: nothing is stored or listed.

A file may expire (`expires_after`, and every `batch` file after 30 days, as OpenAI's): from
then on it answers 404 and is not listed, and the next sweep (`sweep_expired_files`, run by
`domicile serve` every `sweep_interval_s`) deletes it. The store-level helpers here
(`store_file`, `find_file`, `file_object`, `stage_chunks`) are what other endpoints (uploads,
batches) make and read files with, so a file is the same object whoever made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from domicile.errors import BodyTooLarge, InvalidInput, NotFound, RequestTimeout, ServerBusy
from domicile.failures import describe
from domicile.inference.providers.shapes import new_id
from domicile.storage.interfaces import (
    ContentStore,
    StagedBlob,
    StoredBlob,
    TenantRef,
    UnknownCursor,
)
from domicile.tenancy.grants import ApiKeyGrant
from domicile.web.multipart import MultipartReader, boundary_of
from domicile.web.query import int_param, query_params

from .http import Exchange, header, mark_retrieved
from .residency import content_store_for, tenant_of
from .routes import Route

__all__ = [
    "FEATURE",
    "KIND",
    "PURPOSES",
    "SYSTEM_PURPOSES",
    "FilesEndpoint",
    "ListQuery",
    "UploadStreams",
    "clean_filename",
    "expires_after_seconds",
    "file_object",
    "find_file",
    "is_live",
    "parse_list_query",
    "stage_chunks",
    "store_file",
    "sweep_expired_files",
    "sweep_periodically",
    "unix",
    "valid_file_id",
]

KIND = "file"
FEATURE = "/v1/files"
MAX_UPLOAD = 512 * 1024 * 1024
# What a client may upload for; the system makes the others (a batch's output, say).
PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
SYSTEM_PURPOSES = frozenset({"assistants_output", "batch_output", "fine-tune-results"})
# OpenAI's File object has no `evals` purpose (its schema and the SDK's strict types list the
# others only): such a file is shown as `user_data`, "any purpose", and listed under both.
SHOWN_PURPOSE = {"evals": "user_data"}
EXPIRY_RANGE = (3600, 2_592_000)  # `expires_after[seconds]`: 1 hour to 30 days, as OpenAI's
BATCH_EXPIRY = 2_592_000  # a `batch` file without `expires_after` expires after 30 days
MAX_LIST = 10_000
# Rows a list reads at most per request (a filter that matches few files would otherwise read
# them all): past it, the page ends short with `has_more` (unless the page itself is larger).
MAX_SCAN = 10_000
SWEEP_INTERVAL_S = 600.0
# Uploads streaming into the store at once, per process: each holds a thread while its client
# sends (see `UploadStreams`); one more is a 503 `server_busy`, answered at once.
UPLOAD_STREAMS = 16
# An upload whose client sends no byte for this long ends (408), nothing stored: a stalled
# client never holds its thread longer.
IDLE_READ_S = 60.0
_FILE_ID = re.compile(r"^file-[A-Za-z0-9]{1,64}$")
_DIGITS = re.compile(r"[0-9]{1,10}")  # ASCII only: `str.isdigit` takes "²" and "٣"
_LIST_PARAMS = ("after", "limit", "order", "purpose")

log = logging.getLogger("domicile.gateway")
T = TypeVar("T")


def valid_file_id(file_id: str) -> bool:
    """Ids become storage keys: only the shape we issue is looked up."""
    return _FILE_ID.match(file_id) is not None


def _no_such_file(file_id: str) -> NotFound:
    """A 404 that quotes the path's id (client text) only when it has the shape of ours."""
    shown = file_id if valid_file_id(file_id) else "the given id"
    return NotFound(f"No such File object: {shown}", param="id")


def unix(moment: datetime) -> int:
    """Seconds since the epoch; a store's naive datetime is UTC (SQLite keeps no zone)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def expires_at(blob: StoredBlob) -> int | None:
    """When a file expires: its `expires_after` seconds past its creation, if it has one."""
    seconds = blob.meta.get("expires_after")
    return None if seconds is None else unix(blob.created_at) + int(seconds)


def is_live(blob: StoredBlob, now: float) -> bool:
    """Not expired at `now` (an expired file is gone for its owner, swept or not)."""
    expiry = expires_at(blob)
    return expiry is None or now < expiry


def file_object(blob: StoredBlob) -> dict[str, Any]:
    """OpenAI's File object: `expires_at` only when the file expires, no `status_details`
    (the schema has both optional and neither nullable; the SDK validates strictly)."""
    purpose = blob.meta.get("purpose", "user_data")
    shown: dict[str, Any] = {
        "id": blob.id,
        "object": "file",
        "bytes": blob.size,
        "created_at": unix(blob.created_at),
        "filename": blob.filename,
        "purpose": SHOWN_PURPOSE.get(purpose, purpose),
        "status": "processed",
    }
    expiry = expires_at(blob)
    if expiry is not None:
        shown["expires_at"] = expiry
    return shown


def _purpose_matches(blob: StoredBlob, purpose: str) -> bool:
    kept = blob.meta.get("purpose", "user_data")
    return purpose in (kept, SHOWN_PURPOSE.get(kept))


def file_meta(purpose: str, expires_after: int | None) -> dict[str, str]:
    """The metadata a file is stored with (sealed, like its name)."""
    if expires_after is None and purpose == "batch":
        expires_after = BATCH_EXPIRY
    meta = {"purpose": purpose}
    if expires_after is not None:
        meta["expires_after"] = str(expires_after)
    return meta


def expires_after_seconds(anchor: object, seconds: object, param: str = "expires_after") -> int:
    """`expires_after`'s seconds, checked: anchor `created_at`, 3600 to 2592000 seconds."""
    if anchor != "created_at":
        raise InvalidInput("`expires_after.anchor` must be `created_at`.", param=param)
    if isinstance(seconds, str) and _DIGITS.fullmatch(seconds):
        seconds = int(seconds)
    low, high = EXPIRY_RANGE
    if type(seconds) is not int or not low <= seconds <= high:
        raise InvalidInput(f"`expires_after.seconds` must be an integer from {low} to {high}.",
                           param=param)
    return seconds


def clean_filename(raw: str | None) -> str:
    """A file name without any folder, at most 255 characters."""
    name = (raw or "upload").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:255] or "upload"


def _purpose(raw: bytes) -> str:
    purpose = raw.decode("utf-8", "replace").strip()
    if purpose not in PURPOSES:
        raise InvalidInput(f"`purpose` must be one of {sorted(PURPOSES)}.", param="purpose")
    return purpose


# -- store-level helpers (blocking unless async; shared with uploads and batches) -----------


class UploadStreams:
    """The threads uploads are streamed into the store with, at most `size` at once.

    Such a thread waits on the network (for the client's next chunk), so it must not be one
    of the event loop's default threads, which key lookups on a cache miss and every short
    store call share: `size` stalled clients would stop the region. A pool of its own, with a
    slot per thread taken before anything is submitted, so work never queues behind a stalled
    upload: with every slot taken, the next upload is refused (503 `server_busy`,
    `retry-after`) at once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="domicile-upload")
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        """Uploads streaming now (each holding a thread)."""
        return self._busy

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1
        self._slots.release()

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` in one of the pool's threads; ServerBusy if all are taken."""
        if not self._slots.acquire(blocking=False):
            raise ServerBusy("Too many uploads are streaming into this region at the moment; "
                             "retry shortly.", headers=((b"retry-after", b"5"),))
        with self._lock:
            self._busy += 1

        def held() -> T:
            try:
                return work()
            finally:
                self._release()

        try:
            future: Future[T] = self._pool.submit(held)
        except BaseException:
            self._release()
            raise
        # Cancelled before it started (the request went away): `held` never runs to release.
        future.add_done_callback(lambda done: self._release() if done.cancelled() else None)
        return await asyncio.wrap_future(future)


STREAMS = UploadStreams(UPLOAD_STREAMS)


async def stage_chunks(store: ContentStore, tenant: TenantRef, kind: str, blob_id: str,
                       chunks: AsyncIterator[bytes]) -> StagedBlob:
    """Seal `chunks` (a request's bytes, as they arrive) into a staged blob. A thread of
    `STREAMS` pulls each chunk from the event loop, so nothing is held whole; an exception the
    chunks raise (a size limit, a client that left, `IDLE_READ_S` without a byte) stages
    nothing. ServerBusy (503) when every upload thread is taken."""
    loop = asyncio.get_running_loop()

    async def step() -> bytes:
        idle = IDLE_READ_S  # read per chunk (tests make it short)
        try:
            return await asyncio.wait_for(anext(chunks), idle)
        except TimeoutError:
            raise RequestTimeout(f"No bytes of the upload arrived for {idle:g} seconds; nothing "
                             "was stored.") from None

    def pull() -> Iterator[bytes]:  # runs in the store's thread
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(step(), loop).result()
            except StopAsyncIteration:
                return

    try:
        return await STREAMS.run(lambda: store.stage_blob(tenant, kind, blob_id, pull()))
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def store_file(store: ContentStore, tenant: TenantRef, chunks: Iterable[bytes], *,
               filename: str, purpose: str, expires_after: int | None = None,
               file_id: str | None = None) -> StoredBlob:
    """Store a File of `purpose` from `chunks` (streamed, sealed as they come); blocking.
    `file_object` of the result is what the API shows. For files the system makes (a
    batch's `batch_output`) as for uploads."""
    if purpose not in PURPOSES | SYSTEM_PURPOSES:
        raise ValueError(f"unknown file purpose {purpose!r}")
    return store.put_blob(tenant, KIND, file_id or new_id("file-"), clean_filename(filename),
                          chunks, file_meta(purpose, expires_after))


def find_file(store: ContentStore, tenant: TenantRef, file_id: str,
              now: float | None = None) -> StoredBlob | None:
    """The tenant's live file `file_id`, else None (unknown, of another shape, expired)."""
    if not valid_file_id(file_id):
        return None
    blob = store.get_blob(tenant, KIND, file_id)
    if blob is None or not is_live(blob, time.time() if now is None else now):
        return None
    return blob


def sweep_expired_files(store: ContentStore, now: float | None = None) -> int:
    """Delete every expired file of every tenant of the store; how many were deleted.
    Blocking; for `domicile serve`'s sweeper and `domicile retention sweep`."""
    now = time.time() if now is None else now
    deleted = 0
    for tenant_id in store.tenants_holding(KIND):
        # Reading and deleting need only the tenant's id (and this region): not its org.
        tenant = TenantRef(tenant_id, store.region, org_id="")
        for blob in store.list_blobs(tenant, KIND):
            if not is_live(blob, now) and store.delete_blob(tenant, KIND, blob.id):
                deleted += 1
    return deleted


async def sweep_periodically(what: str, region: str, sweep: Any, interval: float) -> None:
    """Run `sweep()` (blocking, returns a count) every `interval` seconds until cancelled;
    a failure is logged by type and the next round tries again."""
    while True:
        await asyncio.sleep(interval)
        try:
            count = await asyncio.to_thread(sweep)
        except Exception as exc:
            log.error("region %s: sweeping expired %s failed (%s)", region, what,
                      describe(exc, text=False))
        else:
            if count:
                log.info("region %s: deleted %d expired %s", region, count, what)


# -- GET /v1/files's query ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    limit: int = MAX_LIST
    after: str | None = None
    descending: bool = True
    purpose: str | None = None


def parse_list_query(raw: bytes) -> ListQuery:
    """`limit` (1 to 10000), `after` (a file id), `order` (`asc`/`desc`), `purpose`."""
    params = query_params(raw, _LIST_PARAMS)
    limit = int_param(params, "limit", MAX_LIST, 1, MAX_LIST)
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidInput("`order` must be `asc` or `desc`.", param="order")
    after = params.get("after")
    if after is not None and not valid_file_id(after):
        raise InvalidInput("`after` must be the id of a file (`file-…`).", param="after")
    purpose = params.get("purpose")
    if purpose is not None and purpose not in PURPOSES | SYSTEM_PURPOSES:
        raise InvalidInput(f"`purpose` must be one of {sorted(PURPOSES | SYSTEM_PURPOSES)}.",
                           param="purpose")
    return ListQuery(limit, after, order == "desc", purpose)


async def _relay(call: Exchange, chunks: Iterator[bytes]) -> None:
    """Send `chunks` (read in threads, one at a time); the generator is closed however this
    ends (its file handle released), once no thread is reading it any more."""
    reading: asyncio.Future[bytes | None] | None = None
    try:
        while True:
            reading = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
            chunk = await asyncio.shield(reading)  # cancelled: the read in flight finishes
            reading = None
            if chunk is None:
                return
            await call.stream(chunk)
    finally:
        if reading is not None:
            await asyncio.wait((reading,))
            reading.add_done_callback(mark_retrieved)
        close = getattr(chunks, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


class FilesEndpoint:
    """The `/v1/files` routes of one region's gateway; every one keeps content (G4)."""

    def __init__(self, store: ContentStore | None, region: str, *,
                 max_upload: int = MAX_UPLOAD,
                 sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._store = store
        self._region = region
        self.max_upload = max_upload
        self._sweep_interval_s = sweep_interval_s
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Sweep expired files every `sweep_interval_s` while serving."""
        store = self._store
        if store is not None and self._sweeper is None:
            self._sweeper = asyncio.ensure_future(sweep_periodically(
                "files", self._region, lambda: sweep_expired_files(store),
                self._sweep_interval_s))

    async def aclose(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(BaseException):
                await sweeper

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/files", self.upload, "createFile", FEATURE),
            Route("GET", "/v1/files", self.list, "listFiles", FEATURE),
            Route("GET", "/v1/files/{file_id}", self.retrieve, "retrieveFile", FEATURE),
            Route("DELETE", "/v1/files/{file_id}", self.delete, "deleteFile", FEATURE),
            Route("GET", "/v1/files/{file_id}/content", self.content, "downloadFile",
                  FEATURE),
        ]

    def _scope(self, grant: ApiKeyGrant) -> tuple[ContentStore, TenantRef]:
        return content_store_for(grant, self._store, FEATURE), tenant_of(grant, self._region)

    async def upload(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        boundary = boundary_of(header(call.scope, b"content-type"))
        declared = header(call.scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_upload:
            raise BodyTooLarge(f"The upload is larger than {self.max_upload} bytes.")
        reader = MultipartReader(call.receive, boundary, limit=self.max_upload)
        purpose: str | None = None
        expiry: dict[str, str] = {}
        filename = "upload"
        staged: StagedBlob | None = None
        file_id = new_id("file-")
        try:
            while (part := await reader.next_part()) is not None:
                if part.name == "purpose":
                    if purpose is not None:
                        raise InvalidInput("Send `purpose` once.", param="purpose")
                    purpose = _purpose(await reader.read(64))
                elif part.name in ("expires_after[anchor]", "expires_after[seconds]"):
                    if part.name in expiry:
                        raise InvalidInput("Send `expires_after` once.", param="expires_after")
                    try:
                        expiry[part.name] = (await reader.read(16)).decode()
                    except (UnicodeDecodeError, InvalidInput):
                        raise InvalidInput("`expires_after` is not valid.",
                                           param="expires_after") from None
                elif part.name == "file":
                    if staged is not None:
                        raise InvalidInput("Upload one file per request.", param="file")
                    filename = clean_filename(part.filename)
                    staged = await stage_chunks(store, tenant, KIND, file_id, reader.chunks())
            if staged is None:
                raise InvalidInput("The upload has no `file` part.", param="file")
            if purpose is None:
                raise InvalidInput("The upload has no `purpose` field.", param="purpose")
            expires_after = None
            if expiry:
                expires_after = expires_after_seconds(expiry.get("expires_after[anchor]"),
                                                      expiry.get("expires_after[seconds]"))
            stored = await asyncio.to_thread(store.commit_blob, staged, filename,
                                             file_meta(purpose, expires_after))
        except BaseException:
            if staged is not None:
                await asyncio.to_thread(store.discard_blob, staged)
            raise
        await call.respond_json(file_object(stored))

    async def list(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        query = parse_list_query(call.scope.get("query_string", b""))
        now = time.time()
        purpose = query.purpose

        def keep(blob: StoredBlob) -> bool:
            return is_live(blob, now) and (purpose is None or _purpose_matches(blob, purpose))

        try:
            page = await asyncio.to_thread(
                store.page_blobs, tenant, KIND, limit=query.limit, after=query.after,
                descending=query.descending, keep=keep,
                scan_limit=max(MAX_SCAN, query.limit + 1))
        except UnknownCursor:
            raise InvalidInput("`after` names no file of this project (was it deleted?).",
                               param="after") from None
        data = [file_object(b) for b in page.blobs]
        await call.respond_json({
            "object": "list", "data": data, "has_more": page.has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        })

    async def _blob(self, store: ContentStore, tenant: TenantRef, file_id: str) -> StoredBlob:
        blob = await asyncio.to_thread(find_file, store, tenant, file_id)
        if blob is None:
            raise _no_such_file(file_id)
        return blob

    async def retrieve(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        file_id = call.params[0]
        await call.respond_json(file_object(await self._blob(store, tenant, file_id)))

    async def content(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        file_id = call.params[0]
        await self._blob(store, tenant, file_id)
        try:
            chunks = await asyncio.to_thread(store.open_blob, tenant, KIND, file_id)
        except KeyError:  # a row whose bytes are gone (a delete that failed half-way)
            raise _no_such_file(file_id) from None
        await call.start_stream(b"application/octet-stream")
        # A client that leaves stops the reading and decrypting (a send after it left would
        # return quietly, and the whole blob would be read for nobody).
        await call.unless_disconnected(_relay(call, chunks))
        await call.end_stream()

    async def delete(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        file_id = call.params[0]

        def delete() -> bool:
            if not valid_file_id(file_id):
                return False
            blob = store.get_blob(tenant, KIND, file_id)
            # An expired file is gone for its owner: deleted now all the same, and a 404.
            return (store.delete_blob(tenant, KIND, file_id)
                    and (blob is None or is_live(blob, time.time())))

        if not await asyncio.to_thread(delete):
            raise _no_such_file(file_id)
        await call.respond_json({"id": file_id, "object": "file", "deleted": True})
