"""Browser sessions of workspace members: server-side rows in the workspace's regional store.

The cookie holds a random secret (`<region>.<random>`); the store keeps only its keyed digest
(HMAC under the site secret, like tokens), so a copy of the database signs nobody in. Each
session has a CSRF token, kept as a digest too, that the page sends back on every unsafe
request. A session ends at its expiry, at logout, or when its member is removed.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, delete, update
from sqlalchemy.orm import Session

from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.secrets import CredentialHasher
from domicile.workspace.models import SessionRow

__all__ = ["LAST_SEEN_RESOLUTION", "NewSession", "SessionStore"]

# last_seen_at is written at most this often per session: a read should not be a write.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session just made: `secret` goes into the HttpOnly cookie and `csrf` into the one the
    page reads. Both are shown here once and never stored; neither is in the repr."""

    secret: str
    csrf: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"NewSession(secret=<hidden>, csrf=<hidden>, expires_at={self.expires_at!r})"


class SessionStore:
    """The sessions of one region's members, in that region's store."""

    def __init__(self, store: RegionalStore, hasher: CredentialHasher, ttl: timedelta) -> None:
        self._store = store
        self._hasher = hasher
        self._ttl = ttl

    def __repr__(self) -> str:
        return f"SessionStore(region={self._store.region!r})"

    @property
    def region(self) -> str:
        return self._store.region

    def digest(self, secret: str) -> str:
        """The form in which a session's secret is stored (`MemberGrant.session`)."""
        return self._hasher.digest(secret)

    def create(self, member: MemberGrant) -> NewSession:
        """A new session for `member` (whose workspace must live in this region)."""
        if member.region != self._store.region:
            raise ValueError(f"a member of region {member.region} cannot have a session in "
                             f"region {self._store.region}")
        secret = f"{self._store.region}.{secrets.token_urlsafe(32)}"
        csrf = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires_at = now + self._ttl
        row = SessionRow(digest=self._hasher.digest(secret), workspace_id=member.workspace_id,
                         user_id=member.user_id, region=member.region,
                         csrf_digest=self._hasher.digest(csrf), created_at=now,
                         expires_at=expires_at, last_seen_at=now)
        with Session(self._store.engine) as session, session.begin():
            session.add(row)
        return NewSession(secret, csrf, expires_at)

    def lookup(self, secret: str) -> SessionRow | None:
        """The live session of this secret, else None (unknown, expired, another region's)."""
        if not secret.startswith(f"{self._store.region}."):
            return None
        digest = self._hasher.digest(secret)
        now = datetime.now(UTC)
        with Session(self._store.engine, expire_on_commit=False) as session:
            row = session.get(SessionRow, digest)
            if row is None or _utc(row.expires_at) <= now:
                return None
            if not CredentialHasher.matches(row.digest, digest):
                return None
            if now - _utc(row.last_seen_at) >= LAST_SEEN_RESOLUTION:
                session.execute(update(SessionRow).where(SessionRow.digest == digest)
                                .values(last_seen_at=now))
                session.commit()
                row.last_seen_at = now
            session.expunge(row)
            return row

    def check_csrf(self, row: SessionRow, token: str | None) -> bool:
        """Whether `token` is this session's CSRF token (compared as digests, constant time)."""
        if not token:
            return False
        return hmac.compare_digest(row.csrf_digest.encode("ascii"),
                                   self._hasher.digest(token).encode("ascii"))

    def delete(self, secret: str) -> bool:
        """End the session of this secret; False when there was none."""
        return self._delete(SessionRow.digest == self._hasher.digest(secret)) > 0

    def delete_others(self, member: MemberGrant, keep_digest: str) -> int:
        """End every other session of `member` ("sign out everywhere else")."""
        return self._delete(SessionRow.workspace_id == member.workspace_id,
                            SessionRow.user_id == member.user_id,
                            SessionRow.digest != keep_digest)

    def delete_for_user(self, workspace_id: str, user_id: str) -> int:
        """End every session of a member (removed, or signed out everywhere)."""
        return self._delete(SessionRow.workspace_id == workspace_id,
                            SessionRow.user_id == user_id)

    def delete_expired(self) -> int:
        return self._delete(SessionRow.expires_at <= datetime.now(UTC))

    def _delete(self, *conditions: ColumnElement[bool]) -> int:
        with self._store.engine.begin() as conn:
            result = conn.execute(delete(SessionRow).where(*conditions))
            return int(result.rowcount)


def _utc(at: datetime) -> datetime:
    # SQLite hands datetimes back naive; they were written in UTC.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
