"""Residency verification (G1, G5, G8): a clean site passes; each way of moving, changing or
corrupting data behind Domicile's back is named, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text, update

from domicile.compliance.erasure import Erasure
from domicile.compliance.verification import Verification, Violation, verify_site
from domicile.site import Site
from domicile.storage.catalog import blob_key
from domicile.storage.models import RecordRow
from domicile.workspace.files import FILE_BLOB_KIND
from domicile.workspace.models import MessageRow
from tests.compliance.residency_site import Populated, populate
from tests.compliance.tampering import tamper


@pytest.fixture
def populated(site: Site) -> Populated:
    return populate(site)


def around_trigger(engine: Engine, table: str, trigger: str, *statements: str) -> None:
    """Run `statements` with `trigger` of `table` out of the way, as a database owner could."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(f"DROP TRIGGER {trigger}"))
        else:
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}"))
        for statement in statements:
            conn.execute(text(statement))


def only(result: Verification, match: Callable[[Violation], bool]) -> list[Violation]:
    return [v for v in result.violations if match(v)]


def test_a_site_with_content_of_every_type_verifies(site: Site, populated: Populated) -> None:
    result = verify_site(site)
    assert result.violations == []
    # conversations 2, messages 2, ws_files 1, gpts 1, records 2, blobs 3 (file, file text,
    # gateway file), usage 3: every row was read
    assert result.records == 14
    assert result.blobs == 3
    assert result.ok


def test_a_row_copied_from_an_eu_tenant_into_the_us_store_is_named(
        site: Site, populated: Populated) -> None:
    eu, us = site.store("eu"), site.store("us")
    with eu.engine.connect() as conn:
        row = conn.execute(select(RecordRow).where(RecordRow.record_id == "resp_1")).one()
    copied = {column: getattr(row, column) for column in row._fields}
    copied["region"] = "us"  # the store's trigger accepts its own region
    with us.engine.begin() as conn:
        conn.execute(insert(RecordRow).values(**copied))
    result = verify_site(site, ["us"])
    found = only(result, lambda v: v.row == "resp_1")
    assert [(v.region, v.table, v.tenant) for v in found] == [
        ("us", "records", populated.eu_project)] * 2
    assert "its tenant is of region 'eu', not 'us'" in found[0].problem
    assert "does not open under region 'us'" in found[1].problem


def test_a_region_changed_by_hand_in_the_directory_is_named(
        site: Site, populated: Populated) -> None:
    around_trigger(site.directory_engine, "projects", "projects_refuse_update",
                   f"UPDATE projects SET region = 'us' WHERE id = '{populated.eu_project}'")
    result = verify_site(site)
    directory = only(result, lambda v: v.region == "directory")
    assert [(v.table, v.row) for v in directory] == [("projects", populated.eu_project)]
    assert "'us' in the directory, but its audited creation recorded 'eu'" in directory[0].problem
    # and its rows in the eu store now belong to a tenant of another region
    moved = only(result, lambda v: v.region == "eu" and v.tenant == populated.eu_project)
    assert {v.table for v in moved} == {"records", "blobs", "usage"}


def test_a_plaintext_column_added_by_hand_is_named(site: Site, populated: Populated) -> None:
    with site.store("eu").engine.begin() as conn:
        conn.execute(text("ALTER TABLE ws_messages ADD COLUMN note TEXT"))
    result = verify_site(site)
    assert [(v.region, v.table, v.problem) for v in result.violations] == [
        ("eu", "ws_messages", "column 'note' is not in the schema (added by hand?)")]


def test_an_unknown_table_is_named(site: Site, populated: Populated) -> None:
    with site.store("us").engine.begin() as conn:
        conn.execute(text("CREATE TABLE notes (body TEXT)"))
    result = verify_site(site)
    assert [(v.region, v.table) for v in result.violations] == [("us", "notes")]


def test_ciphertexts_swapped_between_two_rows_are_named(site: Site,
                                                        populated: Populated) -> None:
    engine = site.store("eu").engine
    first, second = populated.messages
    with engine.begin() as conn:
        bodies = dict(conn.execute(select(MessageRow.id, MessageRow.body)
                                   .where(MessageRow.id.in_(populated.messages))).all())
        conn.execute(update(MessageRow).where(MessageRow.id == first).values(body=bodies[second]))
        conn.execute(update(MessageRow).where(MessageRow.id == second).values(body=bodies[first]))
    result = verify_site(site)
    assert sorted((v.table, v.row, v.tenant) for v in result.violations) == sorted(
        ("ws_messages", message, populated.eu_workspace) for message in populated.messages)
    assert all("column 'body' does not open" in v.problem for v in result.violations)


def blob_path(site: Site, populated: Populated) -> Path:
    root = site.settings.region("eu").blob_path
    assert root is not None
    return root / blob_key(populated.eu_workspace, FILE_BLOB_KIND, populated.file)


def test_a_corrupted_blob_file_is_named(site: Site, populated: Populated) -> None:
    path = blob_path(site, populated)
    data = bytearray(path.read_bytes())
    data[-20] ^= 1
    path.write_bytes(bytes(data))
    result = verify_site(site)
    assert [(v.table, v.row, v.tenant) for v in result.violations] == [
        ("blobs", populated.file, populated.eu_workspace)]
    assert "does not open completely" in result.violations[0].problem


def test_a_deleted_blob_file_and_a_file_without_row_are_named(site: Site,
                                                             populated: Populated) -> None:
    path = blob_path(site, populated)
    path.rename(path.with_name("stray"))
    result = verify_site(site)
    assert sorted((v.row, v.problem) for v in result.violations) == sorted([
        (blob_key(populated.eu_workspace, FILE_BLOB_KIND, "stray"), "blob file without a row"),
        (populated.file, "row without its blob file"),
    ])


def test_a_tampered_audit_entry_is_named(site: Site, populated: Populated) -> None:
    tamper(site.store("eu").engine,
           "UPDATE audit_log SET actor = 'mallory' WHERE chain = 'eu' AND seq = 2")
    result = verify_site(site)
    assert [(v.region, v.table, v.row) for v in result.violations] == [("eu", "audit_log", "2")]
    assert "altered" in result.violations[0].problem


def test_one_region_is_verified_alone(site: Site, populated: Populated) -> None:
    with site.store("eu").engine.begin() as conn:
        conn.execute(text("ALTER TABLE ws_messages ADD COLUMN note TEXT"))
    assert verify_site(site, ["us"]).ok
    assert not verify_site(site, ["eu"]).ok


def test_an_erased_tenant_leaves_nothing_and_a_leftover_is_a_violation(
        site: Site, populated: Populated) -> None:
    """After `erase` the store verifies clean; a row of an erased tenant that survived (its
    key shredded but the row left, say by a write already under way) is reported (G9)."""
    Erasure(site.directory, site.store, list(site.settings.regions),
            site.directory_engine).erase("workspace", populated.eu_workspace)
    assert verify_site(site).violations == []

    with site.store("eu").engine.begin() as conn:  # a straggler, sealed under a gone key
        conn.execute(insert(RecordRow).values(
            tenant_id=populated.eu_workspace, kind="response", record_id="resp_late",
            region="eu", created_at=datetime.now(UTC), updated_at=datetime.now(UTC),
            body=b"\x01\x00late"))
    (violation,) = verify_site(site).violations
    assert violation.row == "resp_late" and "survived its erasure" in violation.problem
