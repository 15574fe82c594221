"""Hostile bodies and queries: each a 400 (413 for a body too large) in the one error shape
that never quotes what was sent, and nothing written, not even an audit entry."""

from __future__ import annotations

import json

import pytest

from tests.admin_api.conftest import Admin

CANARY = "hostile-canary-7f3a"

BODIES: dict[str, bytes] = {
    "nan": b'{"name": "' + CANARY.encode() + b'", "training_opt_in": NaN}',
    "infinity": b'{"name": "' + CANARY.encode() + b'", "n": Infinity}',
    "huge number": b'{"name": "' + CANARY.encode() + b'", "n": 1e400}',
    "deep nesting": b'{"name": "' + CANARY.encode() + b'", "x": ' + b"[" * 5000
                    + b"]" * 5000 + b"}",
    "bad utf-8": b'{"name": "\xff\xfe' + CANARY.encode() + b'"}',
    "lone surrogate": b'{"name": "\\ud800' + CANARY.encode() + b'"}',
    "unknown field": b'{"name": "Acme", "' + CANARY.encode() + b'": 1}',
    "not an object": b'["' + CANARY.encode() + b'"]',
    "not json": CANARY.encode(),
    "empty": b"",
    "wrong type": b'{"name": 42}',
    "string for a boolean": b'{"name": "Acme", "training_opt_in": "true"}',
    "null name": b'{"name": null}',
    "blank name": b'{"name": "   "}',
    "long name": json.dumps({"name": "x" * 201}).encode(),
    "duplicate-free but trailing garbage": b'{"name": "Acme"} ' + CANARY.encode(),
}


def _state(admin: Admin) -> tuple[int, int]:
    orgs = len(admin.site.directory.list_orgs())
    entries = sum(1 for _ in admin.site.directory_audit.entries())
    return orgs, entries


@pytest.mark.parametrize("name", list(BODIES))
def test_a_hostile_body_is_a_400_and_nothing_is_written(admin: Admin, name: str) -> None:
    before = _state(admin)
    answer = admin.call("POST", "/orgs", content=BODIES[name],
                        headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert CANARY not in answer.text
    assert _state(admin) == before


def test_a_body_too_large_is_413_before_it_is_read(admin: Admin) -> None:
    before = _state(admin)
    body = json.dumps({"name": "x", "pad": "y" * (2 * 1024 * 1024)}).encode()
    answer = admin.call("POST", "/orgs", content=body)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"
    assert _state(admin) == before


def test_unknown_fields_and_bad_values_are_refused_in_every_body(admin: Admin) -> None:
    org = admin.org()
    project = admin.call("POST", "/projects", json={"org_id": org, "name": "P",
                                                    "region": "eu"}).json()
    workspace = admin.call("POST", "/workspaces", json={"org_id": org, "name": "W",
                                                        "region": "eu"}).json()
    before = _state(admin)
    cases = [
        ("PATCH", f"/orgs/{org}", {"training_opt_in": True, "name": "x"}),
        ("PATCH", f"/orgs/{org}", {"training_opt_in": 1}),
        ("POST", "/projects", {"org_id": org, "name": "P", "region": "eu", "retention": "a"}),
        ("POST", "/projects", {"org_id": org, "name": "P", "region": "eu", "rpm_limit": 0}),
        ("POST", "/projects", {"org_id": org, "name": "P", "region": "eu", "rpm_limit": 1.5}),
        ("PATCH", f"/projects/{project['id']}", {"retention": "regional"}),
        ("POST", f"/projects/{project['id']}/keys", {"name": "k", "secret": "mine"}),
        ("PATCH", f"/workspaces/{workspace['id']}", {"retention_days": 0}),
        ("POST", f"/workspaces/{workspace['id']}/members",
         {"email": "a@b.example", "role": "god", "password": "long enough"}),
        ("POST", f"/workspaces/{workspace['id']}/members",
         {"email": "not-an-address", "role": "member", "password": "long enough"}),
        ("POST", f"/workspaces/{workspace['id']}/tokens", {"user_id": "u", "expires_days": 0}),
        ("POST", f"/workspaces/{workspace['id']}/erase", {"confirm": True, "also": 1}),
    ]
    for method, path, body in cases:
        answer = admin.call(method, path, json=body)
        assert answer.status_code == 400, (method, path, body, answer.text)
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert _state(admin) == before
    for region in ("eu", "us"):
        assert admin.site.audit_log(region).verify() is None
    assert admin.site.directory.get_workspace(workspace["id"]).erased_at is None


@pytest.mark.parametrize("query", ["org_id=a&org_id=b", "unknown=1", "org_id=%ff",
                                   "format=json"])
def test_a_bad_query_is_a_400(admin: Admin, query: str) -> None:
    answer = admin.http().get("/projects?" + query)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"


def test_an_unknown_route_or_method_answers_in_the_one_shape(admin: Admin) -> None:
    missing = admin.call("GET", "/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = admin.call("PUT", "/orgs")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert set(wrong.headers["allow"].split(", ")) >= {"GET", "POST"}
