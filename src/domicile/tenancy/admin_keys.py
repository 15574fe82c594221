"""Admin keys (`da-…`): the credentials of the admin API (`/admin/v1`), for automation.

An admin key may do anything the `domicile` command does to the directory, so it is made only
by the command line (`domicile admin-key create`), on the machine that holds the site's
config: the admin API cannot make one. As an API key, it is shown once and kept only as
HMAC-SHA256 under the site's secret (a copy of the directory authenticates nothing), looked up
by that digest and compared in constant time. It is global, as the directory is: any
region's address takes it. Creating and revoking one is written to the directory's audit
chain in the same transaction; every action taken with one names its id as the actor.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from domicile.compliance.audit import AuditLog
from domicile.errors import InvalidInput, NotFound
from domicile.tenancy.models import AdminKey
from domicile.tenancy.secrets import CredentialHasher, new_id

__all__ = ["ADMIN_KEY_PREFIX", "AdminGrant", "AdminKeys", "CreatedAdminKey"]

ADMIN_KEY_PREFIX = "da-"
_HINT_LENGTH = 8


@dataclass(frozen=True, slots=True)
class CreatedAdminKey:
    """A new admin key: `secret` is shown once and never stored."""

    id: str
    name: str
    secret: str

    def __repr__(self) -> str:
        return f"CreatedAdminKey(id={self.id!r}, name={self.name!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class AdminGrant:
    """Who is calling the admin API: the key's id is the actor of what it does."""

    key_id: str
    name: str


class AdminKeys:
    """Create, list, revoke and authenticate admin keys. `audit` is the directory's chain."""

    def __init__(self, engine: Engine, hasher: CredentialHasher, audit: AuditLog) -> None:
        self._engine = engine
        self._hasher = hasher
        self._audit = audit

    def create(self, name: str, *, actor: str = "cli") -> CreatedAdminKey:
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidInput("name must be 1 to 200 characters", param="name")
        secret = ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)
        key = AdminKey(id=new_id("adk"), name=name, hint=secret[:_HINT_LENGTH],
                       digest=self._hasher.digest(secret), created_at=datetime.now(UTC))
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            session.add(key)
            session.flush()
            self._audit.append(actor, "admin_key.create", key.id, {"name": name},
                               connection=session.connection())
        return CreatedAdminKey(key.id, name, secret)

    def revoke(self, key_id: str, *, actor: str = "cli") -> AdminKey:
        """Revoke a key (idempotent: a revoked key is audited once). Effective at the next
        request, at every server: keys are not cached."""
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            key = session.get(AdminKey, key_id)
            if key is None:
                raise NotFound(f"no admin key {key_id}", param="key")
            if key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)
                session.flush()
                self._audit.append(actor, "admin_key.revoke", key.id, {},
                                   connection=session.connection())
        return key

    def list(self) -> list[AdminKey]:
        """Every admin key, revoked ones included, oldest first (never their secrets)."""
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.scalars(select(AdminKey).order_by(AdminKey.created_at,
                                                                  AdminKey.id)))

    def authenticate(self, secret: str) -> AdminGrant | None:
        """The grant of a live admin key, else None (unknown, revoked, not a `da-` key)."""
        if not secret.startswith(ADMIN_KEY_PREFIX):
            return None
        digest = self._hasher.digest(secret)
        with Session(self._engine) as session:
            key = session.scalar(select(AdminKey).where(AdminKey.digest == digest))
            if (key is None or key.revoked_at is not None
                    or not CredentialHasher.matches(key.digest, digest)):
                return None
            return AdminGrant(key.id, key.name)
