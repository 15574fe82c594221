"""`/v1/files` for projects with regional retention: uploads go straight into the region's
encrypted `ContentStore`, streamed, never through a plaintext temporary file.

The store is blocking, so it runs in threads; an upload's bytes are pulled by the store's
thread from the request as they arrive (the thread asks the event loop for the next chunk)
and sealed into a staged blob, so no part is ever held whole, whatever the order of the
parts. The blob is stored (committed) only once the whole request has been read and is
valid: one `file`, one known `purpose`, the closing boundary. On anything else (a second
file, a bad purpose, a body past `max_upload` (413), a client that leaves, a store fault)
the staged blob is discarded: nothing is stored or listed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs

from domicile.errors import BodyTooLarge, InvalidInput, NotFound
from domicile.inference.providers.shapes import new_id
from domicile.storage.interfaces import ContentStore, StagedBlob, StoredBlob, TenantRef
from domicile.tenancy.grants import ApiKeyGrant
from domicile.web.multipart import MultipartReader, boundary_of

from .http import Exchange, header
from .residency import content_store_for, tenant_of
from .routes import Route

__all__ = ["FilesEndpoint", "valid_file_id"]

KIND = "file"
MAX_UPLOAD = 512 * 1024 * 1024
PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
_FILE_ID = re.compile(r"^file-[A-Za-z0-9]{1,64}$")


def valid_file_id(file_id: str) -> bool:
    """Ids become storage keys: only the shape we issue is looked up."""
    return _FILE_ID.match(file_id) is not None


def _file_object(blob: StoredBlob) -> dict[str, Any]:
    return {
        "id": blob.id,
        "object": "file",
        "bytes": blob.size,
        "created_at": int(blob.created_at.timestamp()),
        "filename": blob.filename,
        "purpose": blob.meta.get("purpose", "user_data"),
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def _filename(raw: str | None) -> str:
    name = (raw or "upload").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:255] or "upload"


def _purpose(raw: bytes) -> str:
    purpose = raw.decode("utf-8", "replace").strip()
    if purpose not in PURPOSES:
        raise InvalidInput(f"`purpose` must be one of {sorted(PURPOSES)}.", param="purpose")
    return purpose


FEATURE = "/v1/files"


class FilesEndpoint:
    """The `/v1/files` routes of one region's gateway; every one keeps content (G4)."""

    def __init__(self, store: ContentStore | None, region: str, *,
                 max_upload: int = MAX_UPLOAD) -> None:
        self._store = store
        self._region = region
        self.max_upload = max_upload

    async def start(self) -> None:
        """Nothing runs beside these requests."""

    async def aclose(self) -> None:
        """Nothing to stop."""

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
        filename = "upload"
        staged: StagedBlob | None = None
        file_id = new_id("file-")
        try:
            while (part := await reader.next_part()) is not None:
                if part.name == "purpose":
                    if purpose is not None:
                        raise InvalidInput("Send `purpose` once.", param="purpose")
                    purpose = _purpose(await reader.read(64))
                elif part.name == "file":
                    if staged is not None:
                        raise InvalidInput("Upload one file per request.", param="file")
                    filename = _filename(part.filename)
                    staged = await self._stage(store, tenant, file_id, reader.chunks())
            if staged is None:
                raise InvalidInput("The upload has no `file` part.", param="file")
            if purpose is None:
                raise InvalidInput("The upload has no `purpose` field.", param="purpose")
            stored = await asyncio.to_thread(store.commit_blob, staged, filename,
                                             {"purpose": purpose})
        except BaseException:
            if staged is not None:
                await asyncio.to_thread(store.discard_blob, staged)
            raise
        await call.respond_json(_file_object(stored))

    async def _stage(self, store: ContentStore, tenant: TenantRef, file_id: str,
                     chunks: AsyncIterator[bytes]) -> StagedBlob:
        loop = asyncio.get_running_loop()

        async def step() -> bytes:
            return await anext(chunks)

        def pull() -> Iterator[bytes]:  # runs in the store's thread
            while True:
                try:
                    yield asyncio.run_coroutine_threadsafe(step(), loop).result()
                except StopAsyncIteration:
                    return

        try:
            return await asyncio.to_thread(store.stage_blob, tenant, KIND, file_id, pull())
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def list(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        query = parse_qs(call.scope.get("query_string", b"").decode("latin-1"))
        purpose = query.get("purpose", [None])[0]
        blobs = await asyncio.to_thread(store.list_blobs, tenant, KIND)
        data = [_file_object(b) for b in blobs
                if purpose is None or b.meta.get("purpose") == purpose]
        await call.respond_json({
            "object": "list", "data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        })

    async def _blob(self, store: ContentStore, tenant: TenantRef, file_id: str) -> StoredBlob:
        blob = None
        if valid_file_id(file_id):
            blob = await asyncio.to_thread(store.get_blob, tenant, KIND, file_id)
        if blob is None:
            raise NotFound(f"No such File object: {file_id}", param="id")
        return blob

    async def retrieve(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        file_id = call.params[0]
        await call.respond_json(_file_object(await self._blob(store, tenant, file_id)))

    async def content(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        file_id = call.params[0]
        await self._blob(store, tenant, file_id)
        try:
            chunks = await asyncio.to_thread(store.open_blob, tenant, KIND, file_id)
        except KeyError:  # a row whose bytes are gone (a delete that failed half-way)
            raise NotFound(f"No such File object: {file_id}", param="id") from None
        await call.start_stream(b"application/octet-stream")
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await call.stream(chunk)
        await call.end_stream()

    async def delete(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        file_id = call.params[0]
        deleted = valid_file_id(file_id) and await asyncio.to_thread(
            store.delete_blob, tenant, KIND, file_id)
        if not deleted:
            raise NotFound(f"No such File object: {file_id}", param="id")
        await call.respond_json({"id": file_id, "object": "file", "deleted": True})
