"""Signing workspace members in and out: email and password against the directory, a
server-side session in the region's store, throttling, and the audit trail (G8).

A wrong email and a wrong password answer the same (401 `invalid_credentials`), take about
the same time (an unknown email is checked against a throwaway hash) and count the same
against the throttle, so sign-in tells nobody which addresses have accounts. The audit
records ids only: never the email, the password or a session's secret.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable

from argon2 import PasswordHasher

from domicile.compliance.audit import AuditLog
from domicile.errors import Forbidden, InvalidCredentials, InvalidInput
from domicile.tenancy.directory import Directory
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.models import User
from domicile.tenancy.sessions import NewSession, SessionStore
from domicile.tenancy.throttle import LoginThrottle
from domicile.workspace.models import SessionRow

__all__ = ["ANONYMOUS", "Accounts"]

ANONYMOUS = "anonymous"  # the actor of a failed sign-in: nobody was authenticated
_WRONG = "Incorrect email or password."


class Accounts:
    def __init__(self, directory: Directory, sessions_for: Callable[[str], SessionStore],
                 throttle: LoginThrottle, audit_for: Callable[[str], AuditLog]) -> None:
        self._directory = directory
        self._sessions_for = sessions_for
        self._throttle = throttle
        self._audit_for = audit_for
        # Verified against when the email is unknown, so that answer costs an argon2 check too.
        self._decoy_hash = PasswordHasher().hash(secrets.token_urlsafe(16))

    def login(self, region: str, email: str, password: str, *, workspace_id: str | None = None,
              address: str, replacing: str | None = None) -> tuple[MemberGrant, NewSession]:
        """Sign a member of a workspace of `region` in; a new session every time (the
        session a browser had before, `replacing`, is ended: ids rotate at sign-in).

        `workspace_id` chooses among several workspaces of the region with this email; it
        is asked for (400) only after the password matched in more than one of them."""
        account_key = f"{region}:{email.strip().lower()}"
        # Counts this attempt (or refuses it) before the slow password check; a failure
        # leaves it counted, a right password takes it back.
        self._throttle.check(account_key, address)
        candidates = [user for user in self._directory.find_members(region, email)
                      if workspace_id is None or user.workspace_id == workspace_id]
        matched = self._matching(candidates, password)
        audit = self._audit_for(region)
        if not matched:
            for user in candidates:
                audit.append(ANONYMOUS, "login.failed", user.id,
                             {"workspace": user.workspace_id, "reason": "password"})
            if not candidates:
                audit.append(ANONYMOUS, "login.failed", "unknown", {"reason": "account"})
            raise InvalidCredentials(_WRONG)
        self._throttle.succeeded(account_key, address)
        if len(matched) > 1:
            choices = ", ".join(user.workspace_id for user in matched)
            raise InvalidInput(f"This account belongs to several workspaces of region {region}; "
                               f"sign in again with a workspace_id (one of: {choices}).",
                               param="workspace_id")
        user = matched[0]
        grant = self._directory.member_grant(user.id)
        if grant is None:  # removed between the lookup and now
            raise InvalidCredentials(_WRONG)
        sessions = self._sessions_for(region)
        if replacing:
            sessions.delete(replacing)
        new = sessions.create(grant)
        audit.append(user.id, "login", user.id,
                     {"workspace": user.workspace_id, "method": "password"})
        return dataclasses.replace(grant, session=sessions.digest(new.secret)), new

    def logout(self, region: str, secret: str) -> None:
        """End the session of `secret` (nothing to do when it has already ended)."""
        sessions = self._sessions_for(region)
        row = sessions.lookup(secret)
        if sessions.delete(secret) and row is not None:
            self._audit_for(region).append(row.user_id, "logout", row.user_id,
                                           {"workspace": row.workspace_id})

    def session_member(self, region: str, secret: str) -> tuple[MemberGrant, SessionRow] | None:
        """The member signed in by this session secret, with their current role; None when
        the session is unknown or expired, or the member was removed."""
        row = self._sessions_for(region).lookup(secret)
        if row is None or row.region != region:
            return None
        grant = self._directory.member_grant(row.user_id)
        if grant is None or grant.workspace_id != row.workspace_id:
            return None
        return dataclasses.replace(grant, session=row.digest), row

    def check_csrf(self, region: str, row: SessionRow, token: str | None) -> bool:
        return self._sessions_for(region).check_csrf(row, token)

    # -- managing members: who may change whom ---------------------------------------------

    def change_role(self, actor: MemberGrant, user_id: str, role: str) -> User:
        """Give a member of the actor's workspace another role (audited "member.role").

        Owners and admins manage members; only an owner may make someone an owner or change
        an owner's role, so an admin cannot take a workspace from its owners. A member of
        another workspace is not found (404); the last owner stays (400)."""
        _may_manage_members(actor)
        if role == "owner" and actor.role != "owner":
            raise Forbidden("Only an owner may make a member an owner.")
        return self._directory.set_role(actor.workspace_id, user_id, role,
                                        actor=actor.user_id, check=_owners_by_owners(actor))

    def remove_member(self, actor: MemberGrant, user_id: str) -> None:
        """Remove a member of the actor's workspace (tokens revoked, audited "member.remove")
        and end their sessions, under the rules of `change_role`."""
        _may_manage_members(actor)
        self._directory.remove_member(actor.workspace_id, user_id, actor=actor.user_id,
                                      check=_owners_by_owners(actor))
        self._sessions_for(actor.region).delete_for_user(actor.workspace_id, user_id)

    def _matching(self, candidates: list[User], password: str) -> list[User]:
        matched = []
        for user in candidates:
            if not user.password_hash:  # single sign-on only: no password, same time spent
                self._spend_a_check(password)
            elif self._directory.verify_password(user, password):
                matched.append(user)
        if not candidates:
            self._spend_a_check(password)
        return matched

    def _spend_a_check(self, password: str) -> None:
        user = User(id="", workspace_id="", email="", role="member",
                    password_hash=self._decoy_hash)
        self._directory.verify_password(user, password)


def _may_manage_members(actor: MemberGrant) -> None:
    if not actor.is_admin:
        raise Forbidden("Only the workspace's owners and admins may manage its members.")


def _owners_by_owners(actor: MemberGrant) -> Callable[[User], None]:
    """The directory's check, run on the member as they are in the changing transaction (so a
    promotion to owner that lands first is seen): only an owner changes or removes an owner."""

    def check(user: User) -> None:
        if user.role == "owner" and actor.role != "owner":
            raise Forbidden("Only an owner may change or remove an owner.")

    return check
