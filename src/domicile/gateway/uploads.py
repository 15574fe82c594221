"""`/v1/uploads`: a large file sent in parts, for projects with regional retention (G4).

An Upload is a sealed record (kind `upload`: name, purpose, size, status) that lives one hour.
Each part is sealed into the region's store as it arrives (a blob of kind `upload-part`, id
`<upload id>.<part id>`), streamed like a file upload: never spooled, never whole in memory,
and stored only once the request is complete and within the limits (64 MB a part, and no more
than the upload's `bytes` in all), else discarded. Completing streams the named parts, in the
given order, out of the store and into a new File's blob (sealed again as it goes, the MD5
taken on the way), then deletes the parts. Cancelling deletes them at once; the sweep
(`sweep_expired_uploads`, run by `domicile serve`) deletes an upload and whatever parts it
still has once its hour is over, and the parts of uploads no longer pending.

Completing and cancelling are serialised across every server of the region by the store:
each begins with a compare-and-swap of the upload's record (`claim_record` with `expect`), from
`pending` to `completing` (or `cancelled`), so of two requests (on any replica) one wins and
the other is a 409. A `completing` upload takes no part, no cancel and no second completion
(409), and the sweep leaves its parts alone; a completion that fails puts it back to
`pending`. A part that lands while its upload completes or is cancelled is deleted by
whichever looks last (the part, after storing itself, or the completion, after marking the
upload done), or by the sweep.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from domicile.errors import BodyTooLarge, Conflict, InvalidInput, NotFound
from domicile.inference.providers.shapes import new_id
from domicile.storage.interfaces import ContentStore, StagedBlob, StoredBlob, TenantRef
from domicile.tenancy.grants import ApiKeyGrant
from domicile.web.multipart import MultipartReader, boundary_of

from . import files
from .files import (
    PURPOSES,
    SWEEP_INTERVAL_S,
    expires_after_seconds,
    file_meta,
    file_object,
    stage_chunks,
    sweep_periodically,
)
from .http import Exchange, header, parse_json_object
from .residency import content_store_for, tenant_of
from .routes import Route

__all__ = [
    "FEATURE",
    "PART_KIND",
    "UPLOAD_KIND",
    "UploadSweep",
    "UploadsEndpoint",
    "sweep_expired_uploads",
]

FEATURE = "/v1/uploads"
UPLOAD_KIND = "upload"
PART_KIND = "upload-part"
UPLOAD_LIFETIME_S = 3600  # as OpenAI's: an upload expires an hour after it was created
MAX_PART = 64 * 1024 * 1024  # as OpenAI's
MAX_UPLOAD_BYTES = 8 * 1024 * 1024 * 1024  # as OpenAI's: 8 GB in all
MAX_PARTS = 10_000
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around a part's data
_UPLOAD_ID = re.compile(r"^upload_[A-Za-z0-9]{1,64}$")
_PART_ID = re.compile(r"^part_[A-Za-z0-9]{1,64}$")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_CREATE_FIELDS = frozenset({"bytes", "filename", "mime_type", "purpose", "expires_after"})

log = logging.getLogger("domicile.gateway")


@dataclass(frozen=True, slots=True)
class Upload:
    """An upload as kept (sealed) in its record."""

    id: str
    filename: str
    purpose: str
    bytes: int
    mime_type: str
    created_at: int
    status: str  # pending, completing (claimed by a completion), completed, cancelled
    expires_after: int | None = None  # the File's, once made
    file: dict[str, Any] | None = None  # the File object, once completed

    @property
    def expires_at(self) -> int:
        return self.created_at + UPLOAD_LIFETIME_S

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def shown(self, now: float) -> dict[str, Any]:
        """OpenAI's Upload object."""
        # `completing` is ours: OpenAI's Upload (and the SDK's strict types) know `pending`.
        status = "pending" if self.status == "completing" else self.status
        status = "expired" if status == "pending" and self.expired(now) else status
        return {
            "id": self.id, "object": "upload", "bytes": self.bytes,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "filename": self.filename, "purpose": self.purpose, "status": status,
            "file": self.file,
        }

    def to_record(self) -> builtins.bytes:
        return json.dumps({
            "filename": self.filename, "purpose": self.purpose, "bytes": self.bytes,
            "mime_type": self.mime_type, "created_at": self.created_at, "status": self.status,
            "expires_after": self.expires_after, "file": self.file,
        }).encode()

    @classmethod
    def from_record(cls, upload_id: str, body: builtins.bytes) -> Upload:
        return cls(upload_id, **json.loads(body))

    def with_status(self, status: str, file: dict[str, Any] | None = None) -> Upload:
        return Upload(self.id, self.filename, self.purpose, self.bytes, self.mime_type,
                      self.created_at, status, self.expires_after, file)


