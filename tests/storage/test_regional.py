"""The regional store: G5 (sealed at rest, bound to its row) and region-own rows only."""

from __future__ import annotations

import errno
import os
import secrets
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, text, update
from sqlalchemy.exc import DBAPIError

from domicile.crypto import DecryptionError
from domicile.errors import (
    CrossRegionWrite,
    StorageError,
    StoreUnavailable,
    TenantDataErased,
)
from domicile.site import Site
from domicile.storage.faults import store_fault
from domicile.storage.interfaces import TenantRef, UsageRecord
from domicile.storage.models import RecordRow
from domicile.storage.regional import RegionalStore, claim_region
from tests.conftest import SiteFactory, scan_for_canary


@pytest.fixture
def eu_tenant(site: Site) -> TenantRef:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu", retention="regional")
    return TenantRef(project.id, "eu", org.id)


def test_record_round_trip(site: Site, eu_tenant: TenantRef) -> None:
    store = site.store("eu")
    store.put_record(eu_tenant, "response", "resp_1", b"hello")
    assert store.get_record(eu_tenant, "response", "resp_1") == b"hello"
    store.put_record(eu_tenant, "response", "resp_1", b"again")
    assert store.get_record(eu_tenant, "response", "resp_1") == b"again"
    assert store.list_records(eu_tenant, "response") == ["resp_1"]
    assert store.delete_record(eu_tenant, "response", "resp_1")
    assert store.get_record(eu_tenant, "response", "resp_1") is None


@pytest.mark.parametrize("size", [0, 1, 65536, 200_001])
def test_blob_round_trip(site: Site, eu_tenant: TenantRef, size: int) -> None:
    store = site.store("eu")
    data = os.urandom(size)
    chunks = [data[i:i + 7000] for i in range(0, len(data), 7000)]
    stored = store.put_blob(eu_tenant, "file", "file_1", "notes.txt", chunks, {"purpose": "x"})
    assert stored.size == size
    assert b"".join(store.open_blob(eu_tenant, "file", "file_1")) == data
    info = store.get_blob(eu_tenant, "file", "file_1")
    assert info is not None and info.filename == "notes.txt" and info.meta == {"purpose": "x"}
    assert [b.id for b in store.list_blobs(eu_tenant, "file")] == ["file_1"]
    assert store.delete_blob(eu_tenant, "file", "file_1")
    assert store.get_blob(eu_tenant, "file", "file_1") is None


def test_store_refuses_a_tenant_of_another_region(site: Site, eu_tenant: TenantRef) -> None:
    with pytest.raises(CrossRegionWrite):
        site.store("us").put_record(eu_tenant, "response", "r", b"x")
    with pytest.raises(CrossRegionWrite):
        site.store("us").put_blob(eu_tenant, "file", "f", "f.txt", [b"x"])
    with site.store("us").engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM records")).scalar() == 0


def test_database_refuses_a_row_of_another_region(site: Site) -> None:
    with pytest.raises(DBAPIError, match="another region"):
        with site.store("us").engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO records (tenant_id, kind, record_id, region, created_at, updated_at,"
                " body) VALUES ('t', 'k', 'r', 'eu', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :b)"),
                {"b": b"x"})


@pytest.mark.parametrize("table", ["records", "blobs", "usage"])
def test_database_refuses_to_move_a_row_to_another_region(site: Site, eu_tenant: TenantRef,
                                                         table: str) -> None:
    """G1: SQLite's trigger once fired on INSERT only, so an UPDATE could re-label a row."""
    store = site.store("eu")
    store.put_record(eu_tenant, "response", "r", b"x")
    store.put_blob(eu_tenant, "file", "f", "f.txt", [b"x"])
    store.write_usage([UsageRecord(datetime.now(UTC), "eu", eu_tenant.id, "key_1",
                                   "/v1/chat/completions", "m", "p", 200, 1, 1, 1.0, "req")])
    with pytest.raises(DBAPIError, match="another region"), store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {table} SET region = 'us'"))
    with store.engine.connect() as conn:
        assert conn.execute(text(f"SELECT DISTINCT region FROM {table}")).scalars().all() == [
            "eu"]


