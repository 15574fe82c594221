"""`/v1/batches`: JSONL files of requests run in the region (regional retention only).

The routes are thin: create checks what OpenAI checks at once (the endpoint, the window,
the metadata, an input file of purpose `batch` in this project) and keeps the batch; the
input file's lines are validated by the worker (a bad file fails the batch with `errors`,
never a 500). The rules are in `batch_jobs`, the running in `batch_worker`; docs/BATCH.md
says what is kept, where, and how a restart resumes.

Every route keeps content: a zero-retention project is refused with 400 `zero_retention`
(G4), whatever the path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Callable
from typing import Any

from domicile.errors import Conflict, InvalidInput, NotFound
from domicile.inference.providers.shapes import new_id
from domicile.inference.usage import UsageRecorder
from domicile.storage.interfaces import ContentStore, TenantRef
from domicile.tenancy.grants import ApiKeyGrant
from domicile.web.query import int_param, query_params

from . import batch_jobs as jobs
from .batch_jobs import BatchRecord
from .batch_worker import BatchWorker
from .files import find_file, valid_file_id
from .http import Exchange, parse_json_object
from .residency import content_store_for, tenant_of
from .routes import Route, RouteTable

__all__ = ["FEATURE", "BatchesEndpoint"]

FEATURE = "/v1/batches"
_BATCH_ID = re.compile(r"^batch_[A-Za-z0-9]{1,64}$")
_CANCELLABLE = frozenset({"validating", "in_progress"})
_LIST_PARAMS = ("after", "limit")
MAX_LIST = 100


def _no_batch(batch_id: str) -> NotFound:
    # Client text is never quoted back (it lands in logs): an id only if it has our shape.
    shown = f" with id '{batch_id}'" if _BATCH_ID.match(batch_id) else ""
    return NotFound(f"No batch found{shown}.", param="batch_id")


def parse_list_query(raw: bytes) -> tuple[int, str | None]:
    """`limit` (1 to 100, default 20) and `after` (a batch id) of GET /v1/batches, by the
    rule of GET /v1/files: each parameter once, UTF-8, none other; anything else is a 400
    that never quotes the client's text."""
    found = query_params(raw, _LIST_PARAMS)
    limit = int_param(found, "limit", 20, 1, MAX_LIST)
    after = found.get("after")
    if after is not None and not _BATCH_ID.match(after):
        raise InvalidInput("`after` must be the id of a batch (`batch_…`).", param="after")
    return limit, after


