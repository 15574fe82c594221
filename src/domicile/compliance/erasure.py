"""Erasure (G9): an org, project or workspace erased by crypto-shredding, backups included.

In this order, so that a failure at any step leaves less readable than before, never more:

1. destroy the tenants' data keys in every region that may hold their data (the receipts'
   statements are the proof given back); from here on nothing of theirs can be decrypted;
2. delete their rows (every content table of `storage.catalog`, and their browser sessions)
   and their blobs, the blob files included;
3. checkpoint and vacuum each store, so no ciphertext survives in a journal or a free page
   (SQLite: `PRAGMA wal_checkpoint(TRUNCATE)`, `VACUUM`, and a checkpoint again; PostgreSQL:
   `VACUUM`);
4. mark the directory's rows erased (they stay: ids are never reused), revoke the API keys
   and tokens, remove the members; audited in the directory's chain in the same transaction;
5. audit the erasure in each region's chain (counts and receipt statements, never content);
6. rotate each affected region's key-encryption key: the other tenants' data keys are
   re-wrapped, so a copy of the store and keystore taken before the erasure holds the erased
   tenants' data keys under a KEK that no longer exists (once its old key file is gone).

Running it again after a failure finishes the job (every step is idempotent); once the
directory marks the scope erased, `erase` says so and does nothing.

One member's content (`erase_member`): their rows and their files' and GPTs' blobs are
deleted, then the store is vacuumed and the erasure audited. No key is destroyed: the data
key is the workspace's, and the other members' content stays readable.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from domicile.compliance.audit import Detail
from domicile.compliance.export import StoreFor, tenant_ref, tenant_regions
from domicile.crypto import LocalKeyProvider, ShredReceipt
from domicile.errors import NotFound, StorageError
from domicile.storage.blobs import FileBlobStore
from domicile.storage.catalog import (
    CONTENT_TABLES,
    TENANT_METADATA,
    content_table,
    owned_rows,
)
from domicile.storage.models import RegionBase
from domicile.storage.regional import RegionalStore
from domicile.tenancy.directory import (
    Directory,
    ErasureMark,
    ErasureScope,
    OwnedTenant,
    Ownership,
)
from domicile.tenancy.models import User, Workspace

__all__ = ["Erasure", "ErasurePlan", "ErasureReport", "Holding", "MemberErasure",
           "purge_journals"]

BLOBS = content_table("blobs")
CHECKPOINT_TRIES = 20


@dataclass(frozen=True, slots=True)
class Holding:
    """What one tenant (or one member of it) holds in one region's store."""

    tenant: str
    region: str
    rows: dict[str, int]  # per table
    blob_files: int
    data_keys: bool

    @property
    def empty(self) -> bool:
        return not any(self.rows.values()) and not self.blob_files and not self.data_keys

    def to_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "region": self.region, "rows": self.rows,
                "blob_files": self.blob_files, "data_keys": self.data_keys}


@dataclass(frozen=True, slots=True)
class ErasurePlan:
    ownership: Ownership
    holdings: tuple[Holding, ...]

    @property
    def already_erased(self) -> bool:
        return self.ownership.erased_at is not None

    def to_json(self) -> dict[str, Any]:
        erased_at = self.ownership.erased_at
        return {"scope": self.ownership.scope, "scope_id": self.ownership.scope_id,
                "org_id": self.ownership.org_id,
                "already_erased": self.already_erased,
                "erased_at": None if erased_at is None else erased_at.isoformat(),
                "tenants": [{"kind": t.kind, "id": t.id, "region": t.region}
                            for t in self.ownership.tenants],
                "holdings": [h.to_json() for h in self.holdings if not h.empty]}


