"""The member's profile says the truth about training (G7): never, unless the org opted in."""

from __future__ import annotations

from domicile.inference.routing import ModelRouter
from domicile.site import Site
from domicile.workspace_web.services import build_workspace_services, profile


def test_the_profile_states_the_orgs_training_consent(site: Site) -> None:
    services = build_workspace_services(site, "eu", ModelRouter("eu", []))
    org = site.directory.create_org("Acme")
    workspace = site.directory.create_workspace(org.id, "ws", "eu")
    user = site.directory.add_user(workspace.id, "a@example.com", "member", "long password 1")
    grant = site.directory.member_grant(user.id)
    assert grant is not None
    statement = profile(services, grant)["workspace"]["statement"]
    assert "never used for training" in statement

    site.directory.set_training_opt_in(org.id, True)
    grant = site.directory.member_grant(user.id)
    assert grant is not None
    described = profile(services, grant)["workspace"]
    assert described["training_opt_in"] is True
    assert "never used for training" not in described["statement"]
    assert "opted in" in described["statement"]
