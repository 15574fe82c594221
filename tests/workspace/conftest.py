"""Fixtures for the workspace's services: a site with an org, and a factory of workspace
members. The site is the embedded default or the scale-out stack (PostgreSQL content and shared
keystore, S3 and KMS on moto, Redis: tests/storage/conftest.py), which covers PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from domicile.site import Site
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant, Role
from tests.storage.conftest import SUITE_BACKENDS

MemberFactory = Callable[..., MemberGrant]


@pytest.fixture(params=SUITE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Org:
    id: str
    site: Site


@pytest.fixture
def org(site: Site) -> Org:
    return Org(site.directory.create_org("Acme").id, site)


@pytest.fixture
def make_member(org: Org) -> MemberFactory:
    """`make_member(workspace_id=None, role="member", region="eu")`: a member of a new workspace
    of `region` (or of `workspace_id`), as a signed-in `MemberGrant`."""
    count = 0

    def make(workspace_id: str | None = None, role: Role = "member",
             region: str = "eu") -> MemberGrant:
        nonlocal count
        count += 1
        directory = org.site.directory
        if workspace_id is None:
            workspace_id = directory.create_workspace(org.id, f"ws{count}", region).id
        workspace = directory.get_workspace(workspace_id)
        user = directory.add_user(workspace_id, f"member{count}@example.com", role,
                                  "correct horse battery staple")
        return MemberGrant(workspace_id, org.id, user.id, workspace.region, role)

    return make


@pytest.fixture
def member(make_member: MemberFactory) -> MemberGrant:
    return make_member()


@pytest.fixture
def eu_store(site: Site) -> RegionalStore:
    return site.store("eu")
