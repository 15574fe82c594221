"""The trust center's holes in a regional store closed (G1, G7).

- G1: a store's identity can be neither deleted (nor truncated) nor joined by a second row,
  and on SQLite a row cannot be moved to another region by an UPDATE (PostgreSQL's trigger
  already covers it). The audit log cannot be truncated either.
- G7: every content row keeps the org's training consent at the moment it was written
  (`training_consent`), so a training export takes only what was written while opted in.

Columns are only added, in place: a rebuilt table would lose its triggers.
"""

import sqlalchemy as sa
from alembic import op

from domicile.storage.migrations.audit_ddl import (
    refuse_changes,
    refuse_foreign_region_update,
    refuse_second_row,
    refuse_truncate,
)

revision = "0003_trust"
down_revision = "0002_workspace"

REGION_TABLES = ("records", "blobs", "usage", "ws_sessions", "ws_conversations", "ws_messages",
                 "ws_files", "ws_gpts")
CONTENT_TABLES = ("records", "blobs", "ws_conversations", "ws_messages", "ws_files", "ws_gpts")


def upgrade() -> None:
    refuse_changes("store_identity", "DELETE", "the region of a store is immutable (G1)")
    refuse_second_row("store_identity", "a store belongs to one region only (G1)")
    refuse_truncate("store_identity", "the region of a store is immutable (G1)")
    refuse_truncate("audit_log", "audit log entries are append-only")
    for table in REGION_TABLES:
        refuse_foreign_region_update(table)
    for table in CONTENT_TABLES:
        op.add_column(table, sa.Column("training_consent", sa.Boolean, nullable=False,
                                       server_default=sa.false()))


def downgrade() -> None:
    raise NotImplementedError("the regional store's schema has no downgrade")