@dataclass(frozen=True, slots=True)
class UploadSweep:
    uploads: int  # expired uploads deleted (with their parts)
    parts: int  # parts deleted whose upload was gone, completed or cancelled

    @property
    def total(self) -> int:
        return self.uploads + self.parts


# -- the store (blocking) --------------------------------------------------------------------


def _part_blob_id(upload_id: str, part_id: str) -> str:
    return f"{upload_id}.{part_id}"


def _load(store: ContentStore, tenant: TenantRef, upload_id: str) -> Upload | None:
    found = _load_raw(store, tenant, upload_id)
    return None if found is None else found[0]


def _load_raw(store: ContentStore, tenant: TenantRef,
              upload_id: str) -> tuple[Upload, builtins.bytes] | None:
    """The upload and its record as stored (what a compare-and-swap of it expects)."""
    if not _UPLOAD_ID.match(upload_id):
        return None
    body = store.get_record(tenant, UPLOAD_KIND, upload_id)
    return None if body is None else (Upload.from_record(upload_id, body), body)


def _swap(store: ContentStore, tenant: TenantRef, upload_id: str, expect: builtins.bytes,
          new: Upload) -> bool:
    """Write `new` only if the record still holds `expect` (atomic across servers)."""
    return store.claim_record(tenant, UPLOAD_KIND, upload_id, new.to_record(),
                              stale_after=0, expect=expect)


def _check_pending(upload: Upload | None, upload_id: str, now: float) -> Upload:
    """The upload, if it still takes parts, completion or cancellation; else 404/409/400."""
    if upload is None:
        # A path's id is client text: quoted only when it has the shape of ours.
        shown = upload_id if _UPLOAD_ID.match(upload_id) else "the given id"
        raise NotFound(f"No such Upload object: {shown}", param="upload_id")
    if upload.status == "completing":
        raise Conflict("This upload is being completed by another request.",
                       param="upload_id")
    if upload.status != "pending":
        raise InvalidInput(f"This upload is {upload.status}.", param="upload_id")
    if upload.expired(now):
        raise InvalidInput("This upload has expired (an upload lives one hour).",
                           param="upload_id")
    return upload


def _completing_abandoned(upload: Upload, now: float) -> bool:
    """A completion that never finished (its server died): swept an hour after the upload
    expired, never while a completion may still be running."""
    return upload.status == "completing" and now >= upload.expires_at + UPLOAD_LIFETIME_S


def _sweepable(upload: Upload, now: float) -> bool:
    return ((upload.expired(now) and upload.status != "completing")
            or _completing_abandoned(upload, now))


def _parts_of(store: ContentStore, tenant: TenantRef, upload_id: str) -> list[StoredBlob]:
    """This upload's parts, looked up by their ids' prefix: never the tenant's other parts."""
    return store.list_blobs(tenant, PART_KIND, prefix=upload_id + ".")


def _delete_parts(store: ContentStore, tenant: TenantRef, upload_id: str) -> int:
    return sum(store.delete_blob(tenant, PART_KIND, part.id)
               for part in _parts_of(store, tenant, upload_id))


