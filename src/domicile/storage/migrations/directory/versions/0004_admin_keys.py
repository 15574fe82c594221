"""Admin API keys (`da-…`): automation's credentials for `/admin/v1`, stored as HMACs only.

A key row is never deleted (its id names the actor of audit entries for as long as the chain
lives): a key is revoked, and the database refuses a DELETE.
"""

import sqlalchemy as sa
from alembic import op

from domicile.storage.migrations.audit_ddl import refuse_changes, refuse_truncate

revision = "0004_admin_keys"
down_revision = "0003_trust"


def upgrade() -> None:
    op.create_table(
        "admin_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("hint", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    refuse_changes("admin_keys", "DELETE", "admin keys are revoked, never deleted: their ids "
                   "name audit entries")
    refuse_truncate("admin_keys", "admin keys are revoked, never deleted: their ids name "
                    "audit entries")


def downgrade() -> None:
    raise NotImplementedError("the directory's schema has no downgrade")
