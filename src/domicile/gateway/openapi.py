"""The OpenAPI 3.1 document of everything a region serves, made from the gateway's route table
(`GatewayApp.routes`), so it cannot drift from what the gateway dispatches.

- Where a route is OpenAI's (its `operation` is OpenAI's `operationId`), the operation object
  and the schemas it reaches are OpenAI's own, from a trimmed copy of OpenAI's published spec
  shipped beside this module (`openai-subset.json`; `--refresh` rebuilds it, see `main`).
  A few amendments say where Domicile's answer is not what OpenAI's spec claims but what
  OpenAI's API actually sends (`_AMENDMENTS`).
- Domicile's own operations (`/v1/residency`, `/healthz`, `/openapi.json`) and its errors
  (OpenAI's error shape, the codes of `domicile.errors`, the transparency headers) are
  described here, beside OpenAI's.
- The workspace's JSON API (`domicile.workspace_web.openapi`) is merged in under
  `/workspace/api/` when the region serves it.

A route whose operation is neither in the vendored subset nor Domicile's own is an error
(`UnknownOperation`): a new endpoint cannot ship undocumented.

Served at `GET /openapi.json` (no key), built once per app; a copy is kept in
`docs/openapi.json` (a test checks it): `python -m domicile.gateway.openapi > docs/openapi.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import json
import re
import sys
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .http import Exchange, dump_json, refused_unless_get
from .routes import Route, RouteTable

__all__ = [
    "DOMICILE_OPERATIONS",
    "OPENAI_OPERATIONS",
    "SUBSET_PATH",
    "UnknownOperation",
    "documented_routes",
    "extract_subset",
    "load_subset",
    "openapi_document",
    "serve_document",
    "served_document",
]

SUBSET_PATH = Path(__file__).with_name("openai-subset.json")

# The OpenAI operations the vendored subset holds: those Domicile serves, and those being
# built (uploads, batches, responses' input items and cancel), so a route that lands is
# documented the moment it is in the table.
OPENAI_OPERATIONS: tuple[str, ...] = (
    "listModels", "createChatCompletion", "createEmbedding", "createImage",
    "createResponse", "getResponse", "deleteResponse", "listInputItems", "cancelResponse",
    "createFile", "listFiles", "retrieveFile", "deleteFile", "downloadFile",
    "createUpload", "addUploadPart", "completeUpload", "cancelUpload",
    "createBatch", "listBatches", "retrieveBatch", "cancelBatch",
)
# Schemas Domicile's own descriptions use, kept in the subset whatever the operations reach.
_EXTRA_SCHEMAS = ("ErrorResponse",)
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# OpenAI's documentation-site metadata (request examples in six languages): not API contract.
_DROPPED_KEYS = frozenset({"x-oaiMeta"})

# Operations that route a `model` to the region's providers: 404 for a model not offered
# here, 502 for an answer that is not one, the provider's own 4xx passed through.
_ROUTED = frozenset({"createChatCompletion", "createEmbedding", "createImage",
                     "createResponse"})


class UnknownOperation(ValueError):
    """A route whose operation the document cannot describe."""


# -- the vendored subset -------------------------------------------------------------------


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: Mapping[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are supported, not {ref}")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _closure(document: Mapping[str, Any], roots: Iterable[object]) -> set[str]:
    """Every `$ref` reachable from `roots` within `document`."""
    seen: set[str] = set()
    todo = [ref for root in roots for ref in _refs(root)]
    while todo:
        ref = todo.pop()
        if ref not in seen:
            seen.add(ref)
            todo.extend(_refs(_resolve(document, ref)))
    return seen


def _trimmed(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _trimmed(v) for k, v in node.items() if k not in _DROPPED_KEYS}
    if isinstance(node, list):
        return [_trimmed(item) for item in node]
    return node


def _components_of(document: Mapping[str, Any], refs: Iterable[str]) -> dict[str, Any]:
    components: dict[str, dict[str, Any]] = {}
    for ref in sorted(refs):
        _, _, kind, name = ref.split("/", 3)
        components.setdefault(kind, {})[name] = _resolve(document, ref)
    return {kind: dict(sorted(items.items())) for kind, items in sorted(components.items())}


def extract_subset(spec: Mapping[str, Any], source: Mapping[str, str],
                   operations: Sequence[str] = OPENAI_OPERATIONS) -> dict[str, Any]:
    """The operations named, each with its method and path, and the transitive closure of
    their `$ref`s, out of OpenAI's whole spec; documentation-site metadata dropped."""
    found: dict[str, dict[str, Any]] = {}
    for path, item in spec["paths"].items():
        shared = item.get("parameters", [])
        for method in _METHODS:
            operation = item.get(method)
            if isinstance(operation, dict) and operation.get("operationId") in operations:
                operation = dict(operation)
                if shared:  # path-level parameters, made the operation's own
                    operation["parameters"] = [*shared, *operation.get("parameters", [])]
                found[operation["operationId"]] = {"method": method, "path": path,
                                                   "operation": operation}
    missing = [name for name in operations if name not in found]
    if missing:
        raise UnknownOperation(f"not in OpenAI's spec: {', '.join(missing)}")
    roots: list[object] = [entry["operation"] for entry in found.values()]
    roots += [{"$ref": f"#/components/schemas/{name}"} for name in _EXTRA_SCHEMAS]
    components = _components_of(spec, _closure(spec, roots))
    tags = {tag for entry in found.values() for tag in entry["operation"].get("tags", ())}
    subset: dict[str, Any] = _trimmed({
        "source": {**source, "title": spec["info"]["title"],
                   "version": spec["info"]["version"]},
        "tags": [tag for tag in spec.get("tags", []) if tag.get("name") in tags],
        "operations": {name: found[name] for name in operations},
        "components": components,
    })
    return subset


