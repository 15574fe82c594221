"""The directory: orgs, projects, keys, workspaces, users, tokens, and its audit chain."""

import sqlalchemy as sa
from alembic import op

from domicile.storage.migrations.audit_ddl import create_audit_tables, refuse_changes

revision = "0001_directory"
down_revision = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("training_opt_in", sa.Boolean, nullable=False),
        _ts("training_opt_in_since", nullable=True),
        _ts("created_at"),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("region", sa.String(16), nullable=False),
        sa.Column("retention", sa.String(16), nullable=False),
        sa.Column("per_request_residency", sa.Boolean, nullable=False),
        sa.Column("rpm_limit", sa.Integer),
        sa.Column("tpm_limit", sa.Integer),
        _ts("created_at"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("project_id", sa.String(40), sa.ForeignKey("projects.id"), nullable=False,
                  index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("hint", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
    )
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("region", sa.String(16), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id"), nullable=False,
                  index=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        _ts("created_at"),
        sa.UniqueConstraint("workspace_id", "email"),
    )
    op.create_table(
        "workspace_tokens",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id"), nullable=False,
                  index=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False,
                  index=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
    )
    create_audit_tables()
    # G1: a tenant's region (and a project's residency mode) never changes, whoever asks.
    refuse_changes("projects", "UPDATE", "region is immutable (G1)",
                   columns=("region", "per_request_residency"))
    refuse_changes("workspaces", "UPDATE", "region is immutable (G1)", columns=("region",))


def downgrade() -> None:
    raise NotImplementedError("the directory's first schema has no downgrade")
