"""Admin API keys (`da-…`): automation's credentials for `/admin/v1`, stored as HMACs only."""

revision = "0004_admin_keys"
down_revision = "0003_trust"


def upgrade() -> None:
    pass  # filled in by the admin API change


def downgrade() -> None:
    pass
