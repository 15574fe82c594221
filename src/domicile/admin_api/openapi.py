"""The OpenAPI 3.1 document of the admin API, made from the route table the router serves
(`routes.ROUTES`), so the two cannot drift apart. Served at `/admin/v1/openapi.json`; a copy
is kept in `docs/admin-openapi.json` (a test checks that it matches)."""

from __future__ import annotations

from typing import Any

from domicile.web.openapi import document, error_response, json_body, path_parameters

from .routes import ADMIN_PREFIX, ROUTES, AdminRoute

__all__ = ["openapi_document"]

_SCHEMAS_BY_MEDIA_TYPE: dict[str, dict[str, Any]] = {
    "application/json": {"type": "object", "additionalProperties": True},
    "text/markdown": {"type": "string"},
    "application/jsonl": {"type": "string", "description": "One JSON object a line: chain, "
                          "seq, at, actor, action, target, details, prev_hash, hash."},
    "application/zip": {"type": "string", "format": "binary"},
}


def _operation(route: AdminRoute, schemas: dict[str, Any]) -> dict[str, Any]:
    success = {"description": "Created" if route.status == 201 else "OK",
               "content": {media: {"schema": _SCHEMAS_BY_MEDIA_TYPE[media]}
                           for media in route.media_types}}
    responses: dict[str, Any] = {str(route.status): success}
    if not route.public:
        responses["401"] = error_response("No admin key, or an unknown or revoked one "
                                  "(`invalid_api_key`).")
    responses["default"] = error_response("An error, in the one shape (`error.code` says which).")
    operation: dict[str, Any] = {"operationId": route.handler, "summary": route.summary,
                                 "responses": responses}
    parameters = path_parameters(route.path, {"type": "string", "minLength": 1})
    for param in route.query:
        schema: dict[str, Any] = {"type": "string"}
        if param.choices:
            schema["enum"] = list(param.choices)
        parameters.append({"name": param.name, "in": "query", "required": False,
                           "description": param.description, "schema": schema})
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = json_body(route.body, schemas,
                                             required=not route.body_optional)
    operation["security"] = [] if route.public else [{"adminKey": []}]
    notes = []
    if route.audited:
        notes.append("Audited: the entry names the admin key's id as its actor.")
    if route.immutable_region:
        notes.append(f"A `region` in the body answers 400 `region_immutable`: a "
                     f"{route.immutable_region}'s region is fixed at its creation (G1).")
    if notes:
        operation["description"] = " ".join(notes)
    return operation


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(ADMIN_PREFIX + route.path, {})[route.method.lower()] = _operation(
            route, schemas)
    return document(
        title="Domicile admin API", version=version,
        description="Everything the `domicile` command does to orgs, projects, "
        "keys, workspaces, members, consent, usage, the audit log, residency, export "
        "and erasure, for automation. Served at every region's address; the "
        "directory is global. Every change is audited with the admin key's id as "
        "its actor. A project's or workspace's region is fixed at creation: a "
        "request that tries to change it answers 400 `region_immutable`.",
        paths=paths, schemas=schemas,
        security_schemes={
            "adminKey": {"type": "http", "scheme": "bearer",
                         "description": "A `da-…` admin key (`domicile admin-key create`)."},
        },
    )

if __name__ == "__main__":  # python -m domicile.admin_api.openapi > docs/admin-openapi.json
    import json

    print(json.dumps(openapi_document(), indent=2, ensure_ascii=False))