@functools.cache
def load_subset() -> dict[str, Any]:
    """The vendored subset (read once; callers copy what they change)."""
    loaded: dict[str, Any] = json.loads(SUBSET_PATH.read_text(encoding="utf-8"))
    return loaded


# -- Domicile's own parts ------------------------------------------------------------------

_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}

_HEADERS: dict[str, Any] = {
    "x-domicile-region": {"required": True, "schema": {"type": "string"}, "description":
                          "The region that processed the request."},
    "x-domicile-provider": {"required": True, "schema": {"type": "string"}, "description":
                            "The provider that served it; `none` when no provider ran."},
    "x-request-id": {"required": True, "schema": {"type": "string"}, "description":
                     "The request's id, also in usage records and error logs."},
    "openai-processing-ms": {"required": True, "schema": {"type": "string", "pattern":
                                                           "^[0-9]+$"}, "description":
                             "Milliseconds until the answer began (a stream's first byte)."},
    "x-client-request-id": {"schema": {"type": "string"}, "description":
                            "The request's own `x-client-request-id`, echoed when it is a "
                            "plausible id; never logged nor kept."},
    **{f"x-ratelimit-{part}-{what}": {"schema": {"type": "string"}, "description":
                                      f"The key's {what} per minute: {meaning}. Sent on "
                                      "every answer to a key with limits; absent without."}
       for what in ("requests", "tokens")
       for part, meaning in (("limit", "its limit"), ("remaining", "what is left now"),
                             ("reset", "when the window resets (`1s`, `250ms`)"))},
}
_RETRY_AFTER = {"schema": {"type": "integer", "minimum": 1},
                "description": "Seconds to wait before trying again."}


def _error(description: str, **headers: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _ERROR_CONTENT}
    if headers:
        answer["headers"] = headers
    return answer


