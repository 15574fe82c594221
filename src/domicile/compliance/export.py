"""Export (G9): everything an org, project or workspace owns, decrypted, in one zip file.

Every tenant of the scope (an org: all its projects and workspaces) is read in every region
that may hold its data: its own region, or every configured region for a per-request-residency
("global") project. The regional stores are read through `storage.catalog`, so a content
table the catalog knows is exported. Layout (docs/EXPORT-AND-ERASURE.md):

    <tenant>/<region>/conversations/<id>.json   a conversation with every message of every
                                                branch (parent ids kept)
    <tenant>/<region>/gpts/<id>.json            a GPT: instructions, model, knowledge file ids
    <tenant>/<region>/files/<id>/<name>         a workspace file's original bytes
    <tenant>/<region>/file-texts/<id>.txt       the text extracted from it (when there is one)
    <tenant>/<region>/gpt-indexes/<id>.json     a GPT's knowledge index (derived data)
    <tenant>/<region>/responses/<id>.json       a stored response (/v1/responses)
    <tenant>/<region>/api-files/<id>/<name>     a file uploaded through /v1/files
    manifest.json                               every entry: SHA-256, size, data class,
                                                tenant, region; and the export's metadata

Memory stays flat: blobs are streamed chunk by chunk from the store into the zip, and
conversations are read one at a time. The zip is written to a temp file beside the target
and linked into place at the end (never over an existing file): nothing half-written is
ever left under the target's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select

from domicile.compliance.audit import Detail
from domicile.errors import InvalidInput
from domicile.storage.catalog import ContentTable, content_table, owned_rows
from domicile.storage.interfaces import TenantRef
from domicile.storage.regional import RegionalStore
from domicile.tenancy.directory import Directory, ErasureScope, OwnedTenant, Ownership
from domicile.tenancy.grants import GLOBAL_REGION

__all__ = ["EXPORT_FORMAT", "ExportSummary", "Exporter", "Progress", "StoreFor",
           "tenant_ref", "tenant_regions"]

EXPORT_FORMAT = "domicile-export"
EXPORT_VERSION = 1
MANIFEST = "manifest.json"
CONVERSATIONS = content_table("ws_conversations")
MESSAGES = content_table("ws_messages")
FILES = content_table("ws_files")
GPTS = content_table("ws_gpts")
RECORDS = content_table("records")
BLOBS = content_table("blobs")
# Where a blob of each kind goes in the export (other kinds: blobs/<kind>/<id>/<filename>).
BLOB_FOLDERS: Mapping[str, str] = {"file": "api-files", "ws-file": "files"}
UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")

StoreFor = Callable[[str], RegionalStore]
Progress = Callable[[int, int], None]  # (entries done, entries in all)


def tenant_regions(tenant: OwnedTenant, regions: Sequence[str]) -> list[str]:
    """The regions whose stores may hold the tenant's data."""
    return list(regions) if tenant.region == GLOBAL_REGION else [tenant.region]


def tenant_ref(tenant: OwnedTenant) -> TenantRef:
    return TenantRef(tenant.id, tenant.region, tenant.org_id)


def safe_name(name: str) -> str:
    """A file name that stays one path segment in the zip (a member chose it)."""
    cleaned = UNSAFE.sub("_", name).strip().lstrip(".")[:200]
    return cleaned or "file"


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None
            else moment.astimezone(UTC)).isoformat()


@dataclass(frozen=True, slots=True)
class ExportSummary:
    path: Path
    scope: ErasureScope
    scope_id: str
    entries: int
    bytes: int
    counts: dict[str, int]  # entries per data class
    regions: list[str]  # the regions read (and whose audit chains recorded the export)
    missing: int = 0  # rows whose blob bytes were gone

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "scope": self.scope, "scope_id": self.scope_id,
                "entries": self.entries, "bytes": self.bytes, "counts": self.counts,
                "regions": self.regions, "missing": self.missing}


@dataclass
class _Zip:
    """The zip being written, and the manifest entries of what is in it."""

    archive: zipfile.ZipFile
    total: int
    progress: Progress | None
    entries: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)
    done: int = 0

    def add(self, path: str, chunks: Iterable[bytes], *, data_class: str, tenant: str,
            region: str, **about: Any) -> None:
        digest, size = hashlib.sha256(), 0
        with self.archive.open(path, "w", force_zip64=True) as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        self.entries.append({"path": path, "sha256": digest.hexdigest(), "size": size,
                             "data_class": data_class, "tenant": tenant, "region": region,
                             **about})
        self.step()

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _json(value: object) -> list[bytes]:
    return [json.dumps(value, indent=2, ensure_ascii=False).encode()]


