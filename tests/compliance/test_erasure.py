"""Erasure (G9): after it nothing of the tenant can be decrypted, backups included.

A snapshot of a region (every ciphertext of the store, the blob files, the keystore file) is
taken before the erasure, as a backup would be. After it, the snapshot opened with the
region's key-encryption key as it stands yields nothing (the KEK was rotated); on SQLite no
file under the data folder holds any of the erased ciphertexts (journals checkpointed,
database vacuumed) nor the canary. One member's erasure leaves the others' content readable.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from domicile.compliance.erasure import Erasure
from domicile.config import WorkspaceSettings
from domicile.crypto import Context, DecryptionError, Envelope, LocalKeyProvider
from domicile.errors import TenantDataErased
from domicile.site import Site
from domicile.storage.catalog import CONTENT_TABLES, blob_key, content_table
from domicile.storage.models import AUDIT_LOG
from domicile.storage.regional import RegionalStore
from domicile.tenancy import models as directory_models
from domicile.tenancy.models import ApiKey, Org, Project, User, Workspace
from domicile.workspace.conversations import Conversations
from domicile.workspace.files import FileStore
from domicile.workspace.gpts import Gpts
from tests.compliance.test_export import Tenancy, fill
from tests.conftest import SiteFactory, scan_for_canary


@dataclass(frozen=True)
class Sealed:
    """One ciphertext as a backup holds it, with the context it opens under."""

    table: str
    context: Context
    data: bytes
    blob: bool = False


def snapshot_ciphertexts(store: RegionalStore, tenants: set[str]) -> list[Sealed]:
    """Every sealed column and blob file of `tenants` in `store`, as bytes."""
    found = []
    with store.engine.connect() as conn:
        for table in CONTENT_TABLES:
            columns = table.table.c
            for row in conn.execute(select(table.table).where(
                    columns[table.tenant_column].in_(tenants))).all():
                row_kind = getattr(row, table.kind_column) if table.kind_column else None
                record_id = getattr(row, table.id_column)
                tenant = getattr(row, table.tenant_column)
                for column in table.sealed:
                    kind = table.context_kind(column, row_kind)
                    found.append(Sealed(table.name, Context(store.region, tenant, kind,
                                                            record_id),
                                        bytes(getattr(row, column.name))))
                if table.blob and row_kind is not None:
                    data = b"".join(store.blobs.get(blob_key(tenant, row_kind, record_id)))
                    found.append(Sealed(table.name, Context(store.region, tenant, row_kind,
                                                            record_id), data, blob=True))
    assert found, "nothing to snapshot: the test would prove nothing"
    return found


def keystore_copy(store: RegionalStore, folder: Path) -> Path:
    """A copy of the region's KEK file and keystore, as a backup would take them."""
    keys = store.keys
    assert isinstance(keys, LocalKeyProvider)
    folder.mkdir()
    shutil.copy2(keys.kek_path, folder / "kek.key")
    shutil.copy2(keys.keystore_path, folder / "kek.key.keystore.db")
    return folder / "kek.key"


def with_current_kek(store: RegionalStore, copied_kek: Path) -> Envelope:
    """The copied keystore opened with the region's KEK as it is now. The keystore's record
    of its KEK is rewritten to match (an attacker can do that), so only the wrapping of the
    data keys stands in the way."""
    keys = store.keys
    assert isinstance(keys, LocalKeyProvider)
    current = keys.kek_path.read_bytes()
    copied_kek.unlink()
    copied_kek.write_bytes(current)
    copied_kek.chmod(0o600)
    with sqlite3.connect(copied_kek.with_name("kek.key.keystore.db")) as db:
        db.execute("UPDATE keystore_meta SET value = ? WHERE name = 'kek_id'",
                   (hashlib.sha256(current).digest()[:8].hex(),))
    return Envelope(LocalKeyProvider(store.region, copied_kek), cache_ttl_s=0)


