"""Tenants are never deleted, so their ids are never reused (G1).

A project, workspace or org could be deleted and inserted again under the same id with
another region. Now the database refuses to delete one; an erased tenant keeps its row,
marked `erased_at` (its content and keys are gone, see compliance.erasure), so its id and
region stay taken forever. Columns are only added, in place: a rebuilt table would lose its
triggers.
"""

import sqlalchemy as sa
from alembic import op

from domicile.storage.migrations.audit_ddl import refuse_changes, refuse_truncate

revision = "0003_trust"
down_revision = "0002_workspace_accounts"

TENANT_TABLES = ("orgs", "projects", "workspaces")


def upgrade() -> None:
    for table in TENANT_TABLES:
        op.add_column(table, sa.Column("erased_at", sa.DateTime(timezone=True)))
        refuse_changes(table, "DELETE", "tenants are never deleted: their ids are never "
                       "reused (G1)")
        refuse_truncate(table, "tenants are never deleted: their ids are never reused (G1)")
    refuse_truncate("audit_log", "audit log entries are append-only")


def downgrade() -> None:
    raise NotImplementedError("the directory's schema has no downgrade")