class Exporter:
    """Writes the export of an org, project or workspace (`export`)."""

    def __init__(self, directory: Directory, store_for: StoreFor, regions: Sequence[str]) -> None:
        self._directory = directory
        self._store_for = store_for
        self._regions = list(regions)

    def export(self, scope: ErasureScope, scope_id: str, out: Path, *, actor: str = "cli",
               progress: Progress | None = None) -> ExportSummary:
        out = Path(out)
        if out.exists():
            raise InvalidInput(f"{out} already exists; an export never overwrites a file",
                               param="out")
        if not out.parent.is_dir():
            raise InvalidInput(f"{out.parent} is not a folder", param="out")
        ownership = self._directory.owned_tenants(scope, scope_id)
        if ownership.erased_at is not None:
            raise InvalidInput(f"{scope} {scope_id} was erased at "
                               f"{_iso(ownership.erased_at)}: it holds nothing to export",
                               param=scope)
        places = [(tenant, region) for tenant in ownership.tenants if tenant.erased_at is None
                  for region in tenant_regions(tenant, self._regions)]
        total = sum(self._count(tenant, region) for tenant, region in places)
        fd, temp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "w+b") as handle:
                written = self._write(handle, ownership, places, total, progress)
                handle.flush()
                os.fsync(handle.fileno())
            summary = self._summary(written, ownership, out, places)
            try:
                os.link(temp, out)  # never replaces: a file made meanwhile is kept
            except FileExistsError:
                raise InvalidInput(f"{out} already exists; an export never overwrites a file",
                                   param="out") from None
            # Audited once the export exists; if this fails, the file goes with the error.
            try:
                self._audit(summary, written, actor)
            except BaseException:
                out.unlink(missing_ok=True)
                raise
        finally:
            temp.unlink(missing_ok=True)
        return summary

    # -- what is where --------------------------------------------------------------------------

    def _count(self, tenant: OwnedTenant, region: str) -> int:
        """The entries the tenant's data in `region` makes (for the progress bar)."""
        store = self._store_for(region)
        tables = (CONVERSATIONS, GPTS, RECORDS, BLOBS) if tenant.kind == "workspace" else (
            RECORDS, BLOBS)
        with store.engine.connect() as conn:
            return sum(int(conn.scalar(select(func.count()).select_from(table.table)
                                       .where(owned_rows(table, tenant.id))) or 0)
                       for table in tables)

    def _ids(self, store: RegionalStore, table: ContentTable, tenant: OwnedTenant) -> list[Any]:
        """The tenant's rows of `table` as (id, kind) tuples, oldest first (small: no content)."""
        columns = table.table.c
        kind = columns[table.kind_column] if table.kind_column else None
        query = select(columns[table.id_column], *([kind] if kind is not None else [])).where(
            owned_rows(table, tenant.id)).order_by(columns.created_at, columns[table.id_column])
        with store.engine.connect() as conn:
            return list(conn.execute(query).all())

    # -- writing --------------------------------------------------------------------------------

    def _write(self, handle: IO[bytes], ownership: Ownership,
               places: list[tuple[OwnedTenant, str]], total: int,
               progress: Progress | None) -> _Zip:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED,
                             allowZip64=True) as archive:
            written = _Zip(archive, total, progress)
            for tenant, region in places:
                store = self._store_for(region)
                if tenant.kind == "workspace":
                    self._conversations(written, store, tenant)
                    self._gpts(written, store, tenant)
                self._records(written, store, tenant)
                self._blobs(written, store, tenant)
            manifest = self._manifest(ownership, places, written)
            with archive.open(MANIFEST, "w") as out:
                out.write(_json(manifest)[0])
        return written

    def _conversations(self, written: _Zip, store: RegionalStore, tenant: OwnedTenant) -> None:
        ref, conversations, messages = tenant_ref(tenant), CONVERSATIONS.table, MESSAGES.table
        title_kind = CONVERSATIONS.context_kind(CONVERSATIONS.sealed[0])
        body_kind = MESSAGES.context_kind(MESSAGES.sealed[0])
        for (conversation_id,) in self._ids(store, CONVERSATIONS, tenant):
            with store.engine.connect() as conn:  # one conversation at a time
                row = conn.execute(select(conversations).where(
                    conversations.c.id == conversation_id)).first()
                rows = conn.execute(select(messages).where(
                    messages.c.conversation_id == conversation_id,
                    messages.c.workspace_id == tenant.id)
                    .order_by(messages.c.seq, messages.c.id)).all()
            if row is None:  # deleted meanwhile
                written.step()
                continue
            document = {
                "id": row.id, "member": row.user_id,
                "title": store.open(ref, title_kind, row.id, row.title).decode(),
                "model": row.model, "gpt_id": row.gpt_id,
                "current_message_id": row.current_message_id,
                "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
                "messages": [{
                    "id": message.id, "parent_id": message.parent_id, "seq": message.seq,
                    "role": message.role, "status": message.status,
                    "created_at": _iso(message.created_at),
                    **json.loads(store.open(ref, body_kind, message.id, message.body)),
                } for message in rows],
            }
            written.add(f"{tenant.id}/{store.region}/conversations/{row.id}.json",
                        _json(document), data_class="conversations", tenant=tenant.id,
                        region=store.region, id=row.id, messages=len(rows))

    def _gpts(self, written: _Zip, store: RegionalStore, tenant: OwnedTenant) -> None:
        ref, gpts = tenant_ref(tenant), GPTS.table
        body_kind = GPTS.context_kind(GPTS.sealed[0])
        for (gpt_id,) in self._ids(store, GPTS, tenant):
            with store.engine.connect() as conn:
                row = conn.execute(select(gpts).where(gpts.c.id == gpt_id)).first()
            if row is None:
                written.step()
                continue
            document = {"id": row.id, "owner": row.user_id, "sharing": row.sharing,
                        "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
                        **json.loads(store.open(ref, body_kind, row.id, row.body))}
            written.add(f"{tenant.id}/{store.region}/gpts/{row.id}.json", _json(document),
                        data_class="gpts", tenant=tenant.id, region=store.region, id=row.id)

    def _records(self, written: _Zip, store: RegionalStore, tenant: OwnedTenant) -> None:
        ref = tenant_ref(tenant)
        for record_id, kind in self._ids(store, RECORDS, tenant):
            body = store.get_record(ref, kind, record_id)
            if body is None:
                written.step()
                continue
            folder = "responses" if kind == "response" else f"records/{safe_name(kind)}"
            written.add(f"{tenant.id}/{store.region}/{folder}/{safe_name(record_id)}.json",
                        [body], data_class=RECORDS.data_class_of(kind), tenant=tenant.id,
                        region=store.region, id=record_id, kind=kind)

    def _blobs(self, written: _Zip, store: RegionalStore, tenant: OwnedTenant) -> None:
        ref = tenant_ref(tenant)
        files = self._workspace_files(store, tenant) if tenant.kind == "workspace" else {}
        for blob_id, kind in self._ids(store, BLOBS, tenant):
            stored = store.get_blob(ref, kind, blob_id)
            if stored is None:
                written.step()
                continue
            base = f"{tenant.id}/{store.region}"
            if kind == "ws-file-text":
                path = f"{base}/file-texts/{safe_name(blob_id)}.txt"
            elif kind == "ws-gpt-index":
                path = f"{base}/gpt-indexes/{safe_name(blob_id)}.json"
            else:
                folder = BLOB_FOLDERS.get(kind, f"blobs/{safe_name(kind)}")
                path = f"{base}/{folder}/{safe_name(blob_id)}/{safe_name(stored.filename)}"
            try:
                chunks = store.open_blob(ref, kind, blob_id)
            except KeyError:
                written.missing.append({"tenant": tenant.id, "region": store.region,
                                        "kind": kind, "id": blob_id})
                written.step()
                continue
            about = {"id": blob_id, "kind": kind, "name": stored.filename,
                     **files.get(blob_id, {})}
            written.add(path, chunks, data_class=BLOBS.data_class_of(kind), tenant=tenant.id,
                        region=store.region, **about)

    def _workspace_files(self, store: RegionalStore, tenant: OwnedTenant
                         ) -> dict[str, dict[str, Any]]:
        """What the workspace knows of its files beyond their bytes, by file id."""
        ref, table = tenant_ref(tenant), FILES.table
        meta_kind = FILES.context_kind(FILES.sealed[0])
        with store.engine.connect() as conn:
            rows = conn.execute(select(table).where(owned_rows(FILES, tenant.id))).all()
        found = {}
        for row in rows:
            meta = json.loads(store.open(ref, meta_kind, row.id, row.meta))
            found[row.id] = {"name": meta.get("name"), "member": row.user_id,
                             "media_type": row.media_type, "origin": row.origin,
                             "created_at": _iso(row.created_at)}
        return found

    # -- manifest, audit ------------------------------------------------------------------------

    def _manifest(self, ownership: Ownership, places: list[tuple[OwnedTenant, str]],
                  written: _Zip) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
            "scope": ownership.scope, "scope_id": ownership.scope_id,
            "org_id": ownership.org_id,
            "tenants": [{"kind": t.kind, "id": t.id, "region": t.region,
                         "erased_at": _iso(t.erased_at),
                         "regions_read": [r for tenant, r in places if tenant.id == t.id]}
                        for t in ownership.tenants],
            "counts": dict(Counter(entry["data_class"] for entry in written.entries)),
            "entries": written.entries,
            "missing": written.missing,
        }

    def _summary(self, written: _Zip, ownership: Ownership, out: Path,
                 places: list[tuple[OwnedTenant, str]]) -> ExportSummary:
        # Regions read: every region that gave an entry, and the home region of each pinned
        # tenant (an empty workspace's export is still recorded where it lives).
        touched = {entry["region"] for entry in written.entries}
        touched |= {region for tenant, region in places if tenant.region != GLOBAL_REGION}
        return ExportSummary(
            out, ownership.scope, ownership.scope_id, len(written.entries),
            sum(entry["size"] for entry in written.entries),
            dict(Counter(entry["data_class"] for entry in written.entries)),
            sorted(touched), len(written.missing))

    def _audit(self, summary: ExportSummary, written: _Zip, actor: str) -> None:
        for region in summary.regions:
            entries = [entry for entry in written.entries if entry["region"] == region]
            details: dict[str, Detail] = {
                "scope": summary.scope, "entries": len(entries),
                "bytes": sum(entry["size"] for entry in entries),
                **Counter(entry["data_class"] for entry in entries)}
            self._store_for(region).audit.append(actor, "export", summary.scope_id, details)