def _assemble(store: ContentStore, tenant: TenantRef, upload: Upload, part_ids: list[str],
              md5: str | None) -> Upload:
    """The upload's File from its parts in `part_ids` order, streamed from the store into a
    new blob; the upload marked completed, its parts deleted."""
    parts = {part.id: part for part in _parts_of(store, tenant, upload.id)}
    blob_ids = [_part_blob_id(upload.id, part_id) for part_id in part_ids]
    if any(blob_id not in parts for blob_id in blob_ids):
        raise InvalidInput("`part_ids` names a part that is not one of this upload's.",
                           param="part_ids")
    total = sum(parts[blob_id].size for blob_id in blob_ids)
    if total != upload.bytes:
        raise InvalidInput(f"The parts hold {total} bytes; the upload was created for "
                           f"{upload.bytes}.", param="part_ids")
    digest = hashlib.md5(usedforsecurity=False)  # a transfer check, as OpenAI's

    def chunks() -> Iterator[bytes]:
        for blob_id in blob_ids:
            try:
                opened = store.open_blob(tenant, PART_KIND, blob_id)
                for chunk in opened:
                    digest.update(chunk)
                    yield chunk
            except KeyError:  # deleted meanwhile (by a cancel or sweep elsewhere)
                raise Conflict("A part of this upload was deleted while it was completed.",
                               param="part_ids") from None

    staged = store.stage_blob(tenant, files.KIND, new_id("file-"), chunks())
    try:
        if staged.size != upload.bytes:  # a part changed under us: never a short file
            raise InvalidInput("The upload's parts changed while it was completed.",
                               param="part_ids")
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise InvalidInput("The MD5 of the parts is not the `md5` given.", param="md5")
    except BaseException:
        store.discard_blob(staged)
        raise
    stored = store.commit_blob(staged, upload.filename,
                               file_meta(upload.purpose, upload.expires_after))
    done = upload.with_status("completed", file_object(stored))
    try:
        if not _swap(store, tenant, upload.id, upload.to_record(), done):
            raise Conflict("This upload was changed while it was completed.",
                           param="upload_id")
    except BaseException:
        store.delete_blob(tenant, files.KIND, stored.id)
        raise
    _delete_parts(store, tenant, upload.id)
    return done


def _leave_pending(store: ContentStore, tenant: TenantRef, upload_id: str,
                   status: str) -> tuple[Upload, Upload]:
    """(the pending upload, the same now `status`), swapped atomically in the store: of a
    completion and a cancel on any servers, one wins and the other gets a 409."""
    found = _load_raw(store, tenant, upload_id)
    upload = _check_pending(found[0] if found else None, upload_id, time.time())
    assert found is not None
    changed = upload.with_status(status)
    if not _swap(store, tenant, upload_id, found[1], changed):
        raise Conflict("This upload was completed or cancelled by another request.",
                       param="upload_id")
    return upload, changed


def _complete(store: ContentStore, tenant: TenantRef, upload_id: str, part_ids: list[str],
              md5: str | None) -> Upload:
    """Claim the upload (pending -> completing, atomically: one completion or cancel wins,
    on whichever server) and make its File; a completion that fails puts it back."""
    upload, completing = _leave_pending(store, tenant, upload_id, "completing")
    try:
        return _assemble(store, tenant, completing, part_ids, md5)
    except BaseException:
        _swap(store, tenant, upload_id, completing.to_record(), upload)  # pending again
        raise


def _cancel(store: ContentStore, tenant: TenantRef, upload_id: str) -> Upload:
    _, cancelled = _leave_pending(store, tenant, upload_id, "cancelled")
    _delete_parts(store, tenant, upload_id)
    return cancelled


def sweep_expired_uploads(store: ContentStore, now: float | None = None) -> UploadSweep:
    """Delete every upload past its hour, with its parts, and every part whose upload is gone
    or no longer pending (one that landed while its upload completed). Blocking; for
    `domicile serve`'s sweeper and `domicile retention sweep`."""
    now = time.time() if now is None else now
    uploads = parts = 0
    for tenant_id in store.tenants_holding(UPLOAD_KIND):
        # Reading and deleting need only the tenant's id (and this region): not its org.
        tenant = TenantRef(tenant_id, store.region, org_id="")
        for upload_id in store.list_records(tenant, UPLOAD_KIND):
            upload = _load(store, tenant, upload_id)
            if upload is not None and _sweepable(upload, now):
                parts += _delete_parts(store, tenant, upload_id)
                uploads += store.delete_record(tenant, UPLOAD_KIND, upload_id)
    for tenant_id in store.tenants_holding(PART_KIND):
        tenant = TenantRef(tenant_id, store.region, org_id="")
        for part in store.list_blobs(tenant, PART_KIND):
            upload = _load(store, tenant, part.id.split(".", 1)[0])
            if (upload is None or upload.status in ("completed", "cancelled")
                    or _sweepable(upload, now)):
                parts += store.delete_blob(tenant, PART_KIND, part.id)
    return UploadSweep(uploads, parts)


