"""The workspace's OpenAPI document is made from the route table the router serves, and the
copy in docs/ is that document."""

from __future__ import annotations

import json
from pathlib import Path

from domicile.workspace_web.app import API_PREFIX, ROUTES
from domicile.workspace_web.openapi import openapi_document

DOCS_COPY = Path(__file__).parents[2] / "docs" / "workspace-openapi.json"


def test_docs_copy_is_the_document_the_server_serves() -> None:
    assert json.loads(DOCS_COPY.read_text()) == openapi_document(), (
        "docs/workspace-openapi.json is stale: python -m domicile.workspace_web.openapi "
        "> docs/workspace-openapi.json")


def test_every_route_is_documented_with_its_body_and_credential() -> None:
    paths = openapi_document()["paths"]
    for route in ROUTES:
        operation = paths[API_PREFIX + route.path][route.method.lower()]
        assert operation["operationId"] == route.handler
        if route.body is not None:
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + route.body.__name__)
        assert (operation["security"] == []) == route.public
    documented = {(path, method) for path, ops in paths.items() for method in ops}
    assert documented == {(API_PREFIX + r.path, r.method.lower()) for r in ROUTES}


def test_request_bodies_forbid_unknown_fields() -> None:
    schemas = openapi_document()["components"]["schemas"]
    for name, schema in schemas.items():
        if name != "Error":
            assert schema.get("additionalProperties") is False, name
