"""The directory: G1 (a region never changes), credentials kept only as keyed hashes."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from domicile.errors import InvalidInput, NotFound, RegionImmutable
from domicile.site import Site
from domicile.tenancy.directory import Directory
from domicile.tenancy.grants import key_region


def test_project_is_created_pinned_to_its_region(site: Site) -> None:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu")
    assert project.region == "eu" and project.retention == "zero"
    assert site.directory.get_project(project.id).region == "eu"


def test_service_has_no_operation_that_changes_a_region() -> None:
    mutators = [name for name in dir(Directory) if not name.startswith("_")]
    assert not [name for name in mutators if "region" in name and name != "refuse_region_change"]
    with pytest.raises(RegionImmutable):
        Directory.refuse_region_change(None, "project", "proj_x")  # type: ignore[arg-type]


@pytest.mark.parametrize("table", ["projects", "workspaces"])
def test_database_refuses_to_change_a_region(site: Site, table: str) -> None:
    org = site.directory.create_org("Acme")
    if table == "projects":
        tenant = site.directory.create_project(org.id, "app", "eu").id
    else:
        tenant = site.directory.create_workspace(org.id, "ws", "eu").id
    with pytest.raises(DBAPIError, match="immutable"), site.directory_engine.begin() as conn:
        conn.execute(text(f"UPDATE {table} SET region = 'us' WHERE id = :id"), {"id": tenant})
    with site.directory_engine.connect() as conn:
        region = conn.execute(text(f"SELECT region FROM {table} WHERE id = :id"),
                              {"id": tenant}).scalar()
    assert region == "eu"
    with site.directory_engine.begin() as conn:  # other columns stay editable
        conn.execute(text(f"UPDATE {table} SET name = 'renamed' WHERE id = :id"), {"id": tenant})


@pytest.mark.parametrize("table", ["orgs", "projects", "workspaces"])
def test_a_tenant_is_never_deleted_so_its_id_is_never_reused(site: Site, table: str) -> None:
    """G1: deleting a project (or workspace, or org) and inserting it again under the same id
    in another region would move it; the database refuses the delete."""
    org = site.directory.create_org("Acme")
    tenant = {"orgs": org.id,
              "projects": lambda: site.directory.create_project(org.id, "app", "eu").id,
              "workspaces": lambda: site.directory.create_workspace(org.id, "ws", "eu").id}[table]
    tenant_id = tenant if isinstance(tenant, str) else tenant()
    with pytest.raises(DBAPIError, match="never deleted"), site.directory_engine.begin() as conn:
        if table == "orgs":  # its children first, as a deleter would
            conn.execute(text("DELETE FROM projects WHERE org_id = :id"), {"id": tenant_id})
        conn.execute(text(f"DELETE FROM {table} WHERE id = :id"), {"id": tenant_id})
    if site.directory_engine.dialect.name == "postgresql":  # TRUNCATE skips row triggers
        with (pytest.raises(DBAPIError, match="never deleted"),
              site.directory_engine.begin() as conn):
            conn.execute(text(f"TRUNCATE {table} CASCADE"))
    with site.directory_engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table} WHERE id = :id"),
                            {"id": tenant_id}).scalar() == 1


def test_database_refuses_to_change_per_request_residency(site: Site) -> None:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "g", "global", per_request_residency=True)
    with pytest.raises(DBAPIError, match="G1"), site.directory_engine.begin() as conn:
        conn.execute(text("UPDATE projects SET per_request_residency = false WHERE id = :id"),
                     {"id": project.id})


def test_unknown_region_is_refused_and_nothing_is_created(site: Site) -> None:
    org = site.directory.create_org("Acme")
    with pytest.raises(InvalidInput, match="unknown region"):
        site.directory.create_project(org.id, "app", "mars")
    with pytest.raises(InvalidInput):
        site.directory.create_project(org.id, "app", "global")  # needs per-request residency
    with pytest.raises(NotFound):
        site.directory.create_project("org_missing", "app", "eu")
    assert site.directory.list_projects() == []


def test_api_key_is_shown_once_and_stored_only_as_a_keyed_hash(site: Site) -> None:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu")
    created = site.directory.create_api_key(project.id)
    assert created.secret.startswith("dk-eu-") and key_region(created.secret) == "eu"
    assert created.secret not in repr(created)
    with site.directory_engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).fetchall()
    stored = " ".join(str(value) for row in rows for value in row)
    assert created.secret not in stored and created.secret[10:] not in stored
    grant = site.directory.authenticate_api_key(created.secret)
    assert grant is not None and grant.project_id == project.id and grant.region == "eu"


def test_revoked_or_unknown_key_does_not_authenticate(site: Site) -> None:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu")
    created = site.directory.create_api_key(project.id)
    assert site.directory.authenticate_api_key(created.secret + "x") is None
    site.directory.revoke_api_key(created.id)
    assert site.directory.authenticate_api_key(created.secret) is None


def test_global_project_with_per_request_residency_gets_global_keys(site: Site) -> None:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "g", "global", per_request_residency=True)
    created = site.directory.create_api_key(project.id)
    assert created.secret.startswith("dk-global-")
    grant = site.directory.authenticate_api_key(created.secret)
    assert grant is not None and grant.may_use_region("eu") and grant.may_use_region("us")


def test_pinned_project_may_use_only_its_region(site: Site) -> None:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "us")
    grant = site.directory.authenticate_api_key(site.directory.create_api_key(project.id).secret)
    assert grant is not None and grant.may_use_region("us") and not grant.may_use_region("eu")
    with pytest.raises(InvalidInput):
        site.directory.create_project(org.id, "x", "eu", per_request_residency=True)


def test_workspace_user_and_token(site: Site) -> None:
    org = site.directory.create_org("Acme")
    workspace = site.directory.create_workspace(org.id, "Research", "us")
    user = site.directory.add_user(workspace.id, "Ada@Example.org", "owner", "correct horse")
    assert user.email == "ada@example.org" and user.password_hash.startswith("$argon2id$")
    with pytest.raises(InvalidInput, match="already"):
        site.directory.add_user(workspace.id, "ada@example.org", "member", "another one")
    token = site.directory.create_token(workspace.id, user.id)
    assert token.secret.startswith("dw-us-")
    grant = site.directory.authenticate_token(token.secret)
    assert grant is not None and grant.workspace_id == workspace.id and grant.region == "us"


@pytest.mark.parametrize(("email", "role", "password"), [
    ("not-an-email", "member", "long enough"),
    ("a@b.org", "king", "long enough"),
    ("a@b.org", "member", "short"),
])
def test_bad_user_input_is_refused(site: Site, email: str, role: str, password: str) -> None:
    org = site.directory.create_org("Acme")
    workspace = site.directory.create_workspace(org.id, "ws", "eu")
    with pytest.raises(InvalidInput):
        site.directory.add_user(workspace.id, email, role, password)


def test_tenancy_changes_are_audited_in_the_tenants_region(site: Site) -> None:
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "us")
    key = site.directory.create_api_key(project.id)
    site.directory.revoke_api_key(key.id)
    us_actions = [(e.action, e.target) for e in site.store("us").audit.entries()]
    assert us_actions == [("project.create", project.id), ("key.create", key.id),
                          ("key.revoke", key.id)]
    assert [e.action for e in site.store("eu").audit.entries()] == []
    assert [e.action for e in site.directory_audit.entries()] == ["org.create"]
    for entry in site.store("us").audit.entries():
        assert key.secret not in str(entry)


def test_training_consent_changes_are_audited(site: Site) -> None:
    """G7: no training by default; every change of consent is on record."""
    org = site.directory.create_org("Acme")
    assert org.training_opt_in is False and org.training_opt_in_since is None
    opted = site.directory.set_training_opt_in(org.id, True)
    assert opted.training_opt_in and opted.training_opt_in_since is not None
    site.directory.set_training_opt_in(org.id, True)  # no change, no entry
    site.directory.set_training_opt_in(org.id, False)
    trail = [(e.action, e.details.get("training_opt_in")) for e in site.directory_audit.entries()]
    assert trail == [("org.create", False), ("org.training_opt_in", True),
                     ("org.training_opt_in", False)]


def test_every_grant_carries_the_orgs_consent_as_it_is_now(site: Site) -> None:
    """G7: content rows take `training_consent` from the grant of the credential that wrote
    them (gateway key, workspace token, signed-in member), so each must say what the org says
    at the time, and change when it does."""
    directory = site.directory
    org = directory.create_org("Acme")
    project = directory.create_project(org.id, "app", "eu", retention="regional")
    key = directory.create_api_key(project.id).secret
    workspace = directory.create_workspace(org.id, "ws", "eu")
    user = directory.add_user(workspace.id, "a@example.com", "member", "a long password")
    token = directory.create_token(workspace.id, user.id).secret

    def consents() -> list[bool]:
        grants = [directory.authenticate_api_key(key), directory.authenticate_token(token),
                  directory.member_grant(user.id)]
        assert all(grant is not None for grant in grants)
        return [grant.training_opt_in for grant in grants if grant is not None]

    assert consents() == [False, False, False]
    directory.set_training_opt_in(org.id, True)
    assert consents() == [True, True, True]
    grant = directory.member_grant(user.id)
    assert grant is not None and grant.tenant.training_consent
    directory.set_training_opt_in(org.id, False)
    assert consents() == [False, False, False]