def opens(envelope: Envelope, sealed: Sealed) -> bool:
    try:
        if sealed.blob:
            b"".join(envelope.open_stream([sealed.data], sealed.context))
        else:
            envelope.open(sealed.data, sealed.context)
    except DecryptionError:
        return False
    return True


def erasure(site: Site) -> Erasure:
    return Erasure(site.directory, site.store, list(site.settings.regions),
                   site.directory_engine)


def files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def free_pages(store: RegionalStore) -> int:
    """SQLite: pages the store's file keeps unused (VACUUM rebuilds the file without them)."""
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)


def holding(root: Path, fragments: list[bytes]) -> list[str]:
    return [str(path) for path in files_under(root)
            for fragment in fragments if fragment in path.read_bytes()]


@pytest.fixture
def tenancy(site: Site) -> Tenancy:
    return fill(site)


def test_after_an_org_erasure_a_backup_taken_before_opens_nothing(
        make_site: SiteFactory, tmp_path: Path) -> None:
    """The embedded keystore (a file beside the KEK file): the erasure rotates the KEK. A
    shared keystore's KEK is a KMS's (test below)."""
    tenancy = fill(make_site("sqlite"))
    site = tenancy.site
    tenants = {tenancy.workspace_id, tenancy.project.id, tenancy.global_project.id}
    snapshots = {region: snapshot_ciphertexts(site.store(region), tenants)
                 for region in ("eu", "us")}
    backups = {region: keystore_copy(site.store(region), tmp_path / f"backup-{region}")
               for region in ("eu", "us")}
    # The backup is a good one: with the KEK of its time, everything in it opens.
    for region, sealed in snapshots.items():
        then = Envelope(LocalKeyProvider(region, backups[region]), cache_ttl_s=0)
        assert all(opens(then, item) for item in sealed)

    report = erasure(site).erase("org", tenancy.org_id)

    assert sorted(report.keks_rotated) == ["eu", "us"] and report.kek_rotation_needed == []
    assert any(f"tenant {tenancy.workspace_id} in region eu" in s for s in report.statements)
    for region, sealed in snapshots.items():
        now = with_current_kek(site.store(region), backups[region])
        opened = [item.table for item in sealed if opens(now, item)]
        assert opened == [], f"{region}: {len(opened)} ciphertexts of the backup still open"
        live = site.store(region)
        assert not any(live.keys.has_tenant(tenant) for tenant in tenants)
        assert all(not opens(live.envelope, item) for item in sealed)


def test_an_erasure_on_a_shared_keystore_shreds_without_touching_its_kek(
        make_site: SiteFactory) -> None:
    tenancy = fill(make_site("postgresql"))
    site = tenancy.site
    tenants = {tenancy.workspace_id, tenancy.project.id, tenancy.global_project.id}
    sealed = snapshot_ciphertexts(site.store("eu"), tenants)
    report = erasure(site).erase("org", tenancy.org_id)
    assert report.keks_rotated == {}  # a KMS's, or a file every replica mounts: not ours
    assert report.kek_rotation_needed == ["eu", "us"]
    assert report.to_json()["kek_rotation_needed"] == ["eu", "us"]
    assert "rotate it there" in report.backup_warnings[0]
    assert report.statements
    live = site.store("eu")
    assert not any(live.keys.has_tenant(tenant) for tenant in tenants)
    assert all(not opens(live.envelope, item) for item in sealed)


