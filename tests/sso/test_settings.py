"""A workspace's SSO settings in the directory (SQLite and PostgreSQL): the sealed client
secret, the audit trail, and the members single sign-on makes."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from domicile.crypto import DecryptionError
from domicile.errors import NotFound
from domicile.site import Site
from domicile.tenancy.models import WorkspaceSso
from domicile.tenancy.sso import MembershipEnded, WorkspaceSsoSettings

ISSUER = "https://login.example.com/realms/acme"
SECRET = "the-client-secret-of-acme"


@pytest.fixture
def settings(site: Site) -> WorkspaceSsoSettings:
    return WorkspaceSsoSettings(site.directory_engine, site.audit_log, site.store)


@pytest.fixture
def workspace(site: Site) -> str:
    org = site.directory.create_org("Acme")
    return site.directory.create_workspace(org.id, "Team", "eu").id


def actions(site: Site) -> list[tuple[str, str]]:
    return [(e.action, e.target) for e in site.audit_log("eu").entries()]


def test_set_show_and_clear(site: Site, settings: WorkspaceSsoSettings, workspace: str) -> None:
    made = settings.set(workspace, issuer=ISSUER, client_id="domicile",
                        allowed_domains="Example.com", client_secret=SECRET)
    assert made.allowed_domains == ("example.com",)
    found = settings.get(workspace)
    assert found is not None and found.issuer == ISSUER and found.has_client_secret
    assert SECRET.encode() not in (found.client_secret_sealed or b"")
    assert settings.client_secret(found) == SECRET
    replaced = settings.set(workspace, issuer=ISSUER, client_id="other",
                            allowed_domains=["a.org"])
    assert not replaced.has_client_secret and settings.client_secret(replaced) is None
    assert settings.clear(workspace) is True
    assert settings.get(workspace) is None
    assert settings.clear(workspace) is False
    assert actions(site).count(("workspace.sso.set", workspace)) == 2
    assert ("workspace.sso.clear", workspace) in actions(site)
    with pytest.raises(NotFound):
        settings.get("ws_nobody")


def test_the_sealed_secret_opens_for_its_workspace_only(
        site: Site, settings: WorkspaceSsoSettings, workspace: str) -> None:
    other = site.directory.create_workspace(
        site.directory.create_org("Other").id, "Other", "eu").id
    settings.set(workspace, issuer=ISSUER, client_id="c", allowed_domains="example.com",
                 client_secret=SECRET)
    settings.set(other, issuer=ISSUER, client_id="c", allowed_domains="example.com",
                 client_secret="another-secret")
    sealed = settings.get(workspace).client_secret_sealed  # type: ignore[union-attr]
    with Session(site.directory_engine) as session, session.begin():
        session.execute(update(WorkspaceSso).where(WorkspaceSso.workspace_id == other)
                        .values(client_secret_sealed=sealed))
    copied = settings.get(other)
    assert copied is not None
    with pytest.raises(DecryptionError):
        settings.client_secret(copied)


def test_a_shredded_workspace_key_takes_the_secret_with_it(
        site: Site, settings: WorkspaceSsoSettings, workspace: str) -> None:
    settings.set(workspace, issuer=ISSUER, client_id="c", allowed_domains="example.com",
                 client_secret=SECRET)
    site.store("eu").envelope.destroy_tenant_key(workspace)
    found = settings.get(workspace)
    assert found is not None
    with pytest.raises(DecryptionError):
        settings.client_secret(found)


def test_a_first_sign_in_makes_a_member_without_a_password(
        site: Site, settings: WorkspaceSsoSettings, workspace: str) -> None:
    user, made = settings.provision_member(workspace, " Ann@Example.com ")
    assert made and user.role == "member" and user.email == "ann@example.com"
    assert user.password_hash == ""
    assert not site.directory.verify_password(user, "")
    again, made_again = settings.provision_member(workspace, "ann@example.com")
    assert again.id == user.id and not made_again
    assert actions(site).count(("user.add", user.id)) == 1
    site.directory.remove_member(workspace, user.id)
    with pytest.raises(MembershipEnded) as ended:
        settings.provision_member(workspace, "ann@example.com")
    assert ended.value.user_id == user.id
