"""Single sign-on per workspace (OIDC): issuer, client, allowed email domains.

The client secret is kept sealed (AES-256-GCM under the workspace's data key, in its region's
key provider), never in plain: see domicile.tenancy.sso.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_workspace_sso"
down_revision = "0004_admin_keys"


def upgrade() -> None:
    op.create_table(
        "workspace_sso",
        sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id"),
                  primary_key=True),
        sa.Column("issuer", sa.String(500), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("client_secret_sealed", sa.LargeBinary, nullable=True),
        sa.Column("allowed_domains", sa.String(2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the directory's schema has no downgrade")
