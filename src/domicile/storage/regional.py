"""A region's content store: every content byte sealed under the tenant's data key (G5).

Rows and blobs record their region; this store refuses a tenant of another region (and the
database refuses a row of another region, see the migration's triggers). Ciphertexts are
bound to (region, tenant, kind, record id): moved to another row they will not open.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from domicile.compliance.audit import AuditLog
from domicile.crypto import Context, Envelope, KeyProvider, TenantErased
from domicile.crypto.wrapping import KekRefused, TenantKeyRefused
from domicile.errors import CrossRegionWrite, StorageError, TenantDataErased
from domicile.failures import describe
from domicile.storage.faults import is_full
from domicile.storage.interfaces import (
    BlobPage,
    BlobStore,
    StagedBlob,
    StoredBlob,
    TenantRef,
    UnknownCursor,
    UsageRecord,
)
from domicile.storage.models import (
    AUDIT_HEAD,
    AUDIT_LOG,
    BlobRow,
    RecordRow,
    StoreIdentity,
    UsageRow,
)
from domicile.tenancy.grants import GLOBAL_REGION

__all__ = ["RegionalStore", "claim_region"]

BLOB_META_KIND = "blob-meta"
PAGE_BATCH = 500  # rows read at a time for a page of blobs

log = logging.getLogger("domicile.storage")


def _beyond(position: tuple[datetime, str], descending: bool) -> ColumnElement[bool]:
    """The rows after `position` (created_at, id) in a page's order."""
    at, blob_id = position
    if descending:
        return or_(BlobRow.created_at < at, and_(BlobRow.created_at == at,
                                                 BlobRow.blob_id < blob_id))
    return or_(BlobRow.created_at > at, and_(BlobRow.created_at == at, BlobRow.blob_id > blob_id))


def claim_region(engine: Engine, region: str) -> None:
    """Stamp a fresh store with its region, or check that an existing one is this region's."""
    with Session(engine) as session, session.begin():
        owner = session.scalar(select(StoreIdentity.region))
        if owner is None:
            session.add(StoreIdentity(region=region, created_at=datetime.now(UTC)))
        elif owner != region:
            raise StorageError(
                f"the database configured for region {region!r} belongs to region {owner!r}"
            )


