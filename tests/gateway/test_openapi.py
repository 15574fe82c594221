"""The region's OpenAPI document is made from the gateway's route table: every route is in it
with OpenAI's own operation where the route is OpenAI's, nothing else is, a route it cannot
describe is an error, and the copy in docs/ is the document the code makes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from domicile.gateway.http import Exchange
from domicile.gateway.openapi import (
    DOMICILE_OPERATIONS,
    OPENAI_OPERATIONS,
    UnknownOperation,
    documented_routes,
    extract_subset,
    load_subset,
    openapi_document,
    served_document,
)
from domicile.gateway.routes import Route, RouteTable
from domicile.tenancy.grants import ApiKeyGrant
from domicile.workspace_web.app import API_PREFIX
from domicile.workspace_web.openapi import openapi_document as workspace_document
from tests.gateway.conftest import Stack

DOCS_COPY = Path(__file__).parents[2] / "docs" / "openapi.json"


async def _handler(call: Exchange, grant: ApiKeyGrant) -> None:
    raise AssertionError("never called")


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): operation
            for path, item in document["paths"].items() for method, operation in item.items()}


def test_docs_copy_is_the_document_the_code_makes() -> None:
    assert json.loads(DOCS_COPY.read_text()) == openapi_document(documented_routes()), (
        "docs/openapi.json is stale: python -m domicile.gateway.openapi > docs/openapi.json")


def test_every_route_is_documented_under_its_operation_and_nothing_else(stack: Stack) -> None:
    routes = stack.eu_app.routes.routes
    document = openapi_document(stack.eu_app, workspace=False)
    operations = _operations(document)
    for route in routes:
        assert operations[(route.method, route.template)]["operationId"] == route.operation
    public = {("GET", "/healthz"), ("GET", "/openapi.json")}
    assert set(operations) == {(r.method, r.template) for r in routes} | public
    for key in public:
        assert operations[key]["security"] == []


def test_openai_operations_are_openais_own(stack: Stack) -> None:
    subset = load_subset()
    operations = _operations(openapi_document(stack.eu_app, workspace=False))
    chat = operations[("POST", "/v1/chat/completions")]
    assert chat["requestBody"] == subset["operations"]["createChatCompletion"]["operation"][
        "requestBody"]
    answers = chat["responses"]["200"]["content"]
    assert answers["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateChatCompletionResponse"}
    assert "text/event-stream" in answers
    assert "x-oaiMeta" not in json.dumps(subset)  # documentation-site examples left out
    source = subset["source"]
    assert source["repository"] == "openai/openai-openapi"
    assert len(source["commit"]) == 40 and source["version"]


def test_the_region_serves_a_route_with_an_unknown_operation_never() -> None:
    table = list(documented_routes().routes)
    unknown = Route("GET", "/v1/widgets", _handler, "listWidgets")
    with pytest.raises(UnknownOperation, match="listWidgets"):
        openapi_document([*table, unknown])
    # OpenAI's operation at another path than OpenAI's is a mistake too.
    misplaced = Route("GET", "/v1/batch", _handler, "listBatches")
    with pytest.raises(UnknownOperation, match="listBatches"):
        openapi_document([*table, misplaced])


def test_a_route_of_a_vendored_operation_is_documented_as_it_lands() -> None:
    table = [r for r in documented_routes().routes if not r.template.startswith("/v1/batches")]
    before = openapi_document(table, workspace=False)
    assert "/v1/batches" not in before["paths"]
    assert "Batch" not in before["components"]["schemas"]  # only what served routes reach
    after = openapi_document([*table, Route("POST", "/v1/batches", _handler, "createBatch")],
                             workspace=False)
    operation = after["paths"]["/v1/batches"]["post"]
    assert operation["operationId"] == "createBatch"
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Batch"}
    assert "Batch" in after["components"]["schemas"]


def test_the_subset_holds_every_operation_being_built() -> None:
    subset = load_subset()
    assert set(subset["operations"]) == set(OPENAI_OPERATIONS)
    for name in ("createUpload", "addUploadPart", "completeUpload", "cancelUpload",
                 "createBatch", "listBatches", "retrieveBatch", "cancelBatch",
                 "listInputItems", "cancelResponse", "downloadFile"):
        assert name in subset["operations"]
    assert not set(DOMICILE_OPERATIONS) & set(OPENAI_OPERATIONS)


def test_every_reference_resolves() -> None:
    document = openapi_document(documented_routes())
    refs = set(_refs(document))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/")
        _resolve(document, ref)  # raises KeyError when dangling
    ids = [op["operationId"] for op in _operations(document).values()]
    assert len(ids) == len(set(ids))


def test_errors_are_described_in_openais_shape_beside_each_operation() -> None:
    document = openapi_document(documented_routes(), workspace=False)
    responses = document["components"]["responses"]
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for (method, path), operation in _operations(document).items():
        if not path.startswith("/v1/"):
            continue
        answers = operation["responses"]
        for status in ("400", "401", "403", "404", "429", "500", "503"):
            answer = _resolve(document, answers[status]["$ref"])
            assert answer["content"]["application/json"]["schema"] == error, (method, path)
        assert "x-domicile-region" in answers["200"]["headers"]
    assert "wrong_region" in responses["WrongRegion"]["description"]
    assert "zero_retention" in responses["InvalidRequest"]["description"]
    assert "no_in_region_provider" in responses["Unavailable"]["description"]
    assert "retry-after" in responses["RateLimited"]["headers"]
    headers = document["components"]["headers"]
    assert {"x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-requests"} <= set(headers)
    assert headers["x-request-id"]["required"] is True
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"502", "4XX"} <= set(chat)  # a provider's own refusal passes through


def test_the_workspace_api_is_merged_under_its_prefix() -> None:
    merged = openapi_document(documented_routes())
    workspace = workspace_document()
    for path, item in workspace["paths"].items():
        assert path.startswith(API_PREFIX)
        for method, operation in item.items():
            ours = merged["paths"][path][method]
            assert ours["operationId"] == operation["operationId"]
            assert all(set(requirement) <= {"WorkspaceToken", "WorkspaceSession"}
                       for requirement in ours["security"])
    assert "WorkspaceNewMessage" in merged["components"]["schemas"]
    without = openapi_document(documented_routes(), workspace=False)
    assert not any(path.startswith(API_PREFIX) for path in without["paths"])


def test_extract_subset_keeps_the_closure_of_the_operations_refs_only() -> None:
    spec = {
        "info": {"title": "OpenAI API", "version": "9.9"},
        "tags": [{"name": "Things"}, {"name": "Other"}],
        "paths": {"/things": {"get": {
            "operationId": "listThings", "tags": ["Things"],
            "x-oaiMeta": {"examples": "…"},
            "responses": {"200": {"content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ThingList"}}}}}}},
            "/others": {"get": {"operationId": "listOthers", "responses": {}}}},
        "components": {"schemas": {
            "ThingList": {"properties": {"data": {
                "items": {"$ref": "#/components/schemas/Thing"}}}},
            "Thing": {"properties": {"kind": {"$ref": "#/components/schemas/Kind"}},
                      "x-oaiMeta": {"example": "…"}},
            "Kind": {"type": "string"},
            "Unrelated": {"type": "string"},
            "ErrorResponse": {"type": "object"},
        }},
    }
    subset = extract_subset(spec, {"commit": "c" * 40}, ["listThings"])
    assert set(subset["components"]["schemas"]) == {"ThingList", "Thing", "Kind",
                                                    "ErrorResponse"}
    assert subset["operations"]["listThings"]["path"] == "/things"
    assert "x-oaiMeta" not in json.dumps(subset)
    assert subset["tags"] == [{"name": "Things"}]
    assert subset["source"] == {"commit": "c" * 40, "title": "OpenAI API", "version": "9.9"}
    with pytest.raises(UnknownOperation, match="listNothing"):
        extract_subset(spec, {}, ["listThings", "listNothing"])


def test_the_region_serves_its_document_without_a_key(stack: Stack) -> None:
    http = stack.http()
    answer = http.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-domicile-region"] == "eu"
    assert answer.json() == openapi_document(stack.eu_app, workspace=False)
    # Built once: the same bytes, not made again.
    table: RouteTable = stack.eu_app.routes
    assert served_document(table, workspace=False) is served_document(table, workspace=False)
    head = http.head("/openapi.json")
    assert (head.status_code, head.content) == (200, b"")
    refused = http.post("/openapi.json", content=b"{}")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"
    assert refused.json()["error"]["code"] == "method_not_allowed"


def test_the_served_document_has_the_paths_of_the_docs_copy(stack: Stack) -> None:
    # The stack's region has a content store, the docs' table none: the routes are the same.
    served = httpx.get(stack.eu.url + "/openapi.json", timeout=20).json()
    copy = json.loads(DOCS_COPY.read_text())
    assert set(served["paths"]) == {p for p in copy["paths"] if not p.startswith(API_PREFIX)}


def test_where_openais_spec_is_not_what_its_api_sends_the_document_says_what_is_sent() -> None:
    document = openapi_document(documented_routes(), workspace=False)
    schemas = document["components"]["schemas"]
    vector = schemas["Embedding"]["properties"]["embedding"]["anyOf"]
    assert {"type": "string", **vector[1]} == vector[1] and vector[0]["type"] == "array"
    download = document["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"]
    assert set(download["content"]) == {"application/octet-stream"}
    assert '"nullable"' not in json.dumps(document)  # OpenAPI 3.0's, which 3.1 ignores
    usage = schemas["CreateChatCompletionStreamResponse"]["properties"]["usage"]
    assert {"type": "null"} in usage["anyOf"]
    assert schemas["ListFilesResponse"]["properties"]["first_id"]["type"] == ["string", "null"]
    # OpenAI's discriminators have no mapping: by OpenAPI's rule their values would be schema
    # names, not the `type` sent; left out, the `oneOf` decides.
    assert '"discriminator": {' not in json.dumps(document)
    batch = schemas["Batch"]["properties"]
    assert {"type": "null"} in batch["failed_at"]["anyOf"]
    assert batch["id"] == {"type": "string"}  # required fields are never null
    cancel = document["paths"]["/v1/files/{file_id}"]["delete"]["responses"]
    assert cancel["409"] == {"$ref": "#/components/responses/Conflict"}
