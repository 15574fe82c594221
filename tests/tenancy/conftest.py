"""Fixtures for workspace accounts: a site (SQLite and PostgreSQL, from tests/conftest.py)
with an org, a factory of workspace users, and sign-in services over a settable clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from domicile.compliance.audit import AuditEntry
from domicile.config import WorkspaceSettings
from domicile.site import Site
from domicile.tenancy.accounts import Accounts
from domicile.tenancy.grants import MemberGrant, Role
from domicile.tenancy.models import User
from domicile.tenancy.secrets import CredentialHasher
from domicile.tenancy.sessions import SessionStore
from domicile.tenancy.throttle import LoginThrottle

PASSWORD = "correct horse battery staple"
SESSION_TTL = timedelta(hours=12)


@dataclass
class FakeClock:
    """A monotonic clock the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Tenants:
    """One org of `site`; `user(...)` adds a member to a new (or the given) workspace."""

    site: Site
    org_id: str
    count: int = field(default=0)

    def workspace(self, region: str = "eu") -> str:
        self.count += 1
        return self.site.directory.create_workspace(self.org_id, f"ws{self.count}", region).id

    def user(self, workspace_id: str | None = None, *, role: Role = "member",
             region: str = "eu", email: str | None = None,
             password: str = PASSWORD) -> User:
        self.count += 1
        workspace_id = workspace_id or self.workspace(region)
        return self.site.directory.add_user(workspace_id, email or f"user{self.count}@example.com",
                                            role, password)

    def grant(self, user: User) -> MemberGrant:
        grant = self.site.directory.member_grant(user.id)
        assert grant is not None
        return grant


@pytest.fixture
def tenants(site: Site) -> Tenants:
    return Tenants(site, site.directory.create_org("Acme").id)


@pytest.fixture
def hasher(site: Site) -> CredentialHasher:
    return CredentialHasher(site.site_secret)


SessionsFor = Callable[[str], SessionStore]


@pytest.fixture
def sessions_for(site: Site, hasher: CredentialHasher) -> SessionsFor:
    made: dict[str, SessionStore] = {}

    def sessions(region: str) -> SessionStore:
        if region not in made:
            made[region] = SessionStore(site.store(region), hasher, SESSION_TTL)
        return made[region]

    return sessions


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def workspace_settings() -> WorkspaceSettings:
    return WorkspaceSettings(login_failures_per_account=3, login_failures_per_address=5,
                             login_window_s=60.0)


@pytest.fixture
def throttle(workspace_settings: WorkspaceSettings, clock: FakeClock) -> LoginThrottle:
    return LoginThrottle(workspace_settings, clock)


@pytest.fixture
def accounts(site: Site, sessions_for: SessionsFor, throttle: LoginThrottle) -> Accounts:
    return Accounts(site.directory, sessions_for, throttle, site.audit_log)


def audit_entries(site: Site, region: str, *actions: str) -> list[AuditEntry]:
    """The region's audit entries, only those of `actions` when given."""
    return [entry for entry in site.audit_log(region).entries()
            if not actions or entry.action in actions]
