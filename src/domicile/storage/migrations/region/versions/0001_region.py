"""A regional store: its identity, encrypted records and blobs, usage metadata, audit chain."""

import sqlalchemy as sa
from alembic import op

from domicile.storage.migrations.audit_ddl import (
    create_audit_tables,
    refuse_changes,
    refuse_foreign_region,
)

revision = "0001_region"
down_revision = None

REGION_TABLES = ("records", "blobs", "usage")


def _ts(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "store_identity",
        sa.Column("region", sa.String(16), primary_key=True),
        _ts("created_at"),
    )
    op.create_table(
        "records",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(40), primary_key=True),
        sa.Column("record_id", sa.String(80), primary_key=True),
        sa.Column("region", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "blobs",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(40), primary_key=True),
        sa.Column("blob_id", sa.String(80), primary_key=True),
        sa.Column("region", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        _ts("created_at"),
        sa.Column("meta", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _ts("at"),
        sa.Column("region", sa.String(16), nullable=False),
        sa.Column("project_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("endpoint", sa.String(80), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(64)),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
    )
    op.create_index("ix_usage_project_at", "usage", ["project_id", "at"])
    create_audit_tables()
    refuse_changes("store_identity", "UPDATE", "the region of a store is immutable (G1)")
    for table in REGION_TABLES:
        refuse_foreign_region(table)


def downgrade() -> None:
    raise NotImplementedError("the regional store's first schema has no downgrade")
