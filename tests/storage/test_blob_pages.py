"""Pages of a tenant's blobs, read by the store in (created_at, id) order by keyset: every blob
once across pages, in either order, ties broken by id, and only as many rows read as a page
needs (on SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, inspect, select, update

from domicile.site import Site
from domicile.storage import regional
from domicile.storage.interfaces import StoredBlob, TenantRef, UnknownCursor
from domicile.storage.models import BlobRow
from domicile.storage.regional import RegionalStore


@pytest.fixture
def tenant(site: Site) -> TenantRef:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu", retention="regional")
    return TenantRef(project.id, "eu", org.id)


def _put(store: RegionalStore, tenant: TenantRef, count: int, kind: str = "file") -> list[str]:
    ids = [f"blob-{i:03d}" for i in range(count)]
    for i, blob_id in enumerate(ids):
        store.put_blob(tenant, kind, blob_id, f"{i}.txt", [b"x"],
                       {"purpose": "even" if i % 2 == 0 else "odd"})
    return ids


def _walk(store: RegionalStore, tenant: TenantRef, limit: int, descending: bool,
          keep: object = None) -> list[list[str]]:
    pages, after = [], None
    while True:
        page = store.page_blobs(tenant, "file", limit=limit, after=after,
                                descending=descending, keep=keep)  # type: ignore[arg-type]
        pages.append([b.id for b in page.blobs])
        if not page.has_more:
            return pages
        after = page.blobs[-1].id


@pytest.mark.parametrize("descending", [True, False], ids=["desc", "asc"])
def test_pages_cover_every_blob_once_in_order(site: Site, tenant: TenantRef,
                                              monkeypatch: pytest.MonkeyPatch,
                                              descending: bool) -> None:
    monkeypatch.setattr(regional, "PAGE_BATCH", 2)  # several reads per page
    store = site.store("eu")
    ids = _put(store, tenant, 7)
    expected = ids[::-1] if descending else ids
    assert _walk(store, tenant, 3, descending) == [expected[:3], expected[3:6], expected[6:]]
    odd = [i for n, i in enumerate(ids) if n % 2 == 1]

    def is_odd(blob: StoredBlob) -> bool:
        return blob.meta["purpose"] == "odd"

    pages = _walk(store, tenant, 2, descending, is_odd)
    assert pages == ([odd[::-1][:2], odd[::-1][2:]] if descending else [odd[:2], odd[2:]])


def test_equal_creation_times_are_ordered_by_id(site: Site, tenant: TenantRef) -> None:
    store = site.store("eu")
    ids = _put(store, tenant, 5)
    with store.engine.begin() as conn:
        conn.execute(update(BlobRow).values(created_at=datetime(2026, 1, 1, tzinfo=UTC)))
    assert _walk(store, tenant, 2, True) == [ids[::-1][:2], ids[::-1][2:4], ids[::-1][4:]]
    assert _walk(store, tenant, 2, False) == [ids[:2], ids[2:4], ids[4:]]


def test_a_page_reads_only_the_rows_it_needs(site: Site, tenant: TenantRef) -> None:
    store = site.store("eu")
    _put(store, tenant, 60)
    opened: list[str] = []

    def keep(blob: StoredBlob) -> bool:
        opened.append(blob.id)
        return True

    limits: list[int] = []

    def note(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM blobs" in statement and "LIMIT" in statement:
            values = parameters.values() if isinstance(parameters, dict) else parameters
            limits.extend(v for v in values if type(v) is int)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        page = store.page_blobs(tenant, "file", limit=2, keep=keep)
    finally:
        event.remove(store.engine, "before_cursor_execute", note)
    assert len(page.blobs) == 2 and page.has_more
    assert len(opened) == 3  # the page and one more, to know there is more
    assert limits and max(limits) == 3  # and no more rows asked of the database


def test_a_cursor_that_names_no_blob_is_refused(site: Site, tenant: TenantRef) -> None:
    store = site.store("eu")
    _put(store, tenant, 2)
    other = TenantRef("proj_other", "eu", "org")
    with pytest.raises(UnknownCursor):
        store.page_blobs(tenant, "file", limit=1, after="blob-999")
    with pytest.raises(UnknownCursor):  # another tenant's blob is no cursor of this one's
        store.page_blobs(other, "file", limit=1, after="blob-000")


def test_tenants_holding_names_tenants_by_records_and_blobs(site: Site,
                                                            tenant: TenantRef) -> None:
    store = site.store("eu")
    assert store.tenants_holding("file") == []
    _put(store, tenant, 1)
    store.put_record(tenant, "upload", "upload_1", b"{}")
    assert store.tenants_holding("file") == [tenant.id]
    assert store.tenants_holding("upload") == [tenant.id]
    assert store.tenants_holding("response") == []


def _put_rows(store: RegionalStore, tenant: TenantRef, count: int, purpose: str) -> None:
    """`count` file rows with sealed metadata, inserted at once (no blob files: a page reads
    rows and metadata only)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(count):
        blob_id = f"file-{purpose}{i:05d}"
        meta = store.seal(tenant, f"file:{regional.BLOB_META_KIND}", blob_id,
                          json.dumps({"filename": "f.txt", "purpose": purpose}).encode())
        rows.append({"tenant_id": tenant.id, "kind": "file", "blob_id": blob_id,
                     "region": "eu", "size": 1, "created_at": at + timedelta(seconds=i),
                     "meta": meta, "training_consent": False})
    with store.engine.begin() as conn:
        conn.execute(insert(BlobRow), rows)