class BatchesEndpoint:
    """The `/v1/batches` routes and the worker that runs the batches (`start`/`aclose` with
    the gateway). Without a content store there is no worker: the routes answer 503."""

    def __init__(self, store: ContentStore | None, region: str,
                 routes: Callable[[], RouteTable], *, usage: UsageRecorder | None = None,
                 offers: Callable[[str], bool] | None = None, **worker: Any) -> None:
        self._store = store
        self._region = region
        self.worker = None if store is None else BatchWorker(
            store, region, routes, usage=usage, offers=offers, **worker)

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/batches", self.create, "createBatch", FEATURE),
            Route("GET", "/v1/batches", self.list, "listBatches", FEATURE),
            Route("GET", "/v1/batches/{batch_id}", self.retrieve, "retrieveBatch", FEATURE),
            Route("POST", "/v1/batches/{batch_id}/cancel", self.cancel, "cancelBatch",
                  FEATURE),
        ]

    async def start(self) -> None:
        if self.worker is not None:
            await self.worker.start()

    async def aclose(self) -> None:
        if self.worker is not None:
            await self.worker.aclose()

    def _scope(self, grant: ApiKeyGrant) -> tuple[ContentStore, TenantRef]:
        store = content_store_for(grant, self._store, FEATURE)
        # G7: batch records are never marked as consented to training (see batch_worker).
        return store, dataclasses.replace(tenant_of(grant, self._region),
                                          training_consent=False)

    async def create(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        parsed = parse_json_object(await call.read_body())
        endpoint = parsed.get("endpoint")
        if endpoint not in jobs.ENDPOINTS:
            raise InvalidInput(f"`endpoint` must be one of {', '.join(jobs.ENDPOINTS)}.",
                               param="endpoint")
        if parsed.get("completion_window") != jobs.COMPLETION_WINDOW:
            raise InvalidInput("`completion_window` must be \"24h\".",
                               param="completion_window")
        metadata = jobs.check_metadata(parsed.get("metadata"))
        input_file_id = parsed.get("input_file_id")
        if not isinstance(input_file_id, str):
            raise InvalidInput("`input_file_id` must be a file id.", param="input_file_id")
        # Unknown, of another shape, of another project or expired: all the same 404.
        blob = await asyncio.to_thread(find_file, store, tenant, input_file_id)
        if blob is None:
            shown = f": {input_file_id}" if valid_file_id(input_file_id) else "."
            raise NotFound(f"No such File object{shown}", param="input_file_id")
        if blob.meta.get("purpose") != "batch":
            raise InvalidInput("The input file must be uploaded with purpose \"batch\".",
                               param="input_file_id")
        if blob.size > jobs.MAX_INPUT_BYTES:
            raise InvalidInput(f"The input file is larger than {jobs.MAX_INPUT_BYTES:,} "
                               "bytes.", param="input_file_id")
        batch_id = new_id("batch_")
        record = BatchRecord(jobs.batch_object(batch_id, input_file_id, str(endpoint),
                                               metadata), grant)

        def keep() -> None:
            # Marked active first: an active mark without its batch is dropped by the worker,
            # a batch without its mark would never run.
            store.put_record(tenant, jobs.ACTIVE_KIND, batch_id, b"{}")
            store.put_record(tenant, jobs.KIND, batch_id, record.dump())

        await asyncio.to_thread(keep)
        if self.worker is not None:
            self.worker.submit(tenant.id, batch_id)
        await call.respond_json(record.batch)

    async def _load(self, store: ContentStore, tenant: TenantRef,
                    batch_id: str) -> dict[str, Any]:
        """The batch as shown: a cancel asked for but not yet seen by the worker shows as
        `cancelling` at once."""
        def load() -> dict[str, Any] | None:
            raw = store.get_record(tenant, jobs.KIND, batch_id)
            if raw is None:
                return None
            batch: dict[str, Any] = BatchRecord.load(raw).batch
            if batch["status"] in _CANCELLABLE:
                asked = store.get_record(tenant, jobs.CANCEL_KIND, batch_id)
                if asked is not None:
                    batch["status"] = "cancelling"
                    batch["cancelling_at"] = json.loads(asked)["at"]
            return batch

        batch = await asyncio.to_thread(load) if _BATCH_ID.match(batch_id) else None
        if batch is None:
            raise _no_batch(batch_id)
        return batch

    async def retrieve(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        await call.respond_json(await self._load(store, tenant, call.params[0]))

    async def list(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        limit, after = parse_list_query(call.scope.get("query_string", b""))
        ids = list(reversed(await asyncio.to_thread(store.list_records, tenant, jobs.KIND)))
        if after is not None:
            if after not in ids:
                raise InvalidInput("`after` names no batch of this project.", param="after")
            ids = ids[ids.index(after) + 1:]
        data = [await self._load(store, tenant, batch_id) for batch_id in ids[:limit]]
        await call.respond_json({
            "object": "list", "data": data, "has_more": len(ids) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        })

    async def cancel(self, call: Exchange, grant: ApiKeyGrant) -> None:
        store, tenant = self._scope(grant)
        batch_id = call.params[0]
        batch = await self._load(store, tenant, batch_id)
        if batch["status"] in ("cancelling", "cancelled"):
            await call.respond_json(batch)
            return
        if batch["status"] not in _CANCELLABLE:
            raise Conflict(f"Cannot cancel a batch with status '{batch['status']}'.",
                           param="batch_id")
        now = int(time.time())
        # The worker alone writes the batch record; a cancel is a record of its own, seen by
        # whichever process runs the batch.
        def ask() -> BatchRecord | None:
            """The cancel record, kept unless the batch ended meanwhile: then its worker's
            cleanup may have run before this write, and nothing else would delete it."""
            store.put_record(tenant, jobs.CANCEL_KIND, batch_id,
                             json.dumps({"at": now}).encode())
            raw = store.get_record(tenant, jobs.KIND, batch_id)
            record = None if raw is None else BatchRecord.load(raw)
            if record is None or record.status in jobs.TERMINAL:
                store.delete_record(tenant, jobs.CANCEL_KIND, batch_id)
            return record

        seen = await asyncio.to_thread(ask)
        if seen is None:
            raise _no_batch(batch_id)
        if seen.status in jobs.TERMINAL:
            if seen.status == "cancelled":
                await call.respond_json(seen.batch)
                return
            raise Conflict(f"Cannot cancel a batch with status '{seen.status}'.",
                           param="batch_id")
        if self.worker is not None:
            self.worker.cancel(batch_id)
        await call.respond_json({**batch, "status": "cancelling", "cancelling_at": now})