class RegionalStore:
    def __init__(self, region: str, engine: Engine, blobs: BlobStore, keys: KeyProvider, *,
                 audit_key: bytes, key_cache_s: float = 60.0) -> None:
        self.region = region
        self.engine = engine
        self.blobs = blobs
        self.keys = keys
        # key_cache_s bounds how long a shred made elsewhere goes unseen here (docs/KEYS.md).
        self.envelope = Envelope(keys, cache_ttl_s=key_cache_s)
        self.audit = AuditLog(engine, region, AUDIT_LOG, AUDIT_HEAD, key=audit_key)
        self._keyed_global_tenants: set[str] = set()

    def __repr__(self) -> str:
        return f"RegionalStore(region={self.region!r})"

    # -- residency --------------------------------------------------------------------------

    def _context(self, tenant: TenantRef, kind: str, record_id: str) -> Context:
        if tenant.region not in (self.region, GLOBAL_REGION):
            raise CrossRegionWrite(
                f"the store of region {self.region} refuses a tenant of region {tenant.region}"
            )
        return Context(self.region, tenant.id, kind, record_id)

    def _sealing_context(self, tenant: TenantRef, kind: str, record_id: str) -> Context:
        """The context to write under. A pinned tenant's data key was made with the tenant
        (by the directory) and is never made again here, so a shredded tenant stays
        shredded; a per-request-residency tenant gets its key in a region on first write,
        unless the keystore's tombstone says its data there was erased."""
        context = self._context(tenant, kind, record_id)
        if tenant.region == GLOBAL_REGION and tenant.id not in self._keyed_global_tenants:
            with self._refusing_erased():
                self.envelope.create_tenant_key(tenant.id)  # idempotent
            self._keyed_global_tenants.add(tenant.id)
        return context

    @contextlib.contextmanager
    def _refusing_erased(self) -> Iterator[None]:
        """A write for a tenant whose keys were shredded (here or by another process) is
        refused as such (410), not as a missing key."""
        try:
            yield
        except TenantErased:
            raise TenantDataErased("this tenant's data was erased in region"
                                   f" {self.region}: nothing is stored for it") from None
        except KekRefused:  # its (customer-managed) KEK is disabled or gone: nothing sealed
            raise TenantKeyRefused() from None

    def rotate_kek(self, *, actor: str = "cli") -> int:
        """Re-wrap every tenant's data key under a new key-encryption key; content untouched."""
        rewrapped = self.keys.rotate_kek()
        self.audit.append(actor, "kek.rotate", self.region, {"data_keys_rewrapped": rewrapped})
        return rewrapped

    # -- sealing for other tables (the workspace's) ------------------------------------------

    def seal(self, tenant: TenantRef, kind: str, record_id: str, plaintext: bytes) -> bytes:
        """`plaintext` sealed for a row of `kind` and id `record_id` of `tenant`, in a table of
        the caller's own. The one copy of the residency check and the sealing context."""
        context = self._sealing_context(tenant, kind, record_id)
        with self._refusing_erased():
            return self.envelope.seal(plaintext, context)

    def open(self, tenant: TenantRef, kind: str, record_id: str, sealed: bytes) -> bytes:
        """What `seal` sealed for exactly this (tenant, kind, record id); `DecryptionError`
        for anything else (another row's ciphertext, another tenant's, a shredded key)."""
        return self.envelope.open(sealed, self._context(tenant, kind, record_id))

    # -- records ----------------------------------------------------------------------------

    def put_record(self, tenant: TenantRef, kind: str, record_id: str, plaintext: bytes) -> None:
        values = self._record_row(tenant, kind, record_id,
                                  self.seal(tenant, kind, record_id, plaintext))
        with self.engine.begin() as conn:
            conn.execute(self._upsert(RecordRow, values,
                                      ("body", "updated_at", "training_consent")))

    def _record_row(self, tenant: TenantRef, kind: str, record_id: str,
                    body: bytes) -> dict[str, object]:
        """A records row of `body` (already sealed), written now."""
        now = datetime.now(UTC)
        return {"tenant_id": tenant.id, "kind": kind, "record_id": record_id,
                "region": self.region, "created_at": now, "updated_at": now, "body": body,
                "training_consent": tenant.training_consent}

    def _upsert(self, model: type[RecordRow] | type[BlobRow], values: dict[str, object],
                changed: Sequence[str]) -> Any:
        """INSERT … ON CONFLICT DO UPDATE, in the dialect of this store (SQLite or PostgreSQL)."""
        is_sqlite = self.engine.dialect.name == "sqlite"
        dialect_insert = sqlite.insert if is_sqlite else postgresql.insert
        statement = dialect_insert(model).values(**values)
        keys = [column.name for column in model.__table__.primary_key]
        return statement.on_conflict_do_update(
            index_elements=keys, set_={name: statement.excluded[name] for name in changed})

    def get_record(self, tenant: TenantRef, kind: str, record_id: str) -> bytes | None:
        context = self._context(tenant, kind, record_id)
        with self.engine.connect() as conn:
            body = conn.scalar(select(RecordRow.body).where(
                RecordRow.tenant_id == tenant.id, RecordRow.kind == kind,
                RecordRow.record_id == record_id))
        return None if body is None else self.envelope.open(body, context)

    def delete_record(self, tenant: TenantRef, kind: str, record_id: str) -> bool:
        self._context(tenant, kind, record_id)
        with self.engine.begin() as conn:
            result = conn.execute(delete(RecordRow).where(
                RecordRow.tenant_id == tenant.id, RecordRow.kind == kind,
                RecordRow.record_id == record_id))
        return bool(result.rowcount)

    def list_records(self, tenant: TenantRef, kind: str) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(
                select(RecordRow.record_id)
                .where(RecordRow.tenant_id == tenant.id, RecordRow.kind == kind)
                .order_by(RecordRow.created_at)))

    def records_of_kind(self, kind: str) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            return [(tenant, record) for tenant, record in conn.execute(
                select(RecordRow.tenant_id, RecordRow.record_id)
                .where(RecordRow.kind == kind, RecordRow.region == self.region)
                .order_by(RecordRow.created_at))]

    def claim_record(self, tenant: TenantRef, kind: str, record_id: str, plaintext: bytes,
                     *, stale_after: float, expect: bytes | None = None) -> bool:
        context = self._sealing_context(tenant, kind, record_id)
        body = self.seal(tenant, kind, record_id, plaintext)
        values = self._record_row(tenant, kind, record_id, body)
        now = values["updated_at"]
        assert isinstance(now, datetime)
        if expect is not None:
            # A compare-and-swap: sealed bodies cannot be compared in SQL, so the body read
            # is opened and compared here, and the update applies only if that very
            # ciphertext is still the row's (any write since, by anyone, changed it).
            where = (RecordRow.tenant_id == tenant.id, RecordRow.kind == kind,
                     RecordRow.record_id == record_id)
            with self.engine.begin() as conn:
                held = conn.scalar(select(RecordRow.body).where(*where))
                if held is None or self.envelope.open(held, context) != expect:
                    return False
                changed = conn.execute(update(RecordRow).where(*where, RecordRow.body == held)
                                       .values(body=body, updated_at=now))
                return bool(changed.rowcount)
        is_sqlite = self.engine.dialect.name == "sqlite"
        insert_row = (sqlite.insert if is_sqlite else postgresql.insert)(RecordRow).values(
            **values)
        # One statement: a row written since the cutoff is left alone. A row comes back only
        # if one was written (PostgreSQL's rowcount counts the conflict as a row).
        statement = insert_row.on_conflict_do_update(
            index_elements=[c.name for c in RecordRow.__table__.primary_key],
            set_={name: insert_row.excluded[name] for name in ("body", "updated_at")},
            where=RecordRow.updated_at < now - timedelta(seconds=stale_after),
        ).returning(RecordRow.record_id)
        with self.engine.begin() as conn:
            return conn.execute(statement).first() is not None

    def replace_record(self, tenant: TenantRef, kind: str, record_id: str,
                       plaintext: bytes) -> bool:
        body = self.seal(tenant, kind, record_id, plaintext)
        # One UPDATE: a row deleted meanwhile (by any process) stays deleted.
        statement = update(RecordRow).where(
            RecordRow.tenant_id == tenant.id, RecordRow.kind == kind,
            RecordRow.record_id == record_id,
        ).values(body=body, updated_at=datetime.now(UTC),
                 training_consent=tenant.training_consent)
        with self.engine.begin() as conn:
            return bool(conn.execute(statement).rowcount)

    # -- blobs ------------------------------------------------------------------------------

    @staticmethod
    def _blob_key(tenant_id: str, kind: str, blob_id: str) -> str:
        return f"{tenant_id}/{kind}/{blob_id}"

    def stage_blob(self, tenant: TenantRef, kind: str, blob_id: str,
                   chunks: Iterable[bytes]) -> StagedBlob:
        """Seal `chunks` into the blob store as they come, under a temp name: not stored yet."""
        context = self._sealing_context(tenant, kind, blob_id)
        size = 0

        def counted() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                size += len(chunk)
                yield chunk

        with self._refusing_erased():
            sealed = self.envelope.seal_stream(counted(), context)
        pending = self.blobs.stage(self._blob_key(tenant.id, kind, blob_id), sealed)
        return StagedBlob(tenant, kind, blob_id, size, pending)

    def commit_blob(self, staged: StagedBlob, filename: str,
                    meta: dict[str, str] | None = None) -> StoredBlob:
        """Store a staged blob: its bytes under their key, then its row. On failure nothing
        is left: no blob without its row."""
        tenant, kind, blob_id = staged.tenant, staged.kind, staged.blob_id
        info = {"filename": filename, **(meta or {})}
        sealed_meta = self.envelope.seal(
            json.dumps(info).encode(), self._context(tenant, f"{kind}:{BLOB_META_KIND}", blob_id))
        now = datetime.now(UTC)
        committed = False
        try:
            staged.pending.commit()
            committed = True
            with self.engine.begin() as conn:
                conn.execute(self._upsert(BlobRow, {
                    "tenant_id": tenant.id, "kind": kind, "blob_id": blob_id,
                    "region": self.region, "size": staged.size, "created_at": now,
                    "meta": sealed_meta, "training_consent": tenant.training_consent,
                }, ("size", "meta", "training_consent")))
        except BaseException:
            if committed:
                self.blobs.delete(staged.pending.key)
            else:
                staged.pending.discard()
            raise
        return StoredBlob(blob_id, tenant.id, kind, filename, staged.size, now, dict(meta or {}))

    def discard_blob(self, staged: StagedBlob) -> None:
        staged.pending.discard()

    def put_blob(self, tenant: TenantRef, kind: str, blob_id: str, filename: str,
                 chunks: Iterable[bytes], meta: dict[str, str] | None = None) -> StoredBlob:
        return self.commit_blob(self.stage_blob(tenant, kind, blob_id, chunks), filename, meta)

    def get_blob(self, tenant: TenantRef, kind: str, blob_id: str) -> StoredBlob | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(BlobRow).where(
                BlobRow.tenant_id == tenant.id, BlobRow.kind == kind,
                BlobRow.blob_id == blob_id)).first()
        return None if row is None else self._stored_blob(tenant, row)

    def _stored_blob(self, tenant: TenantRef, row: object) -> StoredBlob:
        kind, blob_id = row.kind, row.blob_id  # type: ignore[attr-defined]
        info = json.loads(self.envelope.open(
            row.meta, self._context(tenant, f"{kind}:{BLOB_META_KIND}", blob_id)))  # type: ignore[attr-defined]
        filename = info.pop("filename")
        return StoredBlob(blob_id, tenant.id, kind, filename, row.size,  # type: ignore[attr-defined]
                          row.created_at, info)  # type: ignore[attr-defined]

    def open_blob(self, tenant: TenantRef, kind: str, blob_id: str) -> Iterator[bytes]:
        """The blob's plaintext; KeyError if its bytes are gone."""
        context = self._context(tenant, kind, blob_id)
        return self.envelope.open_stream(
            self.blobs.get(self._blob_key(tenant.id, kind, blob_id)), context)

    def delete_blob(self, tenant: TenantRef, kind: str, blob_id: str) -> bool:
        """Delete the row, then the blob file: a store that fails leaves both, still listed.
        Only a full disk frees the file's space first and tries the row once more; a row
        left without its file then answers "not found" for its content."""
        self._context(tenant, kind, blob_id)
        key = self._blob_key(tenant.id, kind, blob_id)
        try:
            deleted = self._delete_blob_row(tenant, kind, blob_id)
        except Exception as exc:
            if not is_full(exc):
                raise
            removed = self.blobs.delete(key)
            return self._delete_blob_row(tenant, kind, blob_id) or removed
        try:
            return self.blobs.delete(key) or deleted
        except OSError as exc:
            if not deleted:
                raise
            # The file is deleted (its row is gone): say so. Its sealed bytes stay behind,
            # unlisted, like those of a crash between a blob's rename and its row.
            log.error("region %s: a deleted file's blob could not be removed (%s)",
                      self.region, describe(exc, text=False))
            return True

    def _delete_blob_row(self, tenant: TenantRef, kind: str, blob_id: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(delete(BlobRow).where(
                BlobRow.tenant_id == tenant.id, BlobRow.kind == kind, BlobRow.blob_id == blob_id))
        return bool(result.rowcount)

    def list_blobs(self, tenant: TenantRef, kind: str, *, prefix: str = "") -> list[StoredBlob]:
        query = select(BlobRow).where(BlobRow.tenant_id == tenant.id, BlobRow.kind == kind)
        if prefix:
            # A range of the primary key (not LIKE, whose `_` is a wildcard): only the rows
            # asked for are read and opened.
            following = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            query = query.where(BlobRow.blob_id >= prefix, BlobRow.blob_id < following)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(BlobRow.created_at)).all()
        return [self._stored_blob(tenant, row) for row in rows]

    def page_blobs(self, tenant: TenantRef, kind: str, *, limit: int, after: str | None = None,
                   descending: bool = True,
                   keep: Callable[[StoredBlob], bool] | None = None,
                   scan_limit: int | None = None) -> BlobPage:
        """A page of the tenant's blobs of `kind` in (created_at, id) order, after the blob
        `after`. Rows are read by keyset along the index on (tenant, kind, created_at, id)
        (never an OFFSET, never the whole list): first the page's size and one more, then,
        once `keep` (which sees the opened metadata) has turned rows down, `PAGE_BATCH` rows at
        a time, so a filter that matches few rows costs a few reads, not one per row. After
        `scan_limit` rows read the page ends short, with `has_more`."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        owned = (BlobRow.tenant_id == tenant.id, BlobRow.kind == kind)
        if descending:
            order = (BlobRow.created_at.desc(), BlobRow.blob_id.desc())
        else:
            order = (BlobRow.created_at.asc(), BlobRow.blob_id.asc())
        batch = min(limit + 1, PAGE_BATCH)
        kept: list[StoredBlob] = []
        scanned = 0
        with self.engine.connect() as conn:
            position: tuple[datetime, str] | None = None
            if after is not None:
                at = conn.scalar(select(BlobRow.created_at).where(*owned,
                                                                  BlobRow.blob_id == after))
                if at is None:
                    raise UnknownCursor(after)
                position = (at, after)
            while len(kept) <= limit:
                if scan_limit is not None:
                    if scanned >= scan_limit:
                        return BlobPage(kept[:limit], True)
                    batch = min(batch, scan_limit - scanned)
                query = select(BlobRow).where(*owned)
                if position is not None:
                    query = query.where(_beyond(position, descending))
                rows = conn.execute(query.order_by(*order).limit(batch)).all()
                scanned += len(rows)
                for row in rows:
                    blob = self._stored_blob(tenant, row)
                    if keep is None or keep(blob):
                        kept.append(blob)
                        if len(kept) > limit:
                            break
                if len(rows) < batch:
                    break
                position = (rows[-1].created_at, rows[-1].blob_id)
                batch = PAGE_BATCH  # rows were turned down: read on in full batches
        return BlobPage(kept[:limit], len(kept) > limit)

    def tenants_holding(self, kind: str) -> list[str]:
        """The tenants with a record or a blob of `kind` here: ids only, never content."""
        with self.engine.connect() as conn:
            tenants = set(conn.scalars(select(RecordRow.tenant_id).distinct()
                                       .where(RecordRow.kind == kind)))
            tenants.update(conn.scalars(select(BlobRow.tenant_id).distinct()
                                        .where(BlobRow.kind == kind)))
        return sorted(tenants)

    # -- usage metadata (never content) -----------------------------------------------------

    def write_usage(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        with self.engine.begin() as conn:
            conn.execute(insert(UsageRow), [{
                "at": r.at, "region": r.region, "project_id": r.project_id, "key_id": r.key_id,
                "endpoint": r.endpoint, "model": r.model, "provider": r.provider,
                "status": r.status, "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens, "latency_ms": r.latency_ms,
                "request_id": r.request_id,
            } for r in records])

    def usage_totals(self, project_id: str) -> dict[str, tuple[int, int, int]]:
        """Per key of a project (per member of a workspace): (requests, prompt tokens,
        completion tokens), summed by the database."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(UsageRow.key_id, func.count(), func.sum(UsageRow.prompt_tokens),
                       func.sum(UsageRow.completion_tokens))
                .where(UsageRow.project_id == project_id).group_by(UsageRow.key_id)).all()
        return {key: (int(count), int(prompt or 0), int(completion or 0))
                for key, count, prompt, completion in rows}

    def usage(self, project_id: str) -> list[UsageRow]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(
                select(UsageRow).where(UsageRow.project_id == project_id).order_by(UsageRow.at)))
