"""The OpenAPI document of the workspace's JSON API, made from the route table the router
serves (`app.ROUTES`), so the two cannot drift apart. Served at
`/workspace/api/openapi.json`; a copy is kept in `docs/workspace-openapi.json` (a test checks
that it matches)."""

from __future__ import annotations

from typing import Any

from domicile.web.openapi import document, error_response, json_body, path_parameters

from .app import API_PREFIX, ROUTES, ApiRoute

__all__ = ["openapi_document"]

_JSON_OBJECT = {"type": "object", "additionalProperties": True}


def _operation(route: ApiRoute, schemas: dict[str, Any]) -> dict[str, Any]:
    success: dict[str, Any] = {"description": "OK" if route.status == 200 else "Created",
                               "content": {"application/json": {"schema": _JSON_OBJECT}}}
    if route.streams:
        success["content"]["text/event-stream"] = {"schema": {
            "type": "string", "description": "`message.created`, `reply.delta`…, "
            "`reply.completed` events; each `data:` is a JSON object with a `type`."}}
    operation: dict[str, Any] = {
        "operationId": route.handler,
        "summary": route.summary,
        "responses": {
            str(route.status): success,
            "default": error_response("An error, in OpenAI's shape."),
        },
    }
    parameters = path_parameters(route.path, {"type": "string"})
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = json_body(route.body, schemas,
                                             required=not route.body_optional)
    if route.upload:
        operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"}}}}}}
    operation["security"] = [] if route.public else [{"token": []}, {"session": []}]
    if route.admin:
        operation["description"] = "Owners and admins only (403 `forbidden` otherwise)."
    return operation


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(API_PREFIX + route.path, {})[route.method.lower()] = _operation(
            route, schemas)
    return document(
        title="Domicile workspace API", version=version,
        description="The chat workspace of one region. Content is stored only in "
        "the workspace's region, sealed under the workspace's key. Another "
        "workspace's object answers 404; a credential of another region 403 "
        "`wrong_region`.",
        paths=paths, schemas=schemas,
        security_schemes={
            "token": {"type": "http", "scheme": "bearer",
                      "description": "A `dw-<region>-…` token (`domicile token create`)."},
            "session": {"type": "apiKey", "in": "cookie", "name": "domicile_session_<region>",
                        "description": "The browser session of `POST /login`; requests "
                        "that change state also send `x-csrf-token`."},
        },
    )

if __name__ == "__main__":  # python -m domicile.workspace_web.openapi > docs/workspace-openapi.json
    import json

    print(json.dumps(openapi_document(), indent=2, ensure_ascii=False))