# -- requests ---------------------------------------------------------------------------------


def _text(parsed: dict[str, Any], name: str, longest: int) -> str:
    value = parsed.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > longest:
        raise InvalidInput(f"`{name}` must be a string of 1 to {longest} characters.",
                           param=name)
    return value


def _size(parsed: dict[str, Any]) -> int:
    value = parsed.get("bytes")
    if type(value) is not int or not 0 <= value <= MAX_UPLOAD_BYTES:
        raise InvalidInput(f"`bytes` must be an integer from 0 to {MAX_UPLOAD_BYTES}.",
                           param="bytes")
    return value


def _expires_after(parsed: dict[str, Any]) -> int | None:
    value = parsed.get("expires_after")
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"anchor", "seconds"}:
        raise InvalidInput("`expires_after` must be {\"anchor\": \"created_at\", "
                           "\"seconds\": N}.", param="expires_after")
    seconds = value.get("seconds")
    if isinstance(seconds, str):  # JSON has numbers for that
        raise InvalidInput("`expires_after.seconds` must be an integer.", param="expires_after")
    return expires_after_seconds(value.get("anchor"), seconds)


def _part_ids(parsed: dict[str, Any]) -> list[str]:
    value = parsed.get("part_ids")
    if (not isinstance(value, list) or len(value) > MAX_PARTS
            or not all(isinstance(p, str) and _PART_ID.match(p) for p in value)):
        raise InvalidInput(f"`part_ids` must be a list of at most {MAX_PARTS} part ids.",
                           param="part_ids")
    if len(set(value)) != len(value):
        raise InvalidInput("`part_ids` names a part twice.", param="part_ids")
    return value


def _md5(parsed: dict[str, Any]) -> str | None:
    value = parsed.get("md5")
    if value is None:
        return None
    if not isinstance(value, str) or not _MD5.match(value):
        raise InvalidInput("`md5` must be 32 hexadecimal digits.", param="md5")
    return value