def test_a_store_identity_cannot_be_replaced(site: Site) -> None:
    """G1: deleting the identity row and inserting another region's would re-label a store."""
    engine = site.store("eu").engine
    with pytest.raises(DBAPIError, match="immutable"), engine.begin() as conn:
        conn.execute(text("DELETE FROM store_identity"))
    with pytest.raises(DBAPIError, match="one region only"), engine.begin() as conn:
        conn.execute(text("INSERT INTO store_identity (region, created_at) "
                          "VALUES ('us', CURRENT_TIMESTAMP)"))
    if engine.dialect.name == "postgresql":  # TRUNCATE skips row triggers
        with pytest.raises(DBAPIError, match="immutable"), engine.begin() as conn:
            conn.execute(text("TRUNCATE store_identity"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT region FROM store_identity")).scalars().all() == ["eu"]


def test_a_store_of_another_region_is_refused_at_open(site: Site) -> None:
    with pytest.raises(StorageError, match="belongs to region 'eu'"):
        claim_region(site.store("eu").engine, "us")


def test_ciphertext_moved_to_another_record_does_not_open(site: Site,
                                                          eu_tenant: TenantRef) -> None:
    store = site.store("eu")
    store.put_record(eu_tenant, "response", "a", b"secret a")
    store.put_record(eu_tenant, "response", "b", b"secret b")
    with store.engine.begin() as conn:
        body_a = conn.execute(text("SELECT body FROM records WHERE record_id = 'a'")).scalar()
        conn.execute(update(RecordRow).where(RecordRow.record_id == "b").values(body=body_a))
    with pytest.raises(DecryptionError):
        store.get_record(eu_tenant, "response", "b")


def test_no_plaintext_of_a_canary_reaches_the_data_folder(site: Site,
                                                          eu_tenant: TenantRef) -> None:
    canary = f"CANARY-{secrets.token_hex(12)}"
    store = site.store("eu")
    store.put_record(eu_tenant, "response", "r1", f"the answer is {canary}".encode())
    store.put_blob(eu_tenant, "file", "f1", f"{canary}.txt", [canary.encode() * 5000],
                   {"purpose": canary})
    store.put_record(eu_tenant, "response", "r2", canary.encode())
    store.delete_record(eu_tenant, "response", "r2")
    data_dir = Path(site.settings.data_dir)
    assert scan_for_canary([data_dir], canary) == []
    assert rows_holding(site, canary) == []  # on PostgreSQL the rows live in the server
    # the scanner itself finds a planted plaintext copy: the test can fail
    (data_dir / "planted").write_text(canary)
    assert scan_for_canary([data_dir], canary)
    site.store("eu").audit.append("test", "plant", canary)  # and the row scan finds one
    assert rows_holding(site, canary)


def rows_holding(site: Site, canary: str) -> list[str]:
    """Every row of every table of every database of the site that holds a canary form."""
    from sqlalchemy import MetaData

    from tests.conftest import canary_forms

    forms = canary_forms(canary)
    hits = []
    for engine in (site.directory_engine, *(site.store(r).engine for r in site.settings.regions)):
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(table.select()):
                    for value in row:
                        data = value if isinstance(value, bytes) else str(value).encode()
                        if any(form in data for form in forms):
                            hits.append(f"{engine.url.database}.{table.name}")
    return hits


def test_destroyed_tenant_key_makes_content_unreadable(site: Site, eu_tenant: TenantRef) -> None:
    store = site.store("eu")
    store.put_record(eu_tenant, "response", "r", b"to be shredded")
    receipt = store.envelope.destroy_tenant_key(eu_tenant.id)
    assert receipt.keys_destroyed >= 1
    with pytest.raises(DecryptionError):
        store.get_record(eu_tenant, "response", "r")


def test_usage_metadata_round_trip(site: Site) -> None:
    from datetime import UTC, datetime

    from domicile.storage.interfaces import UsageRecord

    records = [UsageRecord(datetime.now(UTC), "eu", "proj_a", "key_a", "/v1/chat/completions",
                           "m", "eu-dev", 200, 10 + i, 5, 0.4, f"req_{i}") for i in range(300)]
    store = site.store("eu")
    store.write_usage(records)
    store.write_usage([])
    rows = store.usage("proj_a")
    assert len(rows) == 300 and rows[0].prompt_tokens == 10 and rows[-1].request_id == "req_299"
    assert store.usage("proj_b") == []
    store.write_usage([UsageRecord(datetime.now(UTC), "eu", "proj_a", "key_b", "/v1/embeddings",
                                   "m", "eu-dev", 200, 3, 0, 0.1, "req_b")])
    # Summed by key in the database: 300 requests of 10..309 + 5 tokens, and one of key_b.
    assert store.usage_totals("proj_a") == {"key_a": (300, sum(range(10, 310)), 1500),
                                            "key_b": (1, 3, 0)}
    assert store.usage_totals("proj_b") == {}
    with pytest.raises(DBAPIError, match="another region"):
        site.store("us").write_usage(records[:1])  # an eu record in the us store


def test_a_shredded_tenant_is_never_silently_given_a_new_key(site: Site,
                                                            eu_tenant: TenantRef) -> None:
    """G9: after crypto-shredding, no process re-creates the tenant's key on its next write,
    and every process refuses the write as an erased tenant's (410), not as a missing key."""
    site.store("eu").put_record(eu_tenant, "response", "r", b"before")
    site.store("eu").envelope.destroy_tenant_key(eu_tenant.id)
    other_process = Site(site.settings)  # a server or CLI that never saw this tenant
    try:
        for store in (site.store("eu"), other_process.store("eu")):
            with pytest.raises(TenantDataErased):
                store.put_record(eu_tenant, "response", "r2", b"after")
            with pytest.raises(TenantDataErased):
                store.put_blob(eu_tenant, "file", "f", "f.txt", [b"after"])
            with pytest.raises(TenantDataErased):
                store.seal(eu_tenant, "ws-message", "m", b"after")
            with pytest.raises(DecryptionError):
                store.get_record(eu_tenant, "response", "r")
        assert not other_process.store("eu").keys.has_tenant(eu_tenant.id)
    finally:
        other_process.close()


def test_a_global_tenant_gets_its_key_in_a_region_on_first_write(site: Site) -> None:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "g", "global", per_request_residency=True)
    roaming = TenantRef(project.id, "global", org.id)
    for region in ("eu", "us"):
        store = site.store(region)
        assert not store.keys.has_tenant(project.id)
        store.put_record(roaming, "response", "r", region.encode())
        assert store.get_record(roaming, "response", "r") == region.encode()


@pytest.fixture
def stored_file(make_site: SiteFactory) -> tuple[RegionalStore, TenantRef, Path]:
    """An eu store on SQLite holding one file, and that file's blob on disk."""
    site = make_site("sqlite")
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu", retention="regional")
    tenant = TenantRef(project.id, "eu", org.id)
    store = site.store("eu")
    store.put_blob(tenant, "file", "file_1", "kept.txt", [b"kept"])
    blob_root = site.settings.regions["eu"].blob_path
    assert blob_root is not None
    [blob] = [path for path in blob_root.rglob("*") if path.is_file()]
    return store, tenant, blob


def test_a_delete_the_database_refuses_leaves_the_file_whole(
        stored_file: tuple[RegionalStore, TenantRef, Path]) -> None:
    """A real SQLITE_BUSY (another process holds the write lock): the DELETE fails as a store
    fault (503), and the file is still listed with its content."""
    store, tenant, blob = stored_file

    @event.listens_for(store.engine, "connect")
    def no_waiting(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout = 0")

    store.engine.dispose()
    holder = sqlite3.connect(store.engine.url.database or "", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DBAPIError) as refused:
            store.delete_blob(tenant, "file", "file_1")
        assert isinstance(store_fault(refused.value), StoreUnavailable)
    finally:
        holder.rollback()
        holder.close()
    assert blob.exists()
    assert [b.filename for b in store.list_blobs(tenant, "file")] == ["kept.txt"]
    assert b"".join(store.open_blob(tenant, "file", "file_1")) == b"kept"
    assert store.delete_blob(tenant, "file", "file_1")
    assert not blob.exists() and store.list_blobs(tenant, "file") == []


def test_a_delete_on_a_full_disk_frees_the_file_then_deletes_the_row(
        stored_file: tuple[RegionalStore, TenantRef, Path]) -> None:
    store, tenant, blob = stored_file
    refused: list[str] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def full_until_the_file_is_gone(_conn: object, _cursor: object, statement: str,
                                    *_: object) -> None:
        if statement.lstrip().upper().startswith("DELETE") and blob.exists():
            refused.append(statement)
            raise sqlite3.OperationalError("database or disk is full")

    assert store.delete_blob(tenant, "file", "file_1")
    assert len(refused) == 1
    assert not blob.exists() and store.list_blobs(tenant, "file") == []


def test_a_deleted_file_whose_blob_cannot_be_removed_is_still_deleted(
        stored_file: tuple[RegionalStore, TenantRef, Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Its row is gone, so the DELETE succeeded: answered as such, the leftover logged."""
    store, tenant, blob = stored_file

    def broken_disk(key: str) -> bool:
        raise OSError(errno.EIO, "Input/output error", str(blob))

    monkeypatch.setattr(store.blobs, "delete", broken_disk)
    assert store.delete_blob(tenant, "file", "file_1")
    assert store.list_blobs(tenant, "file") == []
    assert "errno 5 (EIO)" in caplog.text and str(blob) not in caplog.text
    with pytest.raises(OSError):  # nothing deleted: the error is the answer
        store.delete_blob(tenant, "file", "file_1")
