"""Workspace accounts: the directory's member and token rules, and signing in and out."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update

from domicile.config import WorkspaceSettings
from domicile.errors import Forbidden, InvalidCredentials, InvalidInput, LoginThrottled, NotFound
from domicile.site import Site
from domicile.tenancy.accounts import Accounts
from domicile.tenancy.grants import Role
from domicile.tenancy.models import User, WorkspaceToken
from domicile.tenancy.throttle import LoginThrottle
from tests.tenancy.conftest import PASSWORD, FakeClock, SessionsFor, Tenants, audit_entries


def expire_token(site: Site, token_id: str) -> None:
    with site.directory_engine.begin() as conn:
        conn.execute(update(WorkspaceToken).where(WorkspaceToken.id == token_id)
                     .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))


def audit_text(site: Site, region: str) -> str:
    return json.dumps([[e.actor, e.action, e.target, dict(e.details)]
                       for e in site.audit_log(region).entries()])


# -- the directory: tokens ------------------------------------------------------------------


def test_a_token_stops_at_its_expiry(site: Site, tenants: Tenants) -> None:
    user = tenants.user()
    later = datetime.now(UTC) + timedelta(days=7)
    created = site.directory.create_token(user.workspace_id, user.id, expires_at=later)
    grant = site.directory.authenticate_token(created.secret)
    assert grant is not None and grant.user_id == user.id and grant.token_id == created.id
    expire_token(site, created.id)
    assert site.directory.authenticate_token(created.secret) is None
    [entry] = audit_entries(site, "eu", "token.create")
    assert entry.target == created.id and entry.details["expires_at"] == later.isoformat()


def test_a_token_cannot_be_made_already_expired(site: Site, tenants: Tenants) -> None:
    user = tenants.user()
    with pytest.raises(InvalidInput) as refused:
        site.directory.create_token(user.workspace_id, user.id,
                                    expires_at=datetime.now(UTC) - timedelta(minutes=1))
    assert refused.value.param == "expires_at"
    assert site.directory.list_tokens(user.workspace_id, user.id) == []


def test_revoking_a_token_is_audited_once(site: Site, tenants: Tenants) -> None:
    user = tenants.user()
    kept = site.directory.create_token(user.workspace_id, user.id)
    revoked = site.directory.create_token(user.workspace_id, user.id)
    site.directory.revoke_token(revoked.id, actor=user.id)
    site.directory.revoke_token(revoked.id, actor=user.id)
    assert site.directory.authenticate_token(revoked.secret) is None
    assert site.directory.authenticate_token(kept.secret) is not None
    [entry] = audit_entries(site, "eu", "token.revoke")
    assert (entry.actor, entry.target) == (user.id, revoked.id)
    listed = site.directory.list_tokens(user.workspace_id, user.id)
    assert [(t.id, t.revoked_at is None) for t in listed] == [(kept.id, True), (revoked.id, False)]
    with pytest.raises(NotFound):
        site.directory.revoke_token("tok_missing")


# -- the directory: members -----------------------------------------------------------------


def test_removing_a_member_revokes_their_tokens_and_hides_them(site: Site,
                                                               tenants: Tenants) -> None:
    owner = tenants.user(role="owner")
    leaver = tenants.user(owner.workspace_id)
    token = site.directory.create_token(leaver.workspace_id, leaver.id)
    site.directory.remove_member(leaver.workspace_id, leaver.id, actor=owner.id)

    assert site.directory.authenticate_token(token.secret) is None
    assert [t.revoked_at is not None for t in
            site.directory.list_tokens(leaver.workspace_id, leaver.id)] == [True]
    assert [u.id for u in site.directory.list_members(owner.workspace_id)] == [owner.id]
    assert site.directory.member_grant(leaver.id) is None
    assert site.directory.find_members("eu", leaver.email) == []
    with pytest.raises(NotFound):
        site.directory.create_token(leaver.workspace_id, leaver.id)
    [entry] = audit_entries(site, "eu", "member.remove")
    assert (entry.actor, entry.target, entry.details["tokens_revoked"]) == (owner.id, leaver.id, 1)


def test_the_last_owner_can_be_neither_demoted_nor_removed(site: Site,
                                                           tenants: Tenants) -> None:
    owner = tenants.user(role="owner")
    with pytest.raises(InvalidInput, match="last owner") as demoted:
        site.directory.set_role(owner.workspace_id, owner.id, "admin")
    assert (demoted.value.status, demoted.value.param) == (400, "role")
    with pytest.raises(InvalidInput, match="last owner"):
        site.directory.remove_member(owner.workspace_id, owner.id)

    second = tenants.user(owner.workspace_id)
    changed = site.directory.set_role(owner.workspace_id, second.id, "owner", actor=owner.id)
    assert changed.role == "owner"
    site.directory.set_role(owner.workspace_id, owner.id, "member", actor=second.id)
    grant = site.directory.member_grant(owner.id)
    assert grant is not None and grant.role == "member"
    assert [(e.target, e.details["role"]) for e in audit_entries(site, "eu", "member.role")] == [
        (second.id, "owner"), (owner.id, "member")]
    with pytest.raises(InvalidInput):
        site.directory.set_role(owner.workspace_id, second.id, "superuser")


def test_a_member_is_managed_only_within_their_workspace(site: Site, tenants: Tenants) -> None:
    user = tenants.user()
    elsewhere = tenants.workspace()
    with pytest.raises(NotFound):
        site.directory.set_role(elsewhere, user.id, "admin")
    with pytest.raises(NotFound):
        site.directory.remove_member(elsewhere, user.id)
    with pytest.raises(NotFound):
        site.directory.create_token(elsewhere, user.id)


# -- managing members: who may change whom (Accounts) ---------------------------------------


def staff(tenants: Tenants, actor_role: Role, target_role: Role) -> tuple[User, User]:
    """An acting member and a target member of one workspace that also has an owner."""
    owner = tenants.user(role="owner")
    actor = owner if actor_role == "owner" else tenants.user(owner.workspace_id, role=actor_role)
    return actor, tenants.user(owner.workspace_id, role=target_role)


def role_of(site: Site, user: User) -> str | None:
    grant = site.directory.member_grant(user.id)
    return None if grant is None else grant.role


@pytest.mark.parametrize(("actor_role", "target_role", "new_role"), [
    ("admin", "owner", "admin"),    # an admin demoting an owner
    ("admin", "owner", "member"),
    ("admin", "member", "owner"),   # an admin making an owner
    ("admin", "admin", "owner"),
    ("member", "member", "admin"),  # a member managing anyone
    ("member", "admin", "member"),
])
def test_a_role_change_beyond_the_actors_rights_is_forbidden(
        site: Site, tenants: Tenants, accounts: Accounts, actor_role: Role, target_role: Role,
        new_role: str) -> None:
    actor, target = staff(tenants, actor_role, target_role)
    with pytest.raises(Forbidden) as refused:
        accounts.change_role(tenants.grant(actor), target.id, new_role)
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    assert role_of(site, target) == target_role
    assert audit_entries(site, "eu", "member.role") == []


@pytest.mark.parametrize(("actor_role", "target_role"), [
    ("admin", "owner"), ("member", "member"), ("member", "admin")])
def test_a_removal_beyond_the_actors_rights_is_forbidden(
        site: Site, tenants: Tenants, accounts: Accounts, sessions_for: SessionsFor,
        actor_role: Role, target_role: Role) -> None:
    actor, target = staff(tenants, actor_role, target_role)
    token = site.directory.create_token(target.workspace_id, target.id)
    _, session = accounts.login("eu", target.email, PASSWORD, address="10.0.0.1")
    with pytest.raises(Forbidden) as refused:
        accounts.remove_member(tenants.grant(actor), target.id)
    assert refused.value.status == 403
    assert role_of(site, target) == target_role
    assert site.directory.authenticate_token(token.secret) is not None
    assert accounts.session_member("eu", session.secret) is not None
    assert audit_entries(site, "eu", "member.remove") == []


@pytest.mark.parametrize(("actor_role", "target_role", "new_role"), [
    ("owner", "owner", "admin"),   # an owner demoting another owner
    ("owner", "admin", "owner"),   # an owner making an owner
    ("admin", "member", "admin"),
    ("admin", "admin", "member"),
])
def test_owners_and_admins_change_roles_within_their_rights(
        site: Site, tenants: Tenants, accounts: Accounts, actor_role: Role, target_role: Role,
        new_role: str) -> None:
    actor, target = staff(tenants, actor_role, target_role)
    assert accounts.change_role(tenants.grant(actor), target.id, new_role).role == new_role
    assert role_of(site, target) == new_role
    [entry] = audit_entries(site, "eu", "member.role")
    assert (entry.actor, entry.target, entry.details["role"]) == (actor.id, target.id, new_role)


@pytest.mark.parametrize(("actor_role", "target_role"), [
    ("owner", "owner"), ("admin", "admin"), ("admin", "member")])
def test_owners_and_admins_remove_members_within_their_rights(
        site: Site, tenants: Tenants, accounts: Accounts, actor_role: Role,
        target_role: Role) -> None:
    actor, target = staff(tenants, actor_role, target_role)
    _, session = accounts.login("eu", target.email, PASSWORD, address="10.0.0.1")
    accounts.remove_member(tenants.grant(actor), target.id)
    assert role_of(site, target) is None
    assert accounts.session_member("eu", session.secret) is None
    [entry] = audit_entries(site, "eu", "member.remove")
    assert (entry.actor, entry.target) == (actor.id, target.id)


@pytest.mark.parametrize("target_role", ["owner", "member"])
def test_a_member_of_another_workspace_is_not_found(
        site: Site, tenants: Tenants, accounts: Accounts, target_role: Role) -> None:
    admin = tenants.grant(tenants.user(role="admin"))
    stranger = tenants.user(role=target_role)  # a workspace of their own
    with pytest.raises(NotFound) as changing:
        accounts.change_role(admin, stranger.id, "member")
    with pytest.raises(NotFound) as removing:
        accounts.remove_member(admin, stranger.id)
    assert changing.value.status == removing.value.status == 404
    assert role_of(site, stranger) == target_role


def test_the_last_owner_stays_whoever_asks(site: Site, tenants: Tenants,
                                           accounts: Accounts) -> None:
    owner = tenants.user(role="owner")
    with pytest.raises(InvalidInput, match="last owner"):
        accounts.change_role(tenants.grant(owner), owner.id, "admin")
    with pytest.raises(InvalidInput, match="last owner"):
        accounts.remove_member(tenants.grant(owner), owner.id)
    assert role_of(site, owner) == "owner"


def test_retention_days_are_set_and_audited(site: Site, tenants: Tenants) -> None:
    workspace_id = tenants.workspace()
    assert site.directory.set_retention(workspace_id, 30).retention_days == 30
    assert site.directory.get_workspace(workspace_id).retention_days == 30
    assert site.directory.set_retention(workspace_id, None).retention_days is None
    for days in (0, -1):
        with pytest.raises(InvalidInput) as refused:
            site.directory.set_retention(workspace_id, days)
        assert refused.value.param == "days"
    assert [e.details["days"] for e in audit_entries(site, "eu", "workspace.retention")] == [
        30, None]


def test_find_members_looks_in_one_region_only(site: Site, tenants: Tenants) -> None:
    eu = tenants.user(email="Same@Example.com")
    tenants.user(email="same@example.com", region="us")
    assert [u.id for u in site.directory.find_members("eu", " SAME@example.com ")] == [eu.id]


def test_passwords_are_verified_and_old_hashes_upgraded(site: Site, tenants: Tenants) -> None:
    user = tenants.user()
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    with site.directory_engine.begin() as conn:
        conn.execute(update(User).where(User.id == user.id).values(password_hash=weak))
    [user] = site.directory.find_members("eu", user.email)

    assert not site.directory.verify_password(user, "wrong password")
    assert site.directory.verify_password(user, PASSWORD)
    with site.directory_engine.connect() as conn:
        stored = conn.scalar(select(User.password_hash).where(User.id == user.id))
    assert stored is not None and stored != weak and stored.startswith("$argon2id$")
    assert not PasswordHasher().check_needs_rehash(stored)
    [user] = site.directory.find_members("eu", user.email)
    assert site.directory.verify_password(user, PASSWORD)


def test_a_member_without_a_password_never_matches(site: Site, tenants: Tenants) -> None:
    user = tenants.user()
    with site.directory_engine.begin() as conn:
        conn.execute(update(User).where(User.id == user.id).values(password_hash=""))
    [user] = site.directory.find_members("eu", user.email)
    assert not site.directory.verify_password(user, "")
    assert not site.directory.verify_password(user, PASSWORD)


# -- signing in -----------------------------------------------------------------------------


def test_login_makes_a_session_for_the_member(site: Site, tenants: Tenants,
                                              accounts: Accounts) -> None:
    user = tenants.user(role="admin")
    grant, session = accounts.login("eu", user.email.upper(), PASSWORD, address="10.0.0.1")
    assert (grant.user_id, grant.workspace_id, grant.role) == (user.id, user.workspace_id,
                                                               "admin")
    assert grant.session is not None and grant.token_id is None
    found = accounts.session_member("eu", session.secret)
    assert found is not None and found[0] == grant
    [entry] = audit_entries(site, "eu", "login")
    assert (entry.actor, entry.target) == (user.id, user.id)
    text = audit_text(site, "eu")
    for secret in (user.email, PASSWORD, session.secret, session.csrf):
        assert secret not in text


def test_wrong_email_and_wrong_password_answer_alike(site: Site, tenants: Tenants,
                                                     accounts: Accounts) -> None:
    user = tenants.user()
    with pytest.raises(InvalidCredentials) as wrong_password:
        accounts.login("eu", user.email, "not the password", address="10.0.0.1")
    with pytest.raises(InvalidCredentials) as wrong_email:
        accounts.login("eu", "nobody@example.com", PASSWORD, address="10.0.0.1")
    assert wrong_password.value.to_openai() == wrong_email.value.to_openai()
    assert (wrong_email.value.status, wrong_email.value.code) == (401, "invalid_credentials")
    failed = audit_entries(site, "eu", "login.failed")
    assert [(e.actor, e.target) for e in failed] == [("anonymous", user.id),
                                                     ("anonymous", "unknown")]
    text = audit_text(site, "eu")
    for secret in (user.email, "nobody@example.com", "not the password", PASSWORD):
        assert secret not in text


def test_a_member_of_another_region_cannot_sign_in_here(tenants: Tenants,
                                                        accounts: Accounts) -> None:
    user = tenants.user(region="us")
    with pytest.raises(InvalidCredentials):
        accounts.login("eu", user.email, PASSWORD, address="10.0.0.1")
    grant, _ = accounts.login("us", user.email, PASSWORD, address="10.0.0.1")
    assert grant.region == "us"


def test_several_workspaces_ask_which_only_after_the_password(tenants: Tenants,
                                                              accounts: Accounts) -> None:
    first = tenants.user(email="twin@example.com")
    second = tenants.user(email="twin@example.com")
    with pytest.raises(InvalidCredentials):
        accounts.login("eu", "twin@example.com", "wrong password", address="10.0.0.1")
    with pytest.raises(InvalidInput) as ask:
        accounts.login("eu", "twin@example.com", PASSWORD, address="10.0.0.1")
    assert (ask.value.status, ask.value.param) == (400, "workspace_id")
    assert first.workspace_id in ask.value.message and second.workspace_id in ask.value.message
    grant, _ = accounts.login("eu", "twin@example.com", PASSWORD,
                              workspace_id=second.workspace_id, address="10.0.0.1")
    assert grant.user_id == second.id


def test_the_one_workspace_the_password_matches_needs_no_choice(tenants: Tenants,
                                                                accounts: Accounts) -> None:
    tenants.user(email="twin@example.com", password="another long password")
    mine = tenants.user(email="twin@example.com")
    grant, _ = accounts.login("eu", "twin@example.com", PASSWORD, address="10.0.0.1")
    assert grant.user_id == mine.id


def test_login_is_throttled_before_the_password_is_checked(
        site: Site, tenants: Tenants, accounts: Accounts, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    user = tenants.user()
    for _ in range(3):  # the account's limit in the conftest's settings
        with pytest.raises(InvalidCredentials):
            accounts.login("eu", user.email, "wrong password", address="10.0.0.1")
    with monkeypatch.context() as patch:
        def no_password_check(*_args: object) -> bool:
            raise AssertionError("a throttled sign-in must not check the password")

        patch.setattr(site.directory, "verify_password", no_password_check)
        with pytest.raises(LoginThrottled) as throttled:  # even the right password
            accounts.login("eu", user.email, PASSWORD, address="10.0.0.2")
    assert dict(throttled.value.headers)[b"retry-after"] == b"60"
    clock.advance(61)
    grant, _ = accounts.login("eu", user.email, PASSWORD, address="10.0.0.2")
    assert grant.user_id == user.id


def test_right_passwords_do_not_use_up_the_address(tenants: Tenants,
                                                    accounts: Accounts) -> None:
    users = [tenants.user() for _ in range(8)]  # more than the address's 5 in the conftest
    for user in users:  # e.g. colleagues behind one office address
        grant, _ = accounts.login("eu", user.email, PASSWORD, address="10.0.0.1")
        assert grant.user_id == user.id


def test_parallel_wrong_passwords_meet_the_account_limit(
        site: Site, tenants: Tenants, sessions_for: SessionsFor, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    attempts, limit = 40, 5
    settings = WorkspaceSettings(login_failures_per_account=limit,
                                 login_failures_per_address=1000, login_window_s=60.0)
    accounts = Accounts(site.directory, sessions_for, LoginThrottle(settings, clock),
                        site.audit_log)
    user = tenants.user()
    verify_password = site.directory.verify_password
    progress = threading.Condition()
    counts = {"password checks": 0, "arrived": 0}

    def arrive(password_check: bool) -> None:
        with progress:
            counts["arrived"] += 1
            counts["password checks"] += password_check
            progress.notify_all()

    def held_password_check(member: User, password: str) -> bool:
        arrive(True)
        # Held until every sign-in has reached a password check or been refused, so all of
        # them are in flight together however the threads happen to be scheduled.
        with progress:
            assert progress.wait_for(lambda: counts["arrived"] == attempts, timeout=60)
        return verify_password(member, password)

    monkeypatch.setattr(site.directory, "verify_password", held_password_check)

    def sign_in(n: int) -> int:
        try:
            accounts.login("eu", user.email, "wrong password", address=f"10.0.1.{n}")
        except LoginThrottled as refused:
            arrive(False)
            return refused.status
        except InvalidCredentials as wrong:
            return wrong.status
        return 200

    with ThreadPoolExecutor(max_workers=attempts) as pool:
        statuses = list(pool.map(sign_in, range(attempts)))
    assert counts["password checks"] == limit
    assert (statuses.count(401), statuses.count(429)) == (limit, attempts - limit)
    assert len(audit_entries(site, "eu", "login.failed")) == limit


def test_logout_ends_the_session(site: Site, tenants: Tenants, accounts: Accounts) -> None:
    user = tenants.user()
    _, session = accounts.login("eu", user.email, PASSWORD, address="10.0.0.1")
    accounts.logout("eu", session.secret)
    accounts.logout("eu", session.secret)  # already ended: nothing more to do
    assert accounts.session_member("eu", session.secret) is None
    assert [e.target for e in audit_entries(site, "eu", "logout")] == [user.id]


def test_login_rotates_the_session(tenants: Tenants, accounts: Accounts) -> None:
    user = tenants.user()
    _, before = accounts.login("eu", user.email, PASSWORD, address="10.0.0.1")
    _, after = accounts.login("eu", user.email, PASSWORD, address="10.0.0.1",
                              replacing=before.secret)
    assert after.secret != before.secret and after.csrf != before.csrf
    assert accounts.session_member("eu", before.secret) is None
    assert accounts.session_member("eu", after.secret) is not None


def test_a_session_follows_role_changes_and_removal(site: Site, tenants: Tenants,
                                                    accounts: Accounts,
                                                    sessions_for: SessionsFor) -> None:
    owner = tenants.user(role="owner")
    user = tenants.user(owner.workspace_id)
    _, session = accounts.login("eu", user.email, PASSWORD, address="10.0.0.1")
    site.directory.set_role(user.workspace_id, user.id, "admin", actor=owner.id)
    found = accounts.session_member("eu", session.secret)
    assert found is not None and found[0].role == "admin"

    accounts.remove_member(tenants.grant(owner), user.id)
    assert accounts.session_member("eu", session.secret) is None
    assert sessions_for("eu").lookup(session.secret) is None  # the row is gone too
    with pytest.raises(InvalidCredentials):
        accounts.login("eu", user.email, PASSWORD, address="10.0.0.1")


def test_a_session_is_only_good_in_its_region(tenants: Tenants, accounts: Accounts) -> None:
    user = tenants.user()
    _, session = accounts.login("eu", user.email, PASSWORD, address="10.0.0.1")
    assert accounts.session_member("us", session.secret) is None