@dataclass(frozen=True, slots=True)
class ErasureReport:
    plan: ErasurePlan
    receipts: tuple[ShredReceipt, ...] = ()
    rows_deleted: dict[str, int] = field(default_factory=dict)
    blob_files_deleted: int = 0
    mark: ErasureMark | None = None
    keks_rotated: dict[str, int] = field(default_factory=dict)  # region: data keys re-wrapped
    # Regions whose KEK is held outside Domicile (a KMS, a file every replica mounts): their
    # keystore backups from before the erasure open until the KEK is rotated there (G9).
    kek_rotation_needed: list[str] = field(default_factory=list)

    @property
    def backup_warnings(self) -> list[str]:
        return [f"region {region}: its KEK is held outside Domicile: rotate it there (and "
                "schedule the old key's deletion) and expire keystore backups older than this "
                "erasure, or those backups still open the erased content (docs/KEYS.md)"
                for region in self.kek_rotation_needed]

    @property
    def statements(self) -> list[str]:
        return [receipt.statement for receipt in self.receipts if receipt.keys_destroyed]

    def to_json(self) -> dict[str, Any]:
        mark = self.mark
        return {
            **self.plan.to_json(),
            "receipts": self.statements,
            "data_keys_destroyed": sum(r.keys_destroyed for r in self.receipts),
            "rows_deleted": self.rows_deleted, "blob_files_deleted": self.blob_files_deleted,
            "api_keys_revoked": mark.api_keys_revoked if mark else 0,
            "tokens_revoked": mark.tokens_revoked if mark else 0,
            "members_removed": mark.members_removed if mark else 0,
            "keks_rotated": self.keks_rotated,
            "kek_rotation_needed": self.kek_rotation_needed,
        }


@dataclass(frozen=True, slots=True)
class MemberErasure:
    """One member's content in one workspace: planned (`done` False) or erased."""

    workspace_id: str
    user_id: str
    holding: Holding
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"workspace_id": self.workspace_id, "member": self.user_id,
                "erased": self.done, **self.holding.to_json()}