def _reads_of_blobs(store: RegionalStore) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM blobs" in statement:
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", note)


def test_a_filter_that_matches_little_reads_in_full_batches(site: Site,
                                                            tenant: TenantRef) -> None:
    store = site.store("eu")
    _put_rows(store, tenant, 3000, "other")
    _put_rows(store, tenant, 1, "wanted")  # among the oldest: read last, newest first

    def wanted(blob: StoredBlob) -> bool:
        return blob.meta["purpose"] == "wanted"

    with contextlib.contextmanager(_reads_of_blobs)(store) as seen:
        page = store.page_blobs(tenant, "file", limit=1, keep=wanted)
    assert [b.id for b in page.blobs] == ["file-wanted00000"] and not page.has_more
    # 3001 rows: the page's size and one more, then batches of PAGE_BATCH (not one per row).
    assert len(seen) <= 2 + 3001 // regional.PAGE_BATCH, len(seen)


def test_a_filtered_page_stops_at_its_scan_limit_with_has_more(site: Site,
                                                               tenant: TenantRef) -> None:
    store = site.store("eu")
    _put_rows(store, tenant, 1200, "other")
    with contextlib.contextmanager(_reads_of_blobs)(store) as seen:
        page = store.page_blobs(tenant, "file", limit=1, keep=lambda _: False,
                                scan_limit=1000)
    assert page.blobs == [] and page.has_more  # cut short: more may follow
    assert len(seen) <= 4, len(seen)
    read = store.page_blobs(tenant, "file", limit=5, scan_limit=1000)  # unfiltered: no cut
    assert len(read.blobs) == 5 and read.has_more


def test_pages_are_read_along_the_blob_index(site: Site, tenant: TenantRef) -> None:
    store = site.store("eu")
    indexes = {i["name"]: i["column_names"] for i in inspect(store.engine).get_indexes("blobs")}
    assert indexes["ix_blobs_tenant_kind_created"] == ["tenant_id", "kind", "created_at",
                                                       "blob_id"]
    if store.engine.dialect.name == "sqlite":  # and SQLite's planner walks it, sorting nothing
        query = (select(BlobRow).where(BlobRow.tenant_id == tenant.id, BlobRow.kind == "file")
                 .order_by(BlobRow.created_at.desc(), BlobRow.blob_id.desc()).limit(10))
        compiled = query.compile(store.engine, compile_kwargs={"literal_binds": True})
        with store.engine.connect() as conn:
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {compiled}"))
        assert "ix_blobs_tenant_kind_created" in plan and "TEMP B-TREE" not in plan, plan


def test_blobs_listed_by_prefix_are_only_those(site: Site, tenant: TenantRef) -> None:
    store = site.store("eu")
    for blob_id in ("upload_a.part_1", "upload_a.part_2", "upload_ab.part_1", "upload_b.part_1",
                    "upload_a_part_x", "upload_a/part"):
        store.put_blob(tenant, "upload-part", blob_id, "part", [b"x"])
    assert sorted(b.id for b in store.list_blobs(tenant, "upload-part", prefix="upload_a.")) == [
        "upload_a.part_1", "upload_a.part_2"]
    assert len(store.list_blobs(tenant, "upload-part")) == 6
