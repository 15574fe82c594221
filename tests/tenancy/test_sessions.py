"""Browser sessions: server-side rows holding only digests, expiry, CSRF tokens, sign-outs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text, update

from domicile.site import Site
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.sessions import SessionStore
from domicile.workspace.models import SessionRow
from tests.tenancy.conftest import SESSION_TTL, SessionsFor, Tenants


@pytest.fixture
def eu_sessions(sessions_for: SessionsFor) -> SessionStore:
    return sessions_for("eu")


@pytest.fixture
def member(tenants: Tenants) -> MemberGrant:
    return tenants.grant(tenants.user())


def set_times(site: Site, digest: str, **values: datetime) -> None:
    with site.store("eu").engine.begin() as conn:
        conn.execute(update(SessionRow).where(SessionRow.digest == digest).values(**values))


def utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def test_a_session_is_stored_only_as_digests(site: Site, eu_sessions: SessionStore,
                                             member: MemberGrant) -> None:
    new = eu_sessions.create(member)
    assert new.secret.startswith("eu.") and len(new.secret) > 40
    assert new.secret not in repr(new) and new.csrf not in repr(new)
    assert abs(new.expires_at - (datetime.now(UTC) + SESSION_TTL)) < timedelta(minutes=1)
    with site.store("eu").engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM ws_sessions")).fetchall()
    stored = " ".join(str(value) for row in rows for value in row)
    assert len(rows) == 1
    for secret in (new.secret, new.secret[3:], new.csrf):
        assert secret not in stored
    row = eu_sessions.lookup(new.secret)
    assert row is not None
    assert (row.workspace_id, row.user_id, row.region) == (member.workspace_id,
                                                           member.user_id, "eu")


def test_unknown_expired_or_foreign_secrets_find_nothing(site: Site, eu_sessions: SessionStore,
                                                         member: MemberGrant) -> None:
    new = eu_sessions.create(member)
    assert eu_sessions.lookup("eu.not-a-session") is None
    assert eu_sessions.lookup("us" + new.secret[2:]) is None
    ended = datetime.now(UTC) - timedelta(seconds=1)
    set_times(site, eu_sessions.digest(new.secret), expires_at=ended)
    assert eu_sessions.lookup(new.secret) is None


def test_a_session_is_only_made_in_its_members_region(sessions_for: SessionsFor,
                                                      member: MemberGrant) -> None:
    with pytest.raises(ValueError, match="region eu"):
        sessions_for("us").create(member)


def test_last_seen_is_written_at_most_once_a_minute(site: Site, eu_sessions: SessionStore,
                                                    member: MemberGrant) -> None:
    new = eu_sessions.create(member)
    recent = datetime.now(UTC) - timedelta(seconds=30)
    set_times(site, eu_sessions.digest(new.secret), last_seen_at=recent)
    row = eu_sessions.lookup(new.secret)
    assert row is not None and utc(row.last_seen_at) == recent
    stale = datetime.now(UTC) - timedelta(minutes=5)
    set_times(site, eu_sessions.digest(new.secret), last_seen_at=stale)
    eu_sessions.lookup(new.secret)
    row = eu_sessions.lookup(new.secret)
    assert row is not None
    assert utc(row.last_seen_at) > datetime.now(UTC) - timedelta(minutes=1)


def test_csrf_token_is_checked_against_its_own_session(eu_sessions: SessionStore,
                                                       member: MemberGrant) -> None:
    first, second = eu_sessions.create(member), eu_sessions.create(member)
    row = eu_sessions.lookup(first.secret)
    assert row is not None
    assert eu_sessions.check_csrf(row, first.csrf)
    assert not eu_sessions.check_csrf(row, second.csrf)
    assert not eu_sessions.check_csrf(row, first.secret)
    assert not eu_sessions.check_csrf(row, "")
    assert not eu_sessions.check_csrf(row, None)


def test_sign_outs(eu_sessions: SessionStore, tenants: Tenants) -> None:
    alice_user = tenants.user()
    alice = tenants.grant(alice_user)
    bob = tenants.grant(tenants.user(alice.workspace_id))
    kept, other, third = (eu_sessions.create(alice) for _ in range(3))
    bobs = eu_sessions.create(bob)

    assert eu_sessions.delete(third.secret) is True
    assert eu_sessions.delete(third.secret) is False
    assert eu_sessions.delete_others(alice, eu_sessions.digest(kept.secret)) == 1
    assert eu_sessions.lookup(other.secret) is None
    assert eu_sessions.lookup(kept.secret) is not None
    assert eu_sessions.lookup(bobs.secret) is not None

    assert eu_sessions.delete_for_user(alice.workspace_id, alice.user_id) == 1
    assert eu_sessions.lookup(kept.secret) is None
    assert eu_sessions.lookup(bobs.secret) is not None


def test_delete_expired_removes_only_ended_sessions(site: Site, eu_sessions: SessionStore,
                                                    member: MemberGrant) -> None:
    ended, live = eu_sessions.create(member), eu_sessions.create(member)
    past = datetime.now(UTC) - timedelta(minutes=1)
    set_times(site, eu_sessions.digest(ended.secret), expires_at=past)
    assert eu_sessions.delete_expired() == 1
    assert eu_sessions.delete_expired() == 0
    assert eu_sessions.lookup(live.secret) is not None