async def _within(chunks: AsyncIterator[bytes], room: int) -> AsyncIterator[bytes]:
    """A part's bytes, refused (before anything is stored) once past 64 MB or past what the
    upload has room for."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_PART:
            raise BodyTooLarge(f"A part may hold at most {MAX_PART} bytes.")
        if size > room:
            raise InvalidInput("The parts would hold more than the upload's `bytes`.",
                               param="data")
        yield chunk


class UploadsEndpoint:
    """The `/v1/uploads` routes of one region's gateway; every one keeps content (G4)."""

    def __init__(self, store: ContentStore | None, region: str, *,
                 sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._store = store
        self._region = region
        self._sweep_interval_s = sweep_interval_s
        self._sweeper: asyncio.Task[None] | None = None

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/uploads", self.create, "createUpload", FEATURE),
            Route("POST", "/v1/uploads/{upload_id}/parts", self.add_part, "addUploadPart",
                  FEATURE),
            Route("POST", "/v1/uploads/{upload_id}/complete", self.complete,
                  "completeUpload", FEATURE),
            Route("POST", "/v1/uploads/{upload_id}/cancel", self.cancel, "cancelUpload",
                  FEATURE),
        ]

    async def start(self) -> None:
        """Sweep expired uploads and stray parts every `sweep_interval_s` while serving."""
        store = self._store
        if store is not None and self._sweeper is None:
            self._sweeper = asyncio.ensure_future(sweep_periodically(
                "uploads and parts", self._region,
                lambda: sweep_expired_uploads(store).total, self._sweep_interval_s))

    async def aclose(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)

    def _scope(self, grant: ApiKeyGrant) -> tuple[ContentStore, TenantRef]:
        return content_store_for(grant, self._store, FEATURE), tenant_of(grant, self._region)

    async def _pending(self, store: ContentStore, tenant: TenantRef, upload_id: str) -> Upload:
        """The upload, if it still takes parts, completion or cancellation; else 404/409/400."""
        upload = await asyncio.to_thread(_load, store, tenant, upload_id)
        return _check_pending(upload, upload_id, time.time())

    async def create(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        parsed = parse_json_object(await call.read_body(64 * 1024))
        if set(parsed) - _CREATE_FIELDS:
            raise InvalidInput("Unknown parameter: an upload takes `bytes`, `filename`, "
                               "`mime_type`, `purpose` and `expires_after`.")
        filename = files.clean_filename(_text(parsed, "filename", 1024))
        purpose = parsed.get("purpose")
        if not isinstance(purpose, str) or purpose not in PURPOSES:  # a list is unhashable
            raise InvalidInput(f"`purpose` must be one of {sorted(PURPOSES)}.", param="purpose")
        upload = Upload(new_id("upload_"), filename, purpose, _size(parsed),
                        _text(parsed, "mime_type", 255), int(time.time()), "pending",
                        _expires_after(parsed))
        await asyncio.to_thread(store.put_record, tenant, UPLOAD_KIND, upload.id,
                                upload.to_record())
        await call.respond_json(upload.shown(time.time()))

    async def add_part(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        upload_id = call.params[0]
        upload = await self._pending(store, tenant, upload_id)
        boundary = boundary_of(header(call.scope, b"content-type"))
        limit = MAX_PART + _MULTIPART_OVERHEAD
        declared = header(call.scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"A part may hold at most {MAX_PART} bytes.")
        parts = await asyncio.to_thread(_parts_of, store, tenant, upload_id)
        if len(parts) >= MAX_PARTS:
            raise InvalidInput(f"An upload takes at most {MAX_PARTS} parts.", param="data")
        held = sum(p.size for p in parts)
        reader = MultipartReader(call.receive, boundary, limit=limit)
        part_id = new_id("part_")
        blob_id = _part_blob_id(upload_id, part_id)
        staged: StagedBlob | None = None
        try:
            while (part := await reader.next_part()) is not None:
                if part.name != "data":
                    raise InvalidInput("A part is sent in one multipart field, `data`.")
                if staged is not None:
                    raise InvalidInput("Send one `data` field per part.", param="data")
                staged = await stage_chunks(store, tenant, PART_KIND, blob_id,
                                            _within(reader.chunks(), upload.bytes - held))
            if staged is None:
                raise InvalidInput("The part has no `data` field.", param="data")
            stored = await asyncio.to_thread(store.commit_blob, staged, "part",
                                             {"upload_id": upload_id})
        except BaseException:
            if staged is not None:
                await asyncio.to_thread(store.discard_blob, staged)
            raise
        try:
            await self._pending(store, tenant, upload_id)  # completed or cancelled meanwhile?
        except BaseException:
            await asyncio.to_thread(store.delete_blob, tenant, PART_KIND, blob_id)
            raise
        await call.respond_json({"id": part_id, "object": "upload.part",
                                 "created_at": files.unix(stored.created_at),
                                 "upload_id": upload_id})

    async def complete(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        upload_id = call.params[0]
        parsed = parse_json_object(await call.read_body(1024 * 1024))
        if set(parsed) - {"part_ids", "md5"}:
            raise InvalidInput("Unknown parameter: completing takes `part_ids` and `md5`.")
        part_ids, md5 = _part_ids(parsed), _md5(parsed)
        done = await asyncio.to_thread(_complete, store, tenant, upload_id, part_ids, md5)
        await call.respond_json(done.shown(time.time()))

    async def cancel(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        upload_id = call.params[0]
        cancelled = await asyncio.to_thread(_cancel, store, tenant, upload_id)
        await call.respond_json(cancelled.shown(time.time()))
