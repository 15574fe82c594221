"""What a regional store holds, table by table: the one description of every content column.

Residency verification, the residency report, export, erasure and training export all read
a store through this catalog, so a table added to a store without an entry here is caught by
`residency verify` (an unknown table is a violation) instead of being silently skipped.

Every content column holds envelope ciphertext sealed under the tenant's data key, bound to
`Context(region, tenant, kind, record id)` (G5). `ContentTable.context_kind` says which kind a
column was sealed under; the record id is the row's `id_column`. Blob bytes live in the blob
store under `blob_key(tenant, kind, blob id)`, sealed under the same context as their row's id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Table, and_

from domicile.storage.models import RegionBase

__all__ = [
    "BLOB_META_SUFFIX",
    "CONTENT_TABLES",
    "DATA_CLASSES",
    "METADATA_TABLES",
    "TENANT_METADATA",
    "ContentTable",
    "SealedColumn",
    "blob_key",
    "content_table",
    "data_class_of_blob",
    "data_class_of_record",
    "expected_columns",
    "owned_rows",
]

BLOB_META_SUFFIX = ":blob-meta"  # storage.regional.BLOB_META_KIND

# Record and blob kinds written by the services, and the data class each belongs to. Kept here
# (not imported from the services) so that foundations do not depend on services; the
# services' constants are checked against this table by a test.
RECORD_KINDS: Mapping[str, str] = {
    "response": "stored responses",
    # The Batch API's (gateway.batch_jobs): a batch, its lines' results as they complete, and
    # its markers while it runs. Model answers kept for a project, like stored responses.
    "batch": "stored responses",
    "batch-part": "stored responses",
    "batch-active": "stored responses",
    "batch-lease": "stored responses",
    "batch-cancel": "stored responses",
    "upload": "files",  # the gateway's /v1/uploads: an upload's name, purpose, size, status
}
BLOB_KINDS: Mapping[str, str] = {
    "file": "files",  # the gateway's /v1/files
    "upload-part": "files",  # a part of an upload, until the upload completes or expires
    "ws-file": "files",  # a workspace file's bytes
    "ws-file-text": "files",  # the text extracted from it
    "ws-gpt-index": "gpts",  # a GPT's knowledge index
}

# The data classes of the residency report, in its order.
DATA_CLASSES: tuple[str, ...] = (
    "conversations", "messages", "files", "gpts", "stored responses", "usage metadata",
    "audit entries",
)


@dataclass(frozen=True, slots=True)
class SealedColumn:
    """A column of envelope ciphertext. `kind`: the context kind it was sealed under; None
    means the row's own `kind` column followed by `suffix` (the generic records and blobs)."""

    name: str
    kind: str | None
    suffix: str = ""


@dataclass(frozen=True, slots=True)
class ContentTable:
    name: str
    data_class: str | None  # None: the class comes from the row's `kind` (records, blobs)
    tenant_column: str  # the tenant whose data key sealed the row: project or workspace id
    id_column: str  # the record id bound into the sealing context
    sealed: tuple[SealedColumn, ...]
    member_column: str | None = None  # the workspace member who owns the row, if any
    kind_column: str | None = None  # records and blobs: the kind of the row
    blob: bool = False  # each row names a blob: blob_key(tenant, kind, id)
    # The kinds of the blobs (`blobs` table) keyed by this table's row id: part of the row
    # (a workspace file's bytes and text, a GPT's index), erased with it.
    blob_kinds: tuple[str, ...] = ()

    @property
    def table(self) -> Table:
        return RegionBase.metadata.tables[self.name]

    def context_kind(self, column: SealedColumn, row_kind: str | None = None) -> str:
        """The kind `column` of a row was sealed under (`row_kind`: the row's kind column)."""
        if column.kind is not None:
            return column.kind
        if row_kind is None:
            raise ValueError(f"{self.name}.{column.name} is sealed under the row's kind")
        return row_kind + column.suffix

    def data_class_of(self, row_kind: str | None = None) -> str:
        if self.data_class is not None:
            return self.data_class
        if self.name == "records":
            return data_class_of_record(row_kind or "")
        return data_class_of_blob(row_kind or "")


def data_class_of_record(kind: str) -> str:
    return RECORD_KINDS.get(kind, f"records ({kind})")


def data_class_of_blob(kind: str) -> str:
    return BLOB_KINDS.get(kind, f"blobs ({kind})")


def blob_key(tenant_id: str, kind: str, blob_id: str) -> str:
    """Where a blob's sealed bytes live in the region's blob store."""
    return f"{tenant_id}/{kind}/{blob_id}"


def _workspace(name: str, data_class: str, column: str, kind: str,
               blob_kinds: tuple[str, ...] = ()) -> ContentTable:
    return ContentTable(name, data_class, "workspace_id", "id", (SealedColumn(column, kind),),
                        member_column="user_id", blob_kinds=blob_kinds)


# Import-free copies of the services' kinds (see RECORD_KINDS): checked by a test.
CONTENT_TABLES: tuple[ContentTable, ...] = (
    _workspace("ws_conversations", "conversations", "title", "ws-conversation-title"),
    _workspace("ws_messages", "messages", "body", "ws-message"),
    _workspace("ws_files", "files", "meta", "ws-file-meta", ("ws-file", "ws-file-text")),
    _workspace("ws_gpts", "gpts", "body", "ws-gpt", ("ws-gpt-index",)),
    ContentTable("records", None, "tenant_id", "record_id", (SealedColumn("body", None),),
                 kind_column="kind"),
    ContentTable("blobs", None, "tenant_id", "blob_id",
                 (SealedColumn("meta", None, BLOB_META_SUFFIX),), kind_column="kind", blob=True),
)

# Tables that hold no content, with why. Their columns are checked like the others'.
METADATA_TABLES: Mapping[str, str] = {
    "store_identity": "the region this store belongs to",
    "usage": "per-request metadata: time, key, model, provider, status, token counts",
    "ws_sessions": "browser sessions: digests of their secrets, expiry",
    "audit_log": "the audit chain: who did what to which object, never content",
    "audit_head": "the audit chain's last entry",
    "alembic_version_region": "the schema's migration version",
}


# Metadata tables with rows of a tenant, by the column naming it: an erasure deletes them too
# (a browser session of an erased workspace signs no one in). Usage rows and audit entries
# stay: they account for what was done, and hold no content.
TENANT_METADATA: Mapping[str, str] = {"ws_sessions": "workspace_id"}


def owned_rows(table: ContentTable, tenant_id: str, member_id: str | None = None
               ) -> ColumnElement[bool]:
    """The condition selecting `table`'s rows of a tenant (of one member of it, if given)."""
    columns = table.table.c
    condition = columns[table.tenant_column] == tenant_id
    if member_id is not None:
        if table.member_column is None:
            raise ValueError(f"{table.name} has no member column")
        condition = and_(condition, columns[table.member_column] == member_id)
    return condition


def content_table(name: str) -> ContentTable:
    for table in CONTENT_TABLES:
        if table.name == name:
            return table
    raise KeyError(name)


def expected_columns(table: str) -> frozenset[str]:
    """The columns the schema gives `table`; any other column in a store is not Domicile's
    (a plaintext column added by hand, say)."""
    if table == "alembic_version_region":
        return frozenset({"version_num"})
    return frozenset(column.name for column in RegionBase.metadata.tables[table].columns)
