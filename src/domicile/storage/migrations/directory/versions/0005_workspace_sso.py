"""Single sign-on per workspace (OIDC): issuer, client, allowed email domains."""

revision = "0005_workspace_sso"
down_revision = "0004_admin_keys"


def upgrade() -> None:
    pass  # filled in by the SSO change


def downgrade() -> None:
    pass