# The error answers, by the name operations refer to them with. The codes are those of
# `domicile.errors`; docs/API.md says when each is sent.
_ERROR_RESPONSES: dict[str, dict[str, Any]] = {
    "InvalidRequest": _error(
        "`invalid_request`: a body or parameter the endpoint cannot take (`param` names it "
        "where it can); `zero_retention`: a feature that keeps content, asked by a project "
        "with zero data retention."),
    "InvalidApiKey": _error("`invalid_api_key`: a missing, unknown or revoked key."),
    "WrongRegion": _error(
        "`wrong_region`: a key of another region, refused before its body is read; the "
        "message names that region's base URL."),
    "NotFound": _error("`model_not_found`: a model this region does not offer (for this "
                       "endpoint); `not_found`: no such object for this project."),
    "Conflict": _error("`conflict`: the request conflicts with its object's state now "
                       "(cancelling a finished batch, completing a cancelled upload)."),
    "Gone": _error("`tenant_erased`: the project's data in this region was erased."),
    "RequestTimeout": _error("`request_timeout`: an upload that sent no bytes for 60 s; "
                             "nothing of it is stored."),
    "RequestTooLarge": _error("`request_too_large`: a JSON body over 32 MiB, an upload over "
                              "512 MiB."),
    "RateLimited": _error(
        "`rate_limit_exceeded`: over the key's requests (`type: requests`) or tokens "
        "(`type: tokens`) per minute.", **{"retry-after": _RETRY_AFTER}),
    "ProviderRefusal": _error(
        "The provider's own refusal of the request, passed through as it sent it, with its "
        "`retry-after` and `x-ratelimit-*` headers."),
    "ServerError": _error("`internal_error`: an unexpected fault (its log line holds its type "
                          "and the request id, nothing else)."),
    "UpstreamError": _error(
        "`upstream_error`: the provider answered something that is not an answer; not "
        "retried elsewhere, since it did answer."),
    "Unavailable": _error(
        "`no_in_region_provider`: no provider of this region could serve (never another "
        "region: G2); `region_busy`: every provider's connections are in use; "
        "`store_unavailable`: the region's store cannot be reached now, nothing was changed; "
        "`content_store_unavailable`: this server keeps no content.",
        **{"retry-after": _RETRY_AFTER}),
    "InsufficientStorage": _error("`insufficient_storage`: the region's disk is full; "
                                  "nothing new was stored."),
}

_RESIDENCY = {
    "type": "object",
    "description": "Where the calling project's content may be processed and kept.",
    "required": ["project", "org", "region", "processing_region", "retention",
                 "per_request_residency", "endpoints", "providers"],
    "additionalProperties": False,
    "properties": {
        "project": {"type": "string"},
        "org": {"type": "string"},
        "region": {"type": "string", "description": "The project's region (`global` for a "
                   "project with per-request residency)."},
        "processing_region": {"type": "string", "description": "The region answering."},
        "retention": {"type": "string", "enum": ["zero", "regional"]},
        "per_request_residency": {"type": "boolean"},
        "endpoints": {"type": "array", "items": {"type": "string"},
                      "description": "The endpoints this project may call here."},
        "providers": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "kind", "region", "models", "capabilities"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "kind": {"type": "string"},
                "region": {"type": "string"},
                "models": {"type": "array", "items": {"type": "string"}},
                "capabilities": {"type": "array", "items": {
                    "type": "string", "enum": ["chat", "embeddings", "vision", "images"]}},
            },
        }, "description": "The providers that may process its data, with their region."},
    },
}
_HEALTH = {
    "type": "object",
    "required": ["status", "region"],
    "additionalProperties": False,
    "properties": {"status": {"type": "string", "enum": ["ok"]},
                   "region": {"type": "string"}},
}
_DOMICILE_SCHEMAS = {"DomicileResidency": _RESIDENCY, "DomicileHealth": _HEALTH}


def _json_ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Domicile's own operations that are routes of the table.
DOMICILE_OPERATIONS: dict[str, dict[str, Any]] = {
    "getResidency": {
        "tags": ["Domicile"],
        "summary": "Where the calling project's content may be processed and kept: its "
                   "region, retention, eligible endpoints and the providers (with their "
                   "regions) that may process it.",
        "responses": {"200": _json_ok({"$ref": "#/components/schemas/DomicileResidency"})},
    },
}
# Outside `/v1`, answered by the app itself, without a key.
_PUBLIC_PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {"get": {
        "operationId": "getHealth", "tags": ["Domicile"], "security": [],
        "summary": "The region is up.",
        "responses": {"200": _json_ok({"$ref": "#/components/schemas/DomicileHealth"})},
    }},
    "/openapi.json": {"get": {
        "operationId": "getOpenApiDocument", "tags": ["Domicile"], "security": [],
        "summary": "This document: everything the region serves.",
        "responses": {"200": _json_ok({"type": "object"}, "An OpenAPI 3.1 document.")},
    }},
}

