"""Workspace accounts: token expiry, members removed from a workspace, and each workspace's
retention policy. (A member without a password, for single sign-on, has an empty
`password_hash`: no password matches it.) Columns are only added, in place: a rebuilt table
would lose its G1 triggers."""

import sqlalchemy as sa
from alembic import op

revision = "0002_workspace_accounts"
down_revision = "0001_directory"


def upgrade() -> None:
    op.add_column("workspace_tokens", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.add_column("users", sa.Column("removed_at", sa.DateTime(timezone=True)))
    # None: keep forever; N: conversations and files older than N days are deleted.
    op.add_column("workspaces", sa.Column("retention_days", sa.Integer))


def downgrade() -> None:
    raise NotImplementedError("the directory's schema has no downgrade")
