"""What the front doors' OpenAPI documents share (the workspace's and the admin API's, each
made from its own route table): the one error shape, JSON bodies from pydantic models, path
parameters and the document's frame."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["ERROR_SCHEMA", "document", "error_response", "json_body", "path_parameters"]

# `{"error": {"message", "type", "param", "code"}}`: every error of every front door.
ERROR_SCHEMA: dict[str, Any] = {
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


def error_response(description: str) -> dict[str, Any]:
    """A response in the one error shape (`#/components/schemas/Error`)."""
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}


def json_body(model: type[BaseModel], schemas: dict[str, Any], *,
              required: bool) -> dict[str, Any]:
    """A JSON request body of `model`, its schema added to `schemas` under the model's name."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    schemas[model.__name__] = schema
    return {"required": required, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}


def path_parameters(path: str, schema: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `{name}` parameters of a path template, each of `schema`."""
    return [{"name": name, "in": "path", "required": True, "schema": dict(schema)}
            for name in re.findall(r"{(\w+)}", path)]


def document(*, title: str, version: str, description: str, paths: dict[str, Any],
             schemas: dict[str, Any], security_schemes: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3.1 document; `schemas` gets the error shape and is sorted by name."""
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": dict(sorted({"Error": ERROR_SCHEMA, **schemas}.items())),
            "securitySchemes": security_schemes,
        },
    }
