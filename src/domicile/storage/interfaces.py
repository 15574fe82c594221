"""The storage contracts other packages code against (embedded and scale-out backends alike)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = [
    "BlobPage",
    "BlobStore",
    "ContentStore",
    "PendingBlob",
    "StagedBlob",
    "StoredBlob",
    "TenantRef",
    "UnknownCursor",
    "UsageRecord",
    "UsageSink",
]


@dataclass(frozen=True, slots=True)
class TenantRef:
    """A project or workspace as a data plane sees it: the tenant id and its home region."""

    id: str
    region: str  # the tenant's region, or "global" for per-request residency projects
    org_id: str
    # G7: the org's training consent when its credential was checked; every content row
    # written for the tenant keeps it (`training_consent` columns).
    training_consent: bool = False


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Per-request metadata kept for every project. Never content."""

    at: datetime
    region: str
    project_id: str
    key_id: str
    endpoint: str
    model: str
    provider: str | None
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    request_id: str = ""


class UsageSink(Protocol):
    def write_usage(self, records: Sequence[UsageRecord]) -> None:
        """Persist a batch (blocking; callers run it off the event loop)."""
        ...


@dataclass(frozen=True, slots=True)
class StoredBlob:
    id: str
    tenant_id: str
    kind: str
    filename: str
    size: int
    created_at: datetime
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BlobPage:
    """One page of a tenant's blobs of a kind, and whether more follow it."""

    blobs: list[StoredBlob]
    has_more: bool


class UnknownCursor(LookupError):
    """A page asked for after a blob that is not there (never was, or was deleted)."""


class PendingBlob(Protocol):
    """A staged blob write: all its bytes written, nothing visible under its key yet."""

    key: str
    size: int

    def commit(self) -> None: ...
    def discard(self) -> None: ...


class BlobStore(Protocol):
    """Opaque bytes by key; writes are atomic (a reader sees all or nothing).

    `put` is `stage` then `commit`. `get` raises KeyError for a key without bytes; with
    `start`/`end` it reads the bytes `[start, end)` only (none past the blob's end).
    `sweep_staged` removes what writers that died (a crash) staged and never committed or
    discarded; it never takes a write in progress.
    """

    def stage(self, key: str, chunks: Iterable[bytes]) -> PendingBlob: ...
    def put(self, key: str, chunks: Iterable[bytes]) -> int: ...
    def get(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def delete(self, key: str) -> bool: ...
    def exists(self, key: str) -> bool: ...
    def keys(self, prefix: str = "") -> Iterator[str]: ...
    def sweep_staged(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """A blob whose sealed bytes are written but which is not stored: not listed, not
    readable, until `ContentStore.commit_blob`; `discard_blob` removes it."""

    tenant: TenantRef
    kind: str
    blob_id: str
    size: int  # plaintext bytes
    pending: PendingBlob


class ContentStore(Protocol):
    """A region's encrypted content: every byte sealed under the tenant's data key (G5).

    Refuses a tenant of another region (CrossRegionWrite). Blocking: call off the event loop.
    A blob is written in two steps, so that a request can decide whether to keep it only once
    it is complete: `stage_blob` streams the bytes in, `commit_blob` stores it (and on failure
    leaves nothing), `discard_blob` drops it. `put_blob` is both. `open_blob` raises KeyError
    when the blob's bytes are gone.

    `page_blobs` is a page of `list_blobs` in (created_at, id) order, ascending or descending,
    after the blob `after` (`UnknownCursor` if it has none), holding at most `limit` blobs
    that `keep` accepts; the store reads only as many rows as the page needs, and at most
    `scan_limit` (if given): a page cut short by it says `has_more`. `tenants_holding`
    names the tenants with a record or blob of a kind (for sweeps across tenants).
    """

    region: str

    def put_record(
        self, tenant: TenantRef, kind: str, record_id: str, plaintext: bytes
    ) -> None: ...
    def get_record(self, tenant: TenantRef, kind: str, record_id: str) -> bytes | None: ...
    def delete_record(self, tenant: TenantRef, kind: str, record_id: str) -> bool: ...
    def list_records(self, tenant: TenantRef, kind: str) -> list[str]: ...
    def records_of_kind(self, kind: str) -> list[tuple[str, str]]:
        """(tenant id, record id) of every record of `kind` in this store, every tenant's,
        oldest first: ids only, never content. For work that must find its records again
        after a restart (the batch worker's unfinished batches)."""
        ...
    def claim_record(self, tenant: TenantRef, kind: str, record_id: str, plaintext: bytes,
                     *, stale_after: float, expect: bytes | None = None) -> bool:
        """Write the record if there is none, or if the one there was last written more than
        `stale_after` seconds ago; True if written. Atomic across processes: a lease.
        With `expect`, a compare-and-swap instead: written only if the record is there and
        holds `expect` (whatever its age), so a holder renewing its lease learns whether it
        still holds it."""
        ...
    def replace_record(self, tenant: TenantRef, kind: str, record_id: str,
                       plaintext: bytes) -> bool:
        """Rewrite the record only if it is there; True if written, False if there is none
        (never was, or was deleted). Atomic across processes: a write of a record's state
        never brings a deleted record back."""
        ...
    def put_blob(
        self, tenant: TenantRef, kind: str, blob_id: str, filename: str,
        chunks: Iterable[bytes], meta: dict[str, str] | None = None,
    ) -> StoredBlob: ...
    def stage_blob(self, tenant: TenantRef, kind: str, blob_id: str,
                   chunks: Iterable[bytes]) -> StagedBlob: ...
    def commit_blob(self, staged: StagedBlob, filename: str,
                    meta: dict[str, str] | None = None) -> StoredBlob: ...
    def discard_blob(self, staged: StagedBlob) -> None: ...
    def get_blob(self, tenant: TenantRef, kind: str, blob_id: str) -> StoredBlob | None: ...
    def open_blob(self, tenant: TenantRef, kind: str, blob_id: str) -> Iterator[bytes]: ...
    def delete_blob(self, tenant: TenantRef, kind: str, blob_id: str) -> bool: ...
    def list_blobs(self, tenant: TenantRef, kind: str, *, prefix: str = "") -> list[StoredBlob]:
        """The tenant's blobs of `kind` (whose id starts with `prefix`), oldest first; only
        those are read."""
        ...
    def page_blobs(self, tenant: TenantRef, kind: str, *, limit: int, after: str | None = None,
                   descending: bool = True,
                   keep: Callable[[StoredBlob], bool] | None = None,
                   scan_limit: int | None = None) -> BlobPage: ...
    def tenants_holding(self, kind: str) -> list[str]: ...