# Where Domicile's answer is what OpenAI's API sends rather than what its spec says.
_EMBEDDING_VECTOR = {
    "anyOf": [
        {"type": "array", "items": {"type": "number"}},
        {"type": "string", "contentEncoding": "base64", "description":
         "With `encoding_format: base64` (the `openai` SDK's default): the little-endian "
         "float32 vector, base64-encoded."},
    ],
    "description": "The embedding vector: a list of floats, or with `encoding_format: "
                   "base64` a base64 string of little-endian float32 values.",
}


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true`, which OpenAI's 3.1 spec still uses in places (and 3.1
    ignores), as JSON Schema's null: OpenAI sends those nulls (`usage` on every chunk but the
    last of a stream with `include_usage`)."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.get("nullable") is True:  # (a property named `nullable` is a dict: kept)
        del node["nullable"]
        notes = {key: node.pop(key) for key in ("description", "title", "default")
                 if key in node}
        return {"anyOf": [node, {"type": "null"}], **notes}
    return node


def _without_implicit_discriminators(node: Any) -> Any:
    """OpenAI's discriminators name the `type` property but give no `mapping`, so by
    OpenAPI's rule each value would have to be a schema's name (`InputMessageResource`), not
    the `type` sent (`message`, which two of the variants share). A discriminator is a hint:
    left out, the `oneOf`/`anyOf` it sat on still decides."""
    if isinstance(node, list):
        return [_without_implicit_discriminators(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: _without_implicit_discriminators(value) for key, value in node.items()
            if not (key == "discriminator" and isinstance(value, dict)
                    and "mapping" not in value)}


def _amend(document: dict[str, Any]) -> None:
    for part in ("paths", "components"):
        document[part] = _without_implicit_discriminators(_nullable(document[part]))
    schemas = document["components"]["schemas"]
    batch = schemas.get("Batch")
    if batch is not None:  # its optional fields are null until set (OpenAI's own example)
        for name, field in batch["properties"].items():
            if name not in batch["required"]:
                batch["properties"][name] = {"anyOf": [field, {"type": "null"}]}
    response = schemas.get("Response")
    if response is not None:  # no usage yet in a run's first events: null, as OpenAI sends
        for part in response.get("allOf", ()):
            usage = part.get("properties", {}).get("usage")
            if usage is not None:
                part["properties"]["usage"] = {"anyOf": [usage, {"type": "null"}]}
    if "Embedding" in schemas:  # OpenAI's spec knows only the float list
        schemas["Embedding"]["properties"]["embedding"] = _EMBEDDING_VECTOR
    for schema in schemas.values():  # a list's ends: null when it is empty, as OpenAI sends
        ends = schema.get("properties", {})
        for end in ("first_id", "last_id"):
            if ends.get(end, {}).get("type") == "string":
                ends[end] = {**ends[end], "type": ["string", "null"]}
    replay = document["paths"].get("/v1/responses/{response_id}", {}).get("get")
    if replay is not None:  # `?stream=true` replays a finished response's events
        replay["responses"]["200"]["content"]["text/event-stream"] = {
            "schema": {"$ref": "#/components/schemas/ResponseStreamEvent"}}
    for item in document["paths"].values():
        for operation in item.values():
            for answer in operation.get("responses", {}).values():
                stream = answer.get("content", {}).get("text/event-stream")
                if stream is not None and "schema" in stream:
                    stream["itemSchema"] = _sse_event(stream.pop("schema"))
    download = document["paths"].get("/v1/files/{file_id}/content", {}).get("get")
    if download is not None:  # the file's bytes, not a JSON string
        download["responses"]["200"]["content"] = {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _sse_event(data: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event whose `data` is JSON of `data`'s schema (OpenAPI 3.2's
    `itemSchema`: OpenAI's spec gives the data's schema as the stream's)."""
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": data}}}


_AMENDMENTS = (_amend,)


# -- the document ----------------------------------------------------------------------------


def _route_table(source: object) -> Sequence[Route]:
    table: Any = getattr(source, "routes", source)  # a GatewayApp, a RouteTable, or routes
    if isinstance(table, RouteTable):
        return table.routes
    routes: list[Route] = list(table)
    if not all(isinstance(route, Route) for route in routes):
        raise TypeError("expected a GatewayApp, a RouteTable or Routes")
    return routes


def _parameters(route: Route) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.template)]


# Operations whose body is streamed into the store, with an idle bound.
_STREAMED_UPLOADS = frozenset({"createFile", "addUploadPart"})


def _errors(route: Route) -> dict[str, str]:
    """The error answers a route may give, status -> `_ERROR_RESPONSES` name."""
    # 404 everywhere: an id in the path or the body (`input_file_id`, `previous_response_id`)
    # or a model may name nothing this project has here.
    errors = {"400": "InvalidRequest", "401": "InvalidApiKey", "403": "WrongRegion",
              "404": "NotFound", "429": "RateLimited", "500": "ServerError",
              "503": "Unavailable"}
    routed = route.operation in _ROUTED
    if route.method in ("POST", "DELETE"):  # cancelling what has finished, and the like
        errors["409"] = "Conflict"
    if route.method in ("POST", "PUT", "PATCH"):
        errors["413"] = "RequestTooLarge"
        errors["410"] = "Gone"
        errors["507"] = "InsufficientStorage"
    if route.operation in _STREAMED_UPLOADS:
        errors["408"] = "RequestTimeout"
    if routed:
        errors["502"] = "UpstreamError"
        errors["4XX"] = "ProviderRefusal"
    return dict(sorted(errors.items()))


def _with_headers(response: dict[str, Any]) -> dict[str, Any]:
    headers = {name: {"$ref": f"#/components/headers/{name}"} for name in _HEADERS}
    return {**response, "headers": {**response.get("headers", {}), **headers}}


def _operation(route: Route, subset: Mapping[str, Any]) -> dict[str, Any]:
    known = subset["operations"].get(route.operation)
    operation: dict[str, Any]
    if known is not None:
        if (known["method"].upper(), "/v1" + known["path"]) != (route.method, route.template):
            raise UnknownOperation(
                f"{route.method} {route.template} claims {route.operation}, which OpenAI "
                f"serves at {known['method'].upper()} /v1{known['path']}")
        operation = copy.deepcopy(known["operation"])
    elif route.operation in DOMICILE_OPERATIONS:
        operation = {"operationId": route.operation,
                     **copy.deepcopy(DOMICILE_OPERATIONS[route.operation])}
        if route.has_params:
            operation["parameters"] = _parameters(route)
    else:
        raise UnknownOperation(
            f"{route.method} {route.template}: operation {route.operation!r} is neither in "
            f"the vendored OpenAI subset ({SUBSET_PATH.name}; add it to OPENAI_OPERATIONS and "
            "refresh) nor one of Domicile's own (DOMICILE_OPERATIONS)")
    responses = {status: answer for status, answer in operation["responses"].items()
                 if status.startswith("2")}  # OpenAI's 429 is replaced by Domicile's
    for status, name in _errors(route).items():
        responses[status] = {"$ref": f"#/components/responses/{name}"}
    operation["responses"] = {status: _with_headers(answer) if "$ref" not in answer else answer
                              for status, answer in responses.items()}
    if route.retained is not None:
        operation["description"] = (
            operation.get("description", "") + "\n\nKeeps content: regional retention only "
            "(400 `zero_retention` for a zero-retention project).").lstrip()
    return operation


def _workspace_document() -> dict[str, Any]:
    # Imported here: the workspace is a front door of its own, merged in only by the region's
    # document.
    from domicile.workspace_web.openapi import openapi_document as workspace_openapi

    return workspace_openapi()


_SECURITY_RENAMES = {"token": "WorkspaceToken", "session": "WorkspaceSession"}


def _merge_workspace(document: dict[str, Any], workspace: Mapping[str, Any]) -> None:
    """The workspace's paths, schemas and credentials, renamed where they would be ambiguous:
    its `Error` is OpenAI's `ErrorResponse`, its other schemas are prefixed `Workspace`."""
    names = {name: "ErrorResponse" if name == "Error" else
             name if name.startswith("Workspace") else f"Workspace{name}"
             for name in workspace["components"]["schemas"]}
    text = json.dumps(workspace["paths"])
    for old, new in names.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    paths = json.loads(text)
    for item in paths.values():
        for operation in item.values():
            operation.setdefault("tags", ["Workspace"])
            operation["security"] = [{_SECURITY_RENAMES[name]: scopes
                                      for name, scopes in requirement.items()}
                                     for requirement in operation.get("security", [])]
    clash = set(paths) & set(document["paths"])
    if clash:
        raise UnknownOperation(f"the workspace and the gateway both document {sorted(clash)}")
    document["paths"].update(paths)
    schemas = document["components"]["schemas"]
    for old, new in names.items():
        if new == "ErrorResponse":
            continue
        if new in schemas:
            raise UnknownOperation(f"two schemas named {new}")
        schemas[new] = workspace["components"]["schemas"][old]
    for old, scheme in workspace["components"]["securitySchemes"].items():
        document["components"]["securitySchemes"][_SECURITY_RENAMES[old]] = scheme


def _check_unique_operation_ids(document: Mapping[str, Any]) -> None:
    seen: dict[str, str] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            previous = seen.setdefault(operation["operationId"], where)
            if previous != where:
                raise UnknownOperation(f"operationId {operation['operationId']} is both "
                                       f"{previous} and {where}")


_DESCRIPTION = """\
Everything one region of Domicile serves: OpenAI's API (OpenAI's own operation objects and \
schemas, from OpenAI's published spec), Domicile's own endpoints and, under \
`/workspace/api/`, the chat workspace's JSON API. Paths are relative to the region's \
`public_url`.

Every answer to `/v1/...`, errors included, carries `x-domicile-region`, \
`x-domicile-provider` and `x-request-id`. Errors are in OpenAI's shape, \
`{"error": {"message", "type", "param", "code"}}`. A known path asked with another method is \
a 405 `method_not_allowed` with an `allow` header; an unknown path a 404. The region's HTTP \
server may answer any request 400 (not HTTP/1.1), 408 `request_timeout`, 431 \
`request_header_fields_too_large` or 503 `server_busy` before it reaches an operation."""


def openapi_document(app_or_routes: object, *, workspace: bool = True) -> dict[str, Any]:
    """The document of `app_or_routes` (a `GatewayApp`, its `RouteTable`, or `Route`s), with
    the workspace's API when `workspace`. Raises `UnknownOperation` for a route it cannot
    describe."""
    subset = load_subset()
    paths: dict[str, dict[str, Any]] = {}
    for route in _route_table(app_or_routes):
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route, subset)
    for path, item in _PUBLIC_PATHS.items():
        paths[path] = {method: {**operation, "responses": {
            status: _with_headers(answer) for status, answer in operation["responses"].items()}}
            for method, operation in item.items()}
    own: dict[str, Any] = {
        "schemas": _DOMICILE_SCHEMAS,
        "responses": _ERROR_RESPONSES,
        "headers": _HEADERS,
    }
    roots = [paths, own]
    # Only what the served operations reach: a schema of an endpoint not served is not listed.
    reached = _closure({"components": {**subset["components"], **{
        kind: {**subset["components"].get(kind, {}), **items} for kind, items in own.items()}}},
        roots)
    components = _components_of({"components": subset["components"]},
                                {ref for ref in reached if _in(subset["components"], ref)})
    for kind, items in own.items():
        clash = set(items) & set(components.get(kind, {}))
        if clash:
            raise UnknownOperation(f"Domicile's {kind} {sorted(clash)} shadow OpenAI's")
        components[kind] = dict(sorted({**components.get(kind, {}), **items}.items()))
    components["securitySchemes"] = {"ApiKeyAuth": {
        "type": "http", "scheme": "bearer",
        "description": "A project key, `dk-<region>-…` (`domicile key create`)."}}
    tags = [*subset["tags"], {"name": "Domicile", "description": "Domicile's own endpoints."}]
    document: dict[str, Any] = copy.deepcopy({
        "openapi": "3.1.0",
        "info": {
            "title": "Domicile region API",
            "version": "0.1.0",
            "description": _DESCRIPTION,
            "x-openai-spec": subset["source"],
        },
        "servers": [{"url": "/", "description": "The region's `public_url`."}],
        "security": [{"ApiKeyAuth": []}],
        "tags": tags,
        "paths": paths,
        "components": components,
    })
    for amend in _AMENDMENTS:
        amend(document)
    if workspace:
        document["tags"].append({"name": "Workspace",
                                 "description": "The chat workspace's JSON API."})
        _merge_workspace(document, _workspace_document())
    document["components"] = {kind: dict(sorted(items.items()))
                              for kind, items in sorted(document["components"].items())}
    _check_unique_operation_ids(document)
    return document


def _in(components: Mapping[str, Any], ref: str) -> bool:
    _, _, kind, name = ref.split("/", 3)
    return name in components.get(kind, {})


_served: weakref.WeakKeyDictionary[RouteTable, dict[bool, bytes]] = (
    weakref.WeakKeyDictionary())


def served_document(routes: RouteTable, *, workspace: bool) -> bytes:
    """The document as `GET /openapi.json` answers it: built on first use, then kept for the
    life of the route table."""
    built = _served.setdefault(routes, {})
    if workspace not in built:
        built[workspace] = dump_json(openapi_document(routes, workspace=workspace))
    return built[workspace]


async def serve_document(call: Exchange, routes: RouteTable, *, workspace: bool) -> None:
    """`GET /openapi.json`: no key (the document is public); another method is a 405."""
    if await refused_unless_get(call):
        return
    body = _served.get(routes, {}).get(workspace)
    if body is None:  # the first time: some 100s of ms of work, off the event loop
        body = await asyncio.to_thread(served_document, routes, workspace=workspace)
    await call.respond(200, body)


# -- the document without a server -------------------------------------------------------------


class _NoKeys:
    def authenticate_api_key(self, secret: str) -> None:
        return None


class _NoUsage:
    def write_usage(self, records: object) -> None:
        """Nothing is served, nothing recorded."""


def documented_routes() -> RouteTable:
    """The route table of a gateway as `domicile serve` builds it (the routes do not depend on
    a region's providers), for the copy in docs/ and for tools."""
    from domicile.config import parse_settings

    from .app import GatewayApp

    region = {"display_name": "Docs", "listen": "127.0.0.1:1",
              "public_url": "http://127.0.0.1:1", "database_url": "sqlite:///docs.db",
              "blob_url": "file://blobs", "key_provider": {"kind": "local", "path": "kek.key"}}
    settings = parse_settings(
        {"directory": {"database_url": "sqlite:///directory.db"}, "regions": {"docs": region}},
        config_path=Path("/nonexistent/domicile.toml"), check_files=False)
    return GatewayApp(settings, "docs", authenticator=_NoKeys(), usage_sink=_NoUsage()).routes


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m domicile.gateway.openapi > docs/openapi.json` prints the document;
    `--refresh SPEC --commit SHA` rebuilds the vendored subset from OpenAI's whole spec (the
    `openapi.json` of github.com/openai/openai-openapi at that commit)."""
    parser = argparse.ArgumentParser(prog="python -m domicile.gateway.openapi")
    parser.add_argument("--refresh", metavar="SPEC", type=Path,
                        help="OpenAI's openapi.json, to extract the subset from")
    parser.add_argument("--commit", help="the openai/openai-openapi commit SPEC is from")
    parser.add_argument("--committed-at", default="", help="that commit's date")
    parser.add_argument("--no-workspace", action="store_true",
                        help="leave the workspace's API out")
    args = parser.parse_args(argv)
    if args.refresh is not None:
        if not args.commit:
            parser.error("--refresh needs --commit (the spec's provenance is recorded)")
        spec = json.loads(args.refresh.read_text(encoding="utf-8"))
        subset = extract_subset(spec, {"repository": "openai/openai-openapi",
                                       "path": "openapi.json", "commit": args.commit,
                                       "committed_at": args.committed_at})
        SUBSET_PATH.write_text(json.dumps(subset, indent=1, ensure_ascii=False) + "\n",
                               encoding="utf-8")
        print(f"wrote {SUBSET_PATH} ({len(subset['operations'])} operations, "
              f"{sum(len(v) for v in subset['components'].values())} components)",
              file=sys.stderr)
        return 0
    document = openapi_document(documented_routes(), workspace=not args.no_workspace)
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
