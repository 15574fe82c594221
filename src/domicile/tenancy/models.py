"""The directory's tables: who exists and where they live. No content, ever."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from domicile.storage.schema import audit_tables

__all__ = ["ApiKey", "DirectoryBase", "Org", "Project", "User", "Workspace", "WorkspaceSso",
           "WorkspaceToken"]


class DirectoryBase(DeclarativeBase):
    metadata = MetaData()


AUDIT_LOG, AUDIT_HEAD = audit_tables(DirectoryBase.metadata)


class Org(DirectoryBase):
    __tablename__ = "orgs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    training_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    training_opt_in_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set by an erasure: the row stays, so the id and region are never reused (G1).
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Project(DirectoryBase):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # G1: set at creation; the service has no operation to change it and a trigger refuses.
    region: Mapped[str] = mapped_column(String(16))
    retention: Mapped[str] = mapped_column(String(16))
    per_request_residency: Mapped[bool] = mapped_column(Boolean, default=False)
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set by an erasure: the row stays, so the id and region are never reused (G1).
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(DirectoryBase):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # The first characters, shown in listings so a human can tell keys apart. Not a secret.
    hint: Mapped[str] = mapped_column(String(32))
    # HMAC-SHA256(site secret, key): the only form in which a key is kept.
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Workspace(DirectoryBase):
    __tablename__ = "workspaces"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(16))  # G1, as Project.region
    # None: content is kept until deleted; N: conversations and files older than N days go.
    retention_days: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set by an erasure: the row stays, so the id and region are never reused (G1).
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class User(DirectoryBase):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("workspace_id", "email"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    # argon2id; empty for a member who signs in only through single sign-on.
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkspaceToken(DirectoryBase):
    __tablename__ = "workspace_tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AdminKey(DirectoryBase):
    """A credential of the admin API (`da-…`, tenancy.admin_keys). Revoked, never deleted:
    its id is the actor of the audit entries it made."""

    __tablename__ = "admin_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    hint: Mapped[str] = mapped_column(String(32))  # "da-" and a few characters; not a secret
    # HMAC-SHA256(site secret, key): the only form in which a key is kept.
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkspaceSso(DirectoryBase):
    """A workspace's single sign-on (OIDC): at most one identity provider per workspace."""

    __tablename__ = "workspace_sso"
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(500))
    client_id: Mapped[str] = mapped_column(String(255))
    # Sealed under the workspace's data key in its region's key provider (G5: bound to region,
    # workspace and this row; shredded with the workspace, G9). None: a public client (PKCE).
    client_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Lowercase domains, comma-separated: the email domains that may sign in.
    allowed_domains: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
