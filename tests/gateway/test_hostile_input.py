"""Hostile input at the gateway's edge: every refusal is a 4xx in OpenAI's shape with the
`x-domicile-*` headers, no log line quotes the request, and usage metadata keeps route
templates only, never a path (G4)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from domicile.gateway.app import UNKNOWN_ROUTE
from domicile.storage.interfaces import UsageRecord
from tests.gateway.conftest import EU_ZERO_KEY, Stack
from tests.gateway.support import grant

CANARY = "HOSTILE-CANARY-7f3a9c"
LIMITED_KEY = "dk-eu-limited000000000000000"

# (path, body): a lone surrogate, a non-finite number or deep nesting where each endpoint
# reads it. Sent raw, since a JSON library would refuse to write most of them.
SURROGATE = f'{CANARY}\\ud800'
BODIES = [
    ("/v1/chat/completions", f'{{"model": "{SURROGATE}", "messages": []}}'),
    ("/v1/chat/completions",
     f'{{"model": "dev-echo", "messages": [{{"role": "user", "content": "{SURROGATE}"}}]}}'),
    ("/v1/chat/completions",
     f'{{"model": "dev-echo", "temperature": NaN, "messages": [{{"role": "user", '
     f'"content": "{CANARY}"}}]}}'),
    ("/v1/embeddings", f'{{"model": "all-minilm-l6-v2", "input": ["{SURROGATE}"]}}'),
    ("/v1/embeddings", f'{{"model": "dev-echo", "input": "{SURROGATE}"}}'),
    ("/v1/responses",
     f'{{"model": "dev-echo", "input": [{{"role": "user", "content": [{{"type": '
     f'"{SURROGATE}", "text": "x"}}]}}]}}'),
    ("/v1/responses", f'{{"model": "dev-echo", "input": "{SURROGATE}"}}'),
    ("/v1/responses", f'{{"model": "dev-echo", "input": "{CANARY}", "temperature": Infinity}}'),
    ("/v1/responses",
     f'{{"model": "dev-echo", "input": "{CANARY}", "temperature": 1e400, '
     f'"metadata": {{"x": -1e999}}}}'),
    ("/v1/images/generations", f'{{"model": "dev-echo", "prompt": "{SURROGATE}"}}'),
    ("/v1/chat/completions", '{"x":' + "[" * 100_000 + "]" * 100_000 + "}"),
]


@pytest.mark.parametrize(("path", "body"), BODIES)
def test_hostile_json_is_a_400_in_openai_shape_and_logs_no_content(
        stack: Stack, caplog: pytest.LogCaptureFixture, path: str, body: str) -> None:
    caplog.set_level(logging.DEBUG)
    response = stack.http().post(path, content=body.encode(), headers={
        "Authorization": f"Bearer {EU_ZERO_KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-domicile-region"] == "eu"
    assert response.headers["x-request-id"].startswith("req_")
    assert CANARY not in response.text
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        assert record.exc_info is None


def _flushed(stack: Stack) -> list[UsageRecord]:
    stack.loop.run(stack.eu_app.usage.flush())
    return list(stack.sink.records)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", f"/v1/files/{CANARY}", 400),
    ("GET", f"/v1/files/{CANARY}/content", 400),
    ("DELETE", f"/v1/files/{CANARY}", 400),
    ("GET", f"/v1/files/file-abc/{CANARY}", 400),
    ("GET", f"/v1/responses/{CANARY}", 400),
    ("POST", f"/v1/{CANARY}", 404),
])
def test_usage_of_a_refused_request_keeps_the_route_not_the_path(
        stack: Stack, method: str, path: str, status: int) -> None:
    response = stack.http().request(method, path,
                                    headers={"Authorization": f"Bearer {EU_ZERO_KEY}"})
    assert response.status_code == status
    (record,) = _flushed(stack)
    assert record.endpoint in ("/v1/files/{file_id}", "/v1/files/{file_id}/content",
                               "/v1/responses/{response_id}", UNKNOWN_ROUTE)
    for value in dataclasses.astuple(record):
        assert CANARY not in str(value)


def test_a_rate_limited_request_keeps_no_path_either(stack: Stack) -> None:
    stack.auth.keys[LIMITED_KEY] = grant("key_limited", rpm=1)
    http = stack.http()
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    assert http.get("/v1/models", headers=headers).status_code == 200
    limited = http.post(f"/v1/{CANARY}/chat", headers=headers)
    assert limited.status_code == 429
    records = _flushed(stack)
    assert [r.endpoint for r in records] == ["/v1/models", UNKNOWN_ROUTE]
    assert all(CANARY not in str(dataclasses.astuple(r)) for r in records)


@pytest.mark.parametrize(("path", "template"), [
    ("/v1/files/file-1", "/v1/files/{file_id}"),
    ("/v1/files/file-1/content", "/v1/files/{file_id}/content"),
    ("/v1/files/file-1/other", UNKNOWN_ROUTE),
    ("/v1/responses/resp_1", "/v1/responses/{response_id}"),
    ("/v1/responses/resp_1/x/y", UNKNOWN_ROUTE),
    ("/v1/anything", UNKNOWN_ROUTE),
])
def test_route_templates(stack: Stack, path: str, template: str) -> None:
    assert stack.eu_app.routes.template_of(path) == template
