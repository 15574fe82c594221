"""The catalog of a regional store is complete: every table and every kind the services write
is described, so verification, export and erasure miss nothing."""

from __future__ import annotations

from sqlalchemy import inspect

from domicile.gateway import batch_jobs
from domicile.gateway import files as gateway_files
from domicile.gateway import responses as gateway_responses
from domicile.gateway import uploads as gateway_uploads
from domicile.site import Site
from domicile.storage import catalog
from domicile.workspace import conversations, files, gpts, knowledge


def test_every_table_of_a_migrated_store_is_described(site: Site) -> None:
    tables = set(inspect(site.store("eu").engine).get_table_names())
    described = {t.name for t in catalog.CONTENT_TABLES} | set(catalog.METADATA_TABLES)
    assert tables == described


def test_the_schema_a_migration_makes_is_the_schema_the_catalog_expects(site: Site) -> None:
    inspector = inspect(site.store("eu").engine)
    for table in inspector.get_table_names():
        columns = {column["name"] for column in inspector.get_columns(table)}
        assert columns == catalog.expected_columns(table), table


def test_the_services_kinds_are_the_catalogs() -> None:
    kinds = {(t.name, c.name): c.kind for t in catalog.CONTENT_TABLES for c in t.sealed}
    assert kinds[("ws_conversations", "title")] == conversations.TITLE_KIND
    assert kinds[("ws_messages", "body")] == conversations.MESSAGE_KIND
    assert kinds[("ws_files", "meta")] == files.FILE_META_KIND
    assert kinds[("ws_gpts", "body")] == gpts.GPT_KIND
    assert set(catalog.RECORD_KINDS) == {gateway_responses.KIND, *batch_jobs.KINDS,
                                         gateway_uploads.UPLOAD_KIND}
    assert set(catalog.BLOB_KINDS) == {gateway_files.KIND, gateway_uploads.PART_KIND,
                                       files.FILE_BLOB_KIND,
                                       files.FILE_TEXT_BLOB_KIND, knowledge.INDEX_BLOB_KIND}
    records = catalog.content_table("blobs")
    assert records.context_kind(records.sealed[0], "ws-file") == "ws-file" + (
        catalog.BLOB_META_SUFFIX)
