"""The OpenAPI document of the workspace's JSON API, made from the route table the router
serves (`app.ROUTES`), so the two cannot drift apart. Served at
`/workspace/api/openapi.json`; a copy is kept in `docs/workspace-openapi.json` (a test checks
that it matches)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from .app import API_PREFIX, ROUTES, ApiRoute

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        },
    }},
}
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
            "default": {"description": "An error, in OpenAI's shape.",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}}}},
        },
    }
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)}", route.path)]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        schemas[route.body.__name__] = _schema(route.body)
        operation["requestBody"] = {"required": not route.body_optional, "content": {
            "application/json": {
                "schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}}}
    if route.upload:
        operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"}}}}}}
    operation["security"] = [] if route.public else [{"token": []}, {"session": []}]
    if route.admin:
        operation["description"] = "Owners and admins only (403 `forbidden` otherwise)."
    return operation


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(API_PREFIX + route.path, {})[route.method.lower()] = _operation(
            route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Domicile workspace API", "version": version,
                 "description": "The chat workspace of one region. Content is stored only in "
                 "the workspace's region, sealed under the workspace's key. Another "
                 "workspace's object answers 404; a credential of another region 403 "
                 "`wrong_region`."},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer",
                          "description": "A `dw-<region>-…` token (`domicile token create`)."},
                "session": {"type": "apiKey", "in": "cookie", "name": "domicile_session_<region>",
                            "description": "The browser session of `POST /login`; requests "
                            "that change state also send `x-csrf-token`."},
            },
        },
    }


if __name__ == "__main__":  # python -m domicile.workspace_web.openapi > docs/workspace-openapi.json
    import json

    print(json.dumps(openapi_document(), indent=2, ensure_ascii=False))