def test_an_org_erasure_removes_rows_blobs_and_credentials(tenancy: Tenancy) -> None:
    site = tenancy.site
    key = site.directory.create_api_key(tenancy.project.id)
    token = site.directory.create_token(tenancy.workspace_id, tenancy.alice.user_id)
    report = erasure(site).erase("org", tenancy.org_id)

    assert report.rows_deleted["ws_conversations"] == 2
    assert report.blob_files_deleted == 5  # two files and their texts, the API file
    for region in ("eu", "us"):
        store = site.store(region)
        with store.engine.connect() as conn:
            for table in CONTENT_TABLES:
                assert conn.execute(select(table.table)).all() == [], table.name
        assert list(store.blobs.keys()) == []
    directory = site.directory
    assert site.directory.authenticate_api_key(key.secret) is None
    assert site.directory.authenticate_token(token.secret) is None
    assert directory.list_members(tenancy.workspace_id) == []
    with site.directory_engine.connect() as conn:
        for model in (Org, Project, Workspace):
            assert all(row.erased_at is not None
                       for row in conn.execute(select(model.__table__)).all()), model
        emails = {row.email for row in conn.execute(select(User.__table__)).all()}
        assert not any("example.com" in email for email in emails)
        assert all(row.revoked_at is not None
                   for row in conn.execute(select(ApiKey.__table__)).all())
        audited = conn.execute(select(directory_models.AUDIT_LOG).where(
            directory_models.AUDIT_LOG.c.action == "erase")).all()
    assert [row.target for row in audited] == [tenancy.org_id]
    assert tenancy.canary not in audited[0].details
    assert json.loads(audited[0].details)["data_keys_destroyed"] >= 3
    for region in ("eu", "us"):
        with site.store(region).engine.connect() as conn:
            actions = [row.action for row in conn.execute(select(AUDIT_LOG)).all()]
        rotates = isinstance(site.store(region).keys, LocalKeyProvider)  # else a KMS's KEK
        assert actions[-2 if rotates else -1:] == ["erase", "kek.rotate"][:2 if rotates else 1]


def test_an_erased_tenant_takes_no_more_writes_and_erase_again_does_nothing(
        tenancy: Tenancy) -> None:
    site = tenancy.site
    erasure(site).erase("org", tenancy.org_id)
    store = site.store("eu")
    with pytest.raises(TenantDataErased):
        store.put_record(tenancy.alice.tenant, "response", "resp_2", b"{}")
    with pytest.raises(TenantDataErased):
        Conversations(store).create(tenancy.alice, title="after")
    with pytest.raises(TenantDataErased):  # the global project, in a process that knew it
        store.put_record(tenancy.global_project, "response", "resp_3", b"{}")
    directory = site.directory  # nothing new under an erased org, project or workspace
    for create in (lambda: directory.create_api_key(tenancy.project.id),
                   lambda: directory.create_project(tenancy.org_id, "again", "eu"),
                   lambda: directory.create_workspace(tenancy.org_id, "again", "eu"),
                   lambda: directory.add_user(tenancy.workspace_id, "new@example.com", "member",
                                              "a long password"),
                   lambda: directory.create_token(tenancy.workspace_id, tenancy.alice.user_id)):
        with pytest.raises(TenantDataErased, match="was erased"):
            create()
    again = erasure(site).erase("org", tenancy.org_id)
    assert again.plan.already_erased and again.receipts == () and again.keks_rotated == {}
    assert erasure(site).erase("workspace", tenancy.workspace_id).plan.already_erased


def test_a_plan_changes_nothing(tenancy: Tenancy) -> None:
    site = tenancy.site
    plan = erasure(site).plan("workspace", tenancy.workspace_id)
    eu = next(h for h in plan.holdings if h.region == "eu")
    assert eu.rows["ws_conversations"] == 2 and eu.data_keys and eu.blob_files == 4
    assert site.store("eu").keys.has_tenant(tenancy.workspace_id)
    assert erasure(site).plan("workspace", tenancy.workspace_id) == plan
    assert site.directory.get_workspace(tenancy.workspace_id).erased_at is None


def test_a_project_erasure_leaves_the_orgs_workspace(tenancy: Tenancy) -> None:
    site = tenancy.site
    erasure(site).erase("project", tenancy.project.id)
    assert Conversations(site.store("eu")).get(
        tenancy.alice, tenancy.ids["alice_conversation"]).summary.title == "alice chat"
    assert site.store("eu").get_record(tenancy.project, "response", "resp_1") is None
    assert site.directory.get_workspace(tenancy.workspace_id).erased_at is None


