"""Each resource of the admin API through a served app: create, list, get, change; what the
changes did is what the directory (and the gateway's authenticator) then sees."""

from __future__ import annotations

import io
import json
import zipfile

from tests.admin_api.conftest import Admin


def _created(admin: Admin, path: str, body: dict[str, object]) -> dict[str, object]:
    answer = admin.call("POST", path, json=body)
    assert answer.status_code == 201, answer.text
    assert answer.headers["x-request-id"].startswith("req_")
    return answer.json()  # type: ignore[no-any-return]


def test_orgs_are_created_listed_read_and_their_consent_set(admin: Admin) -> None:
    org = _created(admin, "/orgs", {"name": "Acme"})
    assert org["training_opt_in"] is False and str(org["id"]).startswith("org_")
    assert org in admin.call("GET", "/orgs").json()["data"]
    assert admin.call("GET", f"/orgs/{org['id']}").json() == org

    changed = admin.call("PATCH", f"/orgs/{org['id']}", json={"training_opt_in": True})
    assert changed.status_code == 200, changed.text
    assert changed.json()["training_opt_in"] is True
    assert admin.site.directory.get_org(str(org["id"])).training_opt_in is True

    missing = admin.call("GET", "/orgs/org_nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_projects_keep_their_region_whatever_a_change_says(admin: Admin) -> None:
    org = admin.org()
    project = _created(admin, "/projects", {"org_id": org, "name": "App", "region": "eu",
                                            "retention": "regional"})
    assert (project["region"], project["retention"]) == ("eu", "regional")
    listed = admin.call("GET", "/projects", params={"org_id": org}).json()["data"]
    assert [p["id"] for p in listed] == [project["id"]]
    path = f"/projects/{project['id']}"
    assert admin.call("GET", path).json() == project

    for body in ({"region": "us"}, {"region": "eu"}, {"name": "Moved", "region": "us"}):
        refused = admin.call("PATCH", path, json=body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "region_immutable"
        assert refused.json()["error"]["param"] == "region"
    after = admin.site.directory.get_project(str(project["id"]))
    assert (after.region, after.name) == ("eu", "App")

    renamed = admin.call("PATCH", path, json={"name": "App 2", "rpm_limit": 60})
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["rpm_limit"]) == ("App 2", 60)
    only_tpm = admin.call("PATCH", path, json={"tpm_limit": 1000}).json()
    assert (only_tpm["rpm_limit"], only_tpm["tpm_limit"]) == (60, 1000)  # the other is kept
    assert admin.call("PATCH", "/projects/proj_nope", json={"region": "us"}).status_code == 404

    unknown_region = admin.call("POST", "/projects", json={"org_id": org, "name": "X",
                                                           "region": "mars"})
    assert unknown_region.status_code == 400
    assert unknown_region.json()["error"]["param"] == "region"


def test_api_keys_are_created_listed_and_revoked(admin: Admin) -> None:
    org = admin.org()
    project = _created(admin, "/projects", {"org_id": org, "name": "App", "region": "eu"})
    keys_path = f"/projects/{project['id']}/keys"
    key = _created(admin, keys_path, {"name": "backend"})
    assert str(key["key"]).startswith("dk-eu-") and key["region"] == "eu"
    default = admin.call("POST", keys_path)  # the body is optional
    assert default.status_code == 201 and default.json()["name"] == "default"

    grant = admin.site.directory.authenticate_api_key(str(key["key"]))
    assert grant is not None and grant.project_id == project["id"]
    listed = admin.call("GET", keys_path).json()["data"]
    assert [k["id"] for k in listed] == [key["id"], default.json()["id"]]
    assert str(key["key"]) not in json.dumps(listed)

    revoked = admin.call("DELETE", f"/keys/{key['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert admin.site.directory.authenticate_api_key(str(key["key"])) is None
    assert admin.call("DELETE", "/keys/key_nope").status_code == 404


def test_workspaces_members_and_tokens(admin: Admin) -> None:
    org = admin.org()
    workspace = _created(admin, "/workspaces", {"org_id": org, "name": "Team", "region": "eu"})
    ws_path = f"/workspaces/{workspace['id']}"
    assert admin.call("GET", ws_path).json() == workspace
    listed = admin.call("GET", "/workspaces", params={"org_id": org, "region": "eu"})
    assert [w["id"] for w in listed.json()["data"]] == [workspace["id"]]
    assert admin.call("GET", "/workspaces", params={"org_id": org,
                                                    "region": "us"}).json()["data"] == []

    refused = admin.call("PATCH", ws_path, json={"region": "us"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "region_immutable"
    changed = admin.call("PATCH", ws_path, json={"name": "Team B", "retention_days": 30})
    assert (changed.json()["name"], changed.json()["retention_days"]) == ("Team B", 30)
    kept = admin.call("PATCH", ws_path, json={"retention_days": None}).json()
    assert (kept["name"], kept["retention_days"]) == ("Team B", None)
    assert admin.site.directory.get_workspace(str(workspace["id"])).region == "eu"

    member = _created(admin, f"{ws_path}/members", {"email": "Ada@Example.org",
                                                     "role": "owner",
                                                     "password": "correct horse"})
    assert member["email"] == "ada@example.org"
    members = admin.call("GET", f"{ws_path}/members").json()["data"]
    assert [m["id"] for m in members] == [member["id"]]
    assert "correct horse" not in json.dumps(members)

    token = _created(admin, f"{ws_path}/tokens", {"user_id": member["id"], "expires_days": 7})
    assert str(token["token"]).startswith("dw-eu-")
    assert admin.site.directory.authenticate_token(str(token["token"])) is not None
    assert admin.call("DELETE", f"/tokens/{token['id']}").json()["revoked"] is True
    assert admin.site.directory.authenticate_token(str(token["token"])) is None


def test_usage_residency_and_the_audit_trail_of_a_project(admin: Admin) -> None:
    org = admin.org()
    project = _created(admin, "/projects", {"org_id": org, "name": "App", "region": "eu"})
    usage = admin.call("GET", f"/projects/{project['id']}/usage").json()
    assert usage == {"project_id": project["id"], "requests": [],
                     "totals": {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}}

    report = admin.call("GET", f"/orgs/{org}/residency").json()
    assert [t["id"] for t in report["tenants"]] == [project["id"]]
    markdown = admin.call("GET", f"/orgs/{org}/residency", params={"format": "markdown"})
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert str(project["id"]) in markdown.text
    assert admin.call("GET", f"/orgs/{org}/residency",
                      params={"format": "pdf"}).status_code == 400

    verified = admin.call("GET", "/audit/verify").json()
    assert verified["ok"] is True
    assert {c["chain"] for c in verified["chains"]} == {"directory", "eu", "us"}
    head = admin.call("GET", "/audit/eu/head").json()
    assert head["chain"] == "eu" and head["seq"] >= 1
    assert admin.call("GET", "/audit/mars/entries").status_code == 404
    assert admin.call("GET", "/residency/verify", params={"region": "eu"}).json()["ok"] is True


def test_a_workspace_export_is_a_zip_served_only_at_its_regions_address(admin: Admin) -> None:
    org = admin.org()
    here = _created(admin, "/workspaces", {"org_id": org, "name": "EU team", "region": "eu"})
    exported = admin.call("POST", f"/workspaces/{here['id']}/export")
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(exported.content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert here["id"] in json.dumps(manifest)
    org_export = admin.call("POST", f"/orgs/{org}/export")
    assert org_export.status_code == 200 and org_export.content[:2] == b"PK"

    away = _created(admin, "/workspaces", {"org_id": org, "name": "US team", "region": "us"})
    refused = admin.call("POST", f"/workspaces/{away['id']}/export")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "wrong_region"
    assert admin.site.settings.regions["us"].public_url in error["message"]
    assert admin.call("POST", f"/orgs/{org}/export").status_code == 403  # it spans regions now


def test_an_erasure_needs_confirm_true(admin: Admin) -> None:
    org = admin.org()
    workspace = _created(admin, "/workspaces", {"org_id": org, "name": "Gone", "region": "eu"})
    path = f"/workspaces/{workspace['id']}/erase"
    for body in ({}, {"confirm": False}, {"confirm": "yes"}):
        refused = admin.call("POST", path, json=body)
        assert refused.status_code == 400, refused.text
        assert admin.site.directory.get_workspace(str(workspace["id"])).erased_at is None
    erased = admin.call("POST", path, json={"confirm": True})
    assert erased.status_code == 200, erased.text
    assert erased.json()["data_keys_destroyed"] >= 1
    assert admin.site.directory.get_workspace(str(workspace["id"])).erased_at is not None
    again = admin.call("POST", path, json={"confirm": True})
    assert again.status_code == 200 and again.json()["already_erased"] is True
    late = admin.call("PATCH", f"/workspaces/{workspace['id']}", json={"name": "Back"})
    assert late.status_code == 410 and late.json()["error"]["code"] == "tenant_erased"

    project = _created(admin, "/projects", {"org_id": org, "name": "P", "region": "us"})
    assert admin.call("POST", f"/projects/{project['id']}/erase",
                      json={"confirm": True}).status_code == 200
    assert admin.call("POST", f"/orgs/{org}/erase", json={"confirm": True}).status_code == 200
    assert admin.site.directory.get_org(org).erased_at is not None
