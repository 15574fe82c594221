"""Who may call the admin API (a live `da-` key, nothing else), and that everything it
changes is in the audit chains, naming the admin key, with every chain still intact."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from domicile.admin_api import ROUTES
from tests.admin_api.conftest import Admin, admin_keys

DOMICILE = str(Path(sys.executable).parent / "domicile")


def _concrete(path: str) -> str:
    return re.sub(r"{\w+}", "x0", path)


def _refusals(admin: Admin, key: str | None) -> list[str]:
    """Every non-public route asked with `key`: what did not answer 401 in the one shape."""
    wrong = []
    for route in ROUTES:
        if route.path == "/openapi.json":  # the one public route
            continue
        headers = {} if key is None else {"Authorization": key}
        answer = admin.http("").request(route.method, _concrete(route.path), headers=headers,
                                      json={"name": "should not be made"})
        error = answer.json().get("error", {})
        if (answer.status_code, error.get("code")) != (401, "invalid_api_key"):
            wrong.append(f"{route.method} {route.path}: {answer.status_code}")
        elif "www-authenticate" not in answer.headers:
            wrong.append(f"{route.method} {route.path}: no www-authenticate")
    return wrong


def test_every_route_but_the_document_wants_an_admin_key(admin: Admin) -> None:
    before = admin.call("GET", "/orgs").json()["data"]
    assert _refusals(admin, None) == []
    assert admin.call("GET", "/orgs").json()["data"] == before  # nothing was made


@pytest.mark.parametrize("authorization", [
    "", "Bearer", "Bearer da-", "Bearer da-not-a-key", "Basic ZGE6eA==",
    "Bearer dk-eu-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bearer {key}", "Bearer {key}x",
    "Bearer  {key}", "Bearer {key},{key}", "Bearer da-\u00e9t\u00e9",
])
def test_anything_but_a_live_admin_key_is_401(admin: Admin, authorization: str) -> None:
    key = authorization.replace("{key}", admin.key)
    for method, path in (("GET", "/orgs"), ("POST", "/orgs"), ("DELETE", "/keys/x0")):
        answer = admin.http("").request(method, path,
                                        headers={"Authorization": key.encode()},
                                        json={"name": "should not be made"})
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "invalid_api_key"


def test_a_revoked_admin_key_is_refused_from_its_next_request(admin: Admin) -> None:
    created = admin_keys(admin.site).create("short-lived")
    client = admin.http(created.secret)
    assert client.get("/orgs").status_code == 200
    revoked = subprocess.run([DOMICILE, "admin-key", "revoke", created.id, "--config",
                              str(admin.site.settings.config_path), "--json"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert revoked.returncode == 0, revoked.stderr
    answer = client.get("/orgs")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert _refusals(admin, f"Bearer {created.secret}") == []


def test_the_document_is_public(admin: Admin) -> None:
    answer = admin.http("").get("/openapi.json")
    assert answer.status_code == 200
    assert answer.json()["openapi"] == "3.1.0"


def _entries(admin: Admin) -> dict[str, list[tuple[str, str, str]]]:
    return {chain: [(e.actor, e.action, e.target) for e in admin.site.audit_log(chain).entries()]
            for chain in ("directory", "eu", "us")}


def test_every_change_is_audited_naming_the_admin_key(admin: Admin) -> None:
    before = _entries(admin)
    org = admin.org("Audited")
    admin.call("PATCH", f"/orgs/{org}", json={"training_opt_in": True})
    project = admin.call("POST", "/projects", json={"org_id": org, "name": "P",
                                                    "region": "global",
                                                    "per_request_residency": True}).json()
    admin.call("PATCH", f"/projects/{project['id']}", json={"name": "P2", "rpm_limit": 5})
    key = admin.call("POST", f"/projects/{project['id']}/keys").json()
    admin.call("DELETE", f"/keys/{key['id']}")
    workspace = admin.call("POST", "/workspaces", json={"org_id": org, "name": "W",
                                                        "region": "us"}).json()
    admin.call("PATCH", f"/workspaces/{workspace['id']}", json={"name": "W2",
                                                                 "retention_days": 9})
    user = admin.call("POST", f"/workspaces/{workspace['id']}/members",
                      json={"email": "a@b.example", "role": "owner",
                            "password": "long enough"}).json()
    token = admin.call("POST", f"/workspaces/{workspace['id']}/tokens",
                       json={"user_id": user["id"]}).json()
    admin.call("DELETE", f"/tokens/{token['id']}")
    # An export reads the org in this region (eu): its global project's share of it.
    project_only = admin.call("POST", "/orgs", json={"name": "Exported"}).json()
    admin.call("POST", "/projects", json={"org_id": project_only["id"], "name": "E",
                                          "region": "eu"})
    assert admin.call("POST", f"/orgs/{project_only['id']}/export").status_code == 200
    erased = admin.call("POST", f"/workspaces/{workspace['id']}/erase", json={"confirm": True})
    assert erased.status_code == 200, erased.text

    after = _entries(admin)
    new = {chain: after[chain][len(before[chain]):] for chain in after}
    made = {(chain, action, target) for chain, entries in new.items()
            for actor, action, target in entries if actor == admin.key_id}
    expected = {
        ("directory", "org.create", org), ("directory", "org.training_opt_in", org),
        ("directory", "project.create", project["id"]),
        ("directory", "project.rename", project["id"]),
        ("directory", "project.limits", project["id"]),
        ("directory", "key.create", key["id"]), ("directory", "key.revoke", key["id"]),
        ("us", "workspace.create", workspace["id"]),
        ("us", "workspace.rename", workspace["id"]),
        ("us", "workspace.retention", workspace["id"]),
        ("us", "user.add", user["id"]), ("us", "token.create", token["id"]),
        ("us", "token.revoke", token["id"]),
        ("directory", "org.create", project_only["id"]),
        ("eu", "export", project_only["id"]),
        ("directory", "erase.begin", workspace["id"]), ("us", "erase", workspace["id"]),
        ("directory", "erase", workspace["id"]),
    }
    assert expected <= made, sorted(expected - made)
    # Nothing it did is in the name of anyone else.
    assert all(actor in (admin.key_id, "system") for entries in new.values()
               for actor, _action, _target in entries), new
    assert admin.call("GET", "/audit/verify").json()["ok"] is True


def test_the_audit_export_is_the_command_lines(admin: Admin) -> None:
    admin.org("Exported chain")
    api = admin.call("GET", "/audit/directory/entries")
    assert api.status_code == 200
    assert api.headers["content-type"].startswith("application/jsonl")
    cli = subprocess.run([DOMICILE, "audit", "export", "--region", "directory", "--config",
                          str(admin.site.settings.config_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert cli.returncode == 0, cli.stderr
    assert api.text == cli.stdout and api.text.count("\n") >= 2
    since = admin.call("GET", "/audit/directory/entries", params={"since": "2999-01-01"})
    assert since.status_code == 200 and since.text == ""
    bad = admin.call("GET", "/audit/directory/entries", params={"since": "yesterday"})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "since")
