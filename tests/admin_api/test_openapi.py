"""The admin API's OpenAPI document is made from the route table the router serves, the copy
in docs/ is that document, and a schemathesis run over it finds every answer as documented."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from domicile.admin_api import ADMIN_PREFIX, ROUTES
from domicile.admin_api.openapi import openapi_document
from tests.admin_api.conftest import Admin

DOCS_COPY = Path(__file__).parents[2] / "docs" / "admin-openapi.json"
EXAMPLES_PER_OPERATION = 5
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Operations that erase: fuzzed against objects made for the run, never the shared ones.
ERASING = re.compile(r"/erase$")


def test_docs_copy_is_the_document_the_server_serves(admin: Admin) -> None:
    assert json.loads(DOCS_COPY.read_text()) == openapi_document(), (
        "docs/admin-openapi.json is stale: python -m domicile.admin_api.openapi "
        "> docs/admin-openapi.json")
    assert admin.http("").get("/openapi.json").json() == openapi_document()


def test_every_route_is_documented_with_its_body_and_credential() -> None:
    paths = openapi_document()["paths"]
    for route in ROUTES:
        operation = paths[ADMIN_PREFIX + route.path][route.method.lower()]
        assert operation["operationId"] == route.handler
        if route.body is not None:
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + route.body.__name__)
        assert (operation["security"] == []) == route.public
        assert route.public or "401" in operation["responses"]
    documented = {(path, method) for path, ops in paths.items() for method in ops}
    assert documented == {(ADMIN_PREFIX + r.path, r.method.lower()) for r in ROUTES}
    for name, schema in openapi_document()["components"]["schemas"].items():
        if name != "Error":
            assert schema.get("additionalProperties") is False, name


@pytest.fixture(scope="module")
def objects(admin: Admin) -> dict[str, list[str]]:
    """One object of each kind the paths name, so generated requests also reach answers
    that are not refusals."""
    org = admin.org("Fuzzed")
    project = admin.call("POST", "/projects", json={"org_id": org, "name": "P",
                                                    "region": "eu"}).json()
    key = admin.call("POST", f"/projects/{project['id']}/keys").json()
    workspace = admin.call("POST", "/workspaces", json={"org_id": org, "name": "W",
                                                        "region": "eu"}).json()
    user = admin.call("POST", f"/workspaces/{workspace['id']}/members",
                      json={"email": "f@z.example", "role": "owner",
                            "password": "long enough"}).json()
    token = admin.call("POST", f"/workspaces/{workspace['id']}/tokens",
                       json={"user_id": user["id"]}).json()
    return {"org_id": [org], "project_id": [project["id"]], "key_id": [key["id"]],
            "workspace_id": [workspace["id"]], "token_id": [token["id"]],
            "chain": ["directory", "eu"], "user_id": [user["id"]]}


def _labels() -> list[str]:
    return [f"{method.upper()} {path}" for path, item in openapi_document()["paths"].items()
            for method in item]


@pytest.fixture(scope="module")
def admin_schema() -> Any:
    return schemathesis.openapi.from_dict(json.loads(DOCS_COPY.read_text()))


@pytest.mark.parametrize("label", _labels())
def test_every_answer_matches_the_document(admin: Admin, admin_schema: Any,
                                           objects: dict[str, list[str]], label: str) -> None:
    operation = admin_schema.find_operation_by_label(label)
    statuses: set[int] = set()

    @given(case=operation.as_strategy(), pick=st.booleans())
    @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None,
              deadline=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def check(case: Any, pick: bool) -> None:
        for name in list(case.path_parameters or {}):
            if pick and objects.get(name) and not ERASING.search(label):
                case.path_parameters[name] = objects[name][0]
        body = case.body
        if pick and isinstance(body, dict) and "user_id" in body:
            body["user_id"] = objects["user_id"][0]
        answer = case.call_and_validate(base_url=admin.url, checks=CHECKS,
                                        headers={"Authorization": f"Bearer {admin.key}"})
        statuses.add(answer.status_code)

    check()
    assert statuses, f"no request of {label} was answered"
    for region in ("directory", "eu", "us"):
        assert admin.site.audit_log(region).verify() is None