class Erasure:
    """Plans and carries out erasures over the directory and every regional store."""

    def __init__(self, directory: Directory, store_for: StoreFor, regions: Sequence[str],
                 directory_engine: Engine) -> None:
        self._directory = directory
        self._store_for = store_for
        self._regions = list(regions)
        self._directory_engine = directory_engine

    # -- a whole org, project or workspace ------------------------------------------------------

    def plan(self, scope: ErasureScope, scope_id: str) -> ErasurePlan:
        """What `erase` would erase (counts only); changes nothing."""
        ownership = self._directory.owned_tenants(scope, scope_id)
        holdings = tuple(self._holding(self._store_for(region), tenant.id)
                         for tenant in ownership.tenants
                         for region in tenant_regions(tenant, self._regions))
        return ErasurePlan(ownership, holdings)

    def erase(self, scope: ErasureScope, scope_id: str, *, actor: str = "cli") -> ErasureReport:
        plan = self.plan(scope, scope_id)
        if plan.already_erased:
            return ErasureReport(plan)
        places = [(tenant, region) for tenant in plan.ownership.tenants
                  for region in tenant_regions(tenant, self._regions)]
        holds = {(h.tenant, h.region): h for h in plan.holdings}
        # 0. Credentials: no request of theirs is taken from here on (servers' caches: 1 s).
        keys_revoked, tokens_revoked = self._directory.revoke_credentials(
            scope, scope_id, actor=actor)
        # 1. Keys first: from here on nothing of theirs opens, whatever fails later.
        receipts = tuple(self._store_for(region).envelope.destroy_tenant_key(tenant.id)
                         for tenant, region in places)
        # Regions touched: a pinned tenant's own, and those where a per-request-residency
        # project had keys or data.
        regions = sorted({region for tenant, region in places
                          if tenant.region == region or not holds[(tenant.id, region)].empty})
        # 2. Rows and blobs.
        rows: Counter[str] = Counter()
        blob_files = self._delete_tenants(places, regions, rows)
        # 3. Journals and free pages.
        for region in regions:
            purge_journals(self._store_for(region).engine)
        statements = [r.statement for r in receipts if r.keys_destroyed]
        counts: dict[str, Detail] = {
            "tenants": len(plan.ownership.tenants),
            "data_keys_destroyed": sum(r.keys_destroyed for r in receipts),
            "rows_deleted": sum(rows.values()), "blob_files_deleted": blob_files,
            "receipts": "\n".join(statements)}
        # 4. Each region's chain: what was erased there.
        for region in regions:
            here = [r for r in receipts if r.region == region]
            self._store_for(region).audit.append(actor, "erase", scope_id, {
                "scope": scope, "tenants": len({t.id for t, r in places if r == region}),
                "data_keys_destroyed": sum(r.keys_destroyed for r in here),
                "receipts": "\n".join(r.statement for r in here if r.keys_destroyed)})
        # 5. Backups: the KEK that wrapped the shredded keys in any earlier copy goes, where
        # the KEK is a file of ours. A shared keystore's KEK is held by a KMS (or a file every
        # replica mounts): its backups are made useless there (docs/KEYS.md, docs/deploy.md).
        rotated = {region: self._store_for(region).rotate_kek(actor=actor) for region in regions
                   if isinstance(self._store_for(region).keys, LocalKeyProvider)}
        # 6. What a request already under way wrote after step 2 (sealed under a key that is
        # gone, but not left behind either).
        blob_files += self._delete_tenants(places, regions, rows)
        # 7. The directory, last (and its chain, in the same transaction): until it is marked,
        # running the erasure again does every step again, so a crash leaves nothing undone.
        counts["rows_deleted"] = sum(rows.values())
        counts["blob_files_deleted"] = blob_files
        mark = self._directory.mark_erased(scope, scope_id, details=counts, actor=actor)
        mark = dataclasses.replace(mark, api_keys_revoked=mark.api_keys_revoked + keys_revoked,
                                   tokens_revoked=mark.tokens_revoked + tokens_revoked)
        return ErasureReport(plan, receipts, dict(rows), blob_files, mark, rotated,
                             [region for region in regions if region not in rotated])

    def _delete_tenants(self, places: Sequence[tuple[OwnedTenant, str]], regions: Sequence[str],
                        rows: Counter[str]) -> int:
        """Delete the tenants' rows and blobs in `regions`; count rows into `rows`, return the
        blob files deleted."""
        blob_files = 0
        for tenant, region in places:
            if region in regions:
                deleted, files = self._delete_tenant(self._store_for(region), tenant)
                rows.update(deleted)
                blob_files += files
        return blob_files

    # -- one member's content -------------------------------------------------------------------

    def plan_member(self, workspace_id: str, user_id: str) -> MemberErasure:
        workspace = self._member_workspace(workspace_id, user_id)
        return MemberErasure(workspace_id, user_id,
                             self._holding(self._store_for(workspace.region), workspace_id,
                                           user_id))

    def erase_member(self, workspace_id: str, user_id: str, *,
                     actor: str = "cli") -> MemberErasure:
        """Delete the member's rows and their files' and GPTs' blobs, vacuum, audit. An erased
        workspace has nothing left: the plan (all zeros) is returned, nothing done."""
        workspace = self._member_workspace(workspace_id, user_id)
        store = self._store_for(workspace.region)
        if workspace.erased_at is not None:
            return self.plan_member(workspace_id, user_id)
        tenant = OwnedTenant("workspace", workspace.id, workspace.org_id, workspace.region,
                             workspace.erased_at)
        ref = tenant_ref(tenant)
        rows: Counter[str] = Counter()
        blob_files = 0
        for table in reversed(CONTENT_TABLES):  # messages before their conversations
            if table.member_column is None:
                continue
            ids_column = table.table.c[table.id_column]
            with store.engine.begin() as conn:
                ids = list(conn.scalars(select(ids_column).where(
                    owned_rows(table, workspace.id, user_id))))
            for row_id in ids:  # the blobs first: a failure leaves the row, listed, to retry
                for kind in table.blob_kinds:
                    if store.delete_blob(ref, kind, row_id):
                        rows[BLOBS.name] += 1
                        blob_files += 1
            with store.engine.begin() as conn:
                rows[table.name] += _rowcount(conn.execute(delete(table.table).where(
                    owned_rows(table, workspace.id, user_id))))
        purge_journals(store.engine)
        holding = Holding(workspace.id, store.region, dict(rows), blob_files, False)
        store.audit.append(actor, "erase.member", user_id, {
            "workspace": workspace.id, "rows_deleted": sum(rows.values()),
            "blob_files_deleted": blob_files})
        return MemberErasure(workspace_id, user_id, holding, done=True)

    def _member_workspace(self, workspace_id: str, user_id: str) -> Workspace:
        """The workspace, once `user_id` is shown to be one of its members (removed ones
        included: a member who left may ask for their content to be erased)."""
        with Session(self._directory_engine, expire_on_commit=False) as session:
            workspace = session.get(Workspace, workspace_id)
            if workspace is None:
                raise NotFound(f"no workspace {workspace_id}", param="workspace")
            user = session.get(User, user_id)
            if user is None or user.workspace_id != workspace_id:
                raise NotFound(f"no user {user_id} in workspace {workspace_id}", param="member")
            return workspace

    # -- stores ---------------------------------------------------------------------------------

    def _holding(self, store: RegionalStore, tenant_id: str,
                 member_id: str | None = None) -> Holding:
        counts: dict[str, int] = {}
        with store.engine.connect() as conn:
            for table in CONTENT_TABLES:
                if member_id is not None and table.member_column is None:
                    continue
                counts[table.name] = int(conn.scalar(
                    select(func.count()).select_from(table.table)
                    .where(owned_rows(table, tenant_id, member_id))) or 0)
            if member_id is not None:
                files = 0
                for table in CONTENT_TABLES:
                    if table.blob_kinds and table.member_column is not None:
                        ids = select(table.table.c[table.id_column]).where(
                            owned_rows(table, tenant_id, member_id))
                        files += int(conn.scalar(
                            select(func.count()).select_from(BLOBS.table).where(
                                owned_rows(BLOBS, tenant_id),
                                BLOBS.table.c.kind.in_(table.blob_kinds),
                                BLOBS.table.c.blob_id.in_(ids))) or 0)
                return Holding(tenant_id, store.region, counts, files, False)
        blob_files = sum(1 for _ in store.blobs.keys(f"{tenant_id}/"))
        return Holding(tenant_id, store.region, counts, blob_files,
                       store.keys.has_tenant(tenant_id))

    def _delete_tenant(self, store: RegionalStore, tenant: OwnedTenant
                       ) -> tuple[dict[str, int], int]:
        """Delete every row of the tenant, then every blob file under its prefix (those of
        rows, and any a crash left unlisted)."""
        deleted: dict[str, int] = {}
        with store.engine.begin() as conn:
            for table in reversed(CONTENT_TABLES):  # messages before their conversations
                deleted[table.name] = _rowcount(conn.execute(
                    delete(table.table).where(owned_rows(table, tenant.id))))
            for name, column in TENANT_METADATA.items():
                metadata = RegionBase.metadata.tables[name]
                deleted[name] = _rowcount(conn.execute(
                    delete(metadata).where(metadata.c[column] == tenant.id)))
        files = 0
        for key in list(store.blobs.keys(f"{tenant.id}/")):
            files += store.blobs.delete(key)
        if isinstance(store.blobs, FileBlobStore):
            # Temp files of interrupted uploads, and the tenant's now empty folders.
            shutil.rmtree(store.blobs.root / tenant.id, ignore_errors=True)
        else:
            from domicile.storage.s3 import S3BlobStore  # boto3: loaded for S3 sites only

            if isinstance(store.blobs, S3BlobStore):
                # Parts of uploads never completed: S3 keeps them, unlisted, until aborted.
                store.blobs.abort_staged(f"{tenant.id}/")
        return deleted, files


def purge_journals(engine: Engine) -> None:
    """Leave no deleted row's bytes in the database's files: SQLite's write-ahead log is
    checkpointed and truncated, the file rebuilt (`VACUUM`) and checkpointed again;
    PostgreSQL's tables are vacuumed."""
    raw = engine.raw_connection()
    try:
        driver: Any = raw.driver_connection
        if engine.dialect.name == "sqlite":
            _checkpoint(driver)
            driver.execute("VACUUM")
            _checkpoint(driver)
        else:
            driver.autocommit = True  # VACUUM cannot run in a transaction
            try:
                with driver.cursor() as cursor:
                    cursor.execute("VACUUM")
            finally:
                driver.autocommit = False
    finally:
        raw.close()


def _checkpoint(connection: Any) -> None:
    for attempt in range(CHECKPOINT_TRIES):
        busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if not busy:
            return
        time.sleep(0.05 * (attempt + 1))  # a reader (a server) holds an old snapshot
    raise StorageError("the store's write-ahead log could not be truncated (readers busy); "
                       "run the erasure again")


def _rowcount(result: Any) -> int:
    return int(result.rowcount)