def test_a_members_erasure_leaves_the_other_members_content(tenancy: Tenancy) -> None:
    site, store = tenancy.site, tenancy.site.store("eu")
    alice_file = tenancy.ids["alice_file"]
    done = erasure(site).erase_member(tenancy.workspace_id, tenancy.alice.user_id)

    assert done.done and done.holding.rows["ws_conversations"] == 1
    assert done.holding.blob_files == 2  # her file's bytes and text; her GPT has no index
    conversations, files = Conversations(store), FileStore(store, WorkspaceSettings())
    assert conversations.list(tenancy.alice) == ([], None)
    assert files.get(tenancy.bob, tenancy.ids["bob_file"]).name == "bob-notes.txt"
    assert files.read(tenancy.bob, tenancy.ids["bob_file"]) == tenancy.file_bytes
    assert conversations.get(tenancy.bob, tenancy.ids["bob_conversation"]).summary.title == (
        "bob chat")
    assert Gpts(store).get(tenancy.bob, tenancy.ids["bob_gpt"]).instructions.startswith("be ")
    assert not store.blobs.exists(blob_key(tenancy.workspace_id, "ws-file", alice_file))
    assert store.keys.has_tenant(tenancy.workspace_id)  # the workspace's key stays
    with store.engine.connect() as conn:
        audited = conn.execute(select(AUDIT_LOG).where(
            AUDIT_LOG.c.action == "erase.member")).all()
    assert [row.target for row in audited] == [tenancy.alice.user_id]


@pytest.fixture
def sqlite_tenancy(make_site: SiteFactory) -> Tenancy:
    """As `fill`, with a long conversation: its table spans many pages, which its erasure
    frees (and VACUUM must then drop)."""
    tenancy = fill(make_site("sqlite"))
    conversations = Conversations(tenancy.site.store("eu"))
    long = conversations.create(tenancy.alice, title="long")
    parent = None
    for turn in range(60):
        parent = conversations.add_message(
            tenancy.alice, long.id, role="user" if turn % 2 == 0 else "assistant",
            content=f"{tenancy.canary} " * 200, parent_id=parent).id
    return tenancy


def test_no_file_of_the_data_folder_keeps_an_erased_ciphertext(sqlite_tenancy: Tenancy
                                                               ) -> None:
    """SQLite: the write-ahead log and free pages are purged (the engines stay open, as a
    running server's would: closing them would checkpoint on its own)."""
    site = sqlite_tenancy.site
    tenants = {sqlite_tenancy.workspace_id, sqlite_tenancy.project.id,
               sqlite_tenancy.global_project.id}
    fragments = [item.data[-32:] for region in ("eu", "us")
                 for item in snapshot_ciphertexts(site.store(region), tenants)]
    data_dir = site.settings.data_dir
    assert holding(data_dir, fragments), "the fragments are not where the test looks"

    erasure(site).erase("org", sqlite_tenancy.org_id)

    assert holding(data_dir, fragments) == []
    assert scan_for_canary([data_dir], sqlite_tenancy.canary) == []
    assert [free_pages(site.store(region)) for region in ("eu", "us")] == [0, 0]


def test_a_members_erased_ciphertexts_leave_the_files_too(sqlite_tenancy: Tenancy) -> None:
    site, tenancy = sqlite_tenancy.site, sqlite_tenancy
    store = site.store("eu")
    messages = content_table("ws_messages").table
    with store.engine.connect() as conn:
        mine = [bytes(row.body)[-32:] for row in conn.execute(select(messages).where(
            messages.c.user_id == tenancy.alice.user_id)).all()]
    assert mine and holding(site.settings.data_dir, mine)
    erasure(site).erase_member(tenancy.workspace_id, tenancy.alice.user_id)
    assert holding(site.settings.data_dir, mine) == []
    assert free_pages(store) == 0
