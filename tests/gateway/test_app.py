"""The ASGI app: health, dispatch, the error shape, transparency headers, the app edge."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import openai
import pytest

from domicile.gateway import GatewayApp, create_gateway_app
from domicile.inference.providers import Provider, ProviderResponse
from tests.gateway.conftest import EU_ZERO_KEY, US_KEY, Stack
from tests.gateway.support import (
    DictAuthenticator,
    MemoryUsageSink,
    ServedApp,
    grant,
    make_settings,
    provider,
)

AUTH = {"Authorization": f"Bearer {EU_ZERO_KEY}"}
CHAT = {"model": "dev-echo", "messages": [{"role": "user", "content": "hi"}]}


def test_healthz_needs_no_key_and_names_the_region(stack: Stack) -> None:
    response = stack.http().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "region": "eu"}
    assert response.headers["x-domicile-region"] == "eu"


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "provider"),
    [
        ("GET", "/healthz", {}, None, 200, "none"),
        ("GET", "/v1/models", AUTH, None, 200, "none"),
        ("POST", "/v1/chat/completions", AUTH, CHAT, 200, "eu-dev"),
        ("POST", "/v1/chat/completions", {}, CHAT, 401, "none"),
        ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {US_KEY}"}, CHAT, 403,
         "none"),
        ("POST", "/v1/chat/completions", AUTH, {"messages": []}, 400, "none"),
        ("POST", "/v1/chat/completions", AUTH, {**CHAT, "model": "nope"}, 404, "none"),
        ("POST", "/v1/chat/completions", AUTH, {**CHAT, "model": "dead-model"}, 503, "none"),
        ("GET", "/v1/unknown", AUTH, None, 404, "none"),
        ("GET", "/elsewhere", {}, None, 404, "none"),
    ],
)
def test_every_answer_says_where_it_ran(stack: Stack, method: str, path: str,
                                        headers: dict[str, str], body: Any, status: int,
                                        provider: str) -> None:
    response = stack.http().request(method, path, headers=headers, json=body)
    assert response.status_code == status
    assert response.headers["x-domicile-region"] == "eu"
    assert response.headers["x-domicile-provider"] == provider
    assert response.headers["x-request-id"].startswith("req_")
    if status >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


def test_request_ids_differ(stack: Stack) -> None:
    http = stack.http()
    ids = {http.get("/healthz").headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20


def test_unknown_api_path_is_a_404_in_openai_shape(stack: Stack) -> None:
    response = stack.http().post("/v1/assistants", headers=AUTH, json={})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (POST /v1/assistants)"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_bad_json_is_a_400_invalid_request(stack: Stack) -> None:
    response = stack.http().post("/v1/chat/completions", headers=AUTH, content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_a_json_body_that_is_not_an_object_is_a_400(stack: Stack) -> None:
    response = stack.http().post("/v1/chat/completions", headers=AUTH, content=b"[1, 2]")
    assert response.status_code == 400


def test_missing_model_is_a_400_naming_the_param(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(
            messages=[{"role": "user", "content": "hi"}], model="")
    assert caught.value.param == "model"  # type: ignore[attr-defined]


class Exploding(Provider):
    kind = "exploding"
    supported = frozenset({"chat"})  # type: ignore[assignment]

    async def chat(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        raise RuntimeError("CANARY-in-an-exception-message " + str(parsed["messages"]))


@pytest.fixture
def exploding(stack: Stack, tmp_path: Any) -> Any:
    settings = make_settings(tmp_path, eu=[provider("eu-boom", "dev-echo", ["boom"])], us=[])
    boom = Exploding(settings.regions["eu"].providers[0], "eu")
    app = GatewayApp(settings, "eu", authenticator=DictAuthenticator({EU_ZERO_KEY: grant("k")}),
                     usage_sink=MemoryUsageSink(), providers=[boom])
    served = ServedApp(stack.loop, app)
    yield served
    served.stop()


def test_an_unexpected_error_is_a_500_that_logs_only_its_type(
        exploding: ServedApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = openai.OpenAI(base_url=exploding.url + "/v1", api_key=EU_ZERO_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="boom", messages=[{"role": "user", "content": "CANARY-prompt"}])
    request_id = caught.value.response.headers["x-request-id"]
    assert request_id in caught.value.message
    assert "CANARY" not in caught.value.response.text
    logged = [r for r in caplog.records if r.name == "domicile.gateway"]
    assert any("RuntimeError" in r.getMessage() and request_id in r.getMessage()
               for r in logged)
    assert all("CANARY" not in r.getMessage() and r.exc_info is None for r in caplog.records)


def test_shutdown_flushes_usage_and_mounted_app_gets_other_paths(
        stack: Stack, tmp_path: Any) -> None:
    events: list[str] = []

    async def workspace(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"workspace " + scope["path"].encode()})

    settings = make_settings(tmp_path, eu=[provider("eu-dev", "dev-echo", ["dev-echo"])], us=[])
    sink = MemoryUsageSink()
    app = create_gateway_app(settings, "eu", authenticator=DictAuthenticator(
        {EU_ZERO_KEY: grant("k")}), usage_sink=sink, fallback_app=workspace)
    served = ServedApp(stack.loop, app)
    try:
        with httpx.Client(base_url=served.url) as http:
            page = http.get("/workspace/")
            assert page.text == "workspace /workspace/"
            assert page.headers["x-domicile-region"] == "eu"
            assert http.get("/healthz").json()["region"] == "eu"
            assert http.get("/v1/models").status_code == 401  # /v1 stays the gateway's
            assert http.post("/v1/chat/completions", headers=AUTH, json=CHAT).status_code == 200
        assert events == ["lifespan.startup"]
    finally:
        started = time.monotonic()
        served.stop()
    assert events == ["lifespan.startup", "lifespan.shutdown"]
    assert [r.endpoint for r in sink.records] == ["/v1/chat/completions"]
    assert time.monotonic() - started < 5


def test_a_content_store_of_another_region_is_refused(tmp_path: Any) -> None:
    from tests.gateway.support import MemoryContentStore

    settings = make_settings(tmp_path, eu=[], us=[])
    with pytest.raises(ValueError, match="region us"):
        create_gateway_app(settings, "eu", authenticator=DictAuthenticator(),
                           usage_sink=MemoryUsageSink(),
                           content_store=MemoryContentStore(region="us"))


async def test_without_lifespan_the_first_request_starts_the_gateway(tmp_path: Any) -> None:
    """Harnesses that skip lifespan (httpx's ASGITransport) still get a working gateway."""
    settings = make_settings(tmp_path, eu=[provider("eu-dev", "dev-echo", ["dev-echo"])], us=[])
    sink = MemoryUsageSink()
    app = create_gateway_app(settings, "eu", authenticator=DictAuthenticator(
        {EU_ZERO_KEY: grant("k")}), usage_sink=sink)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://eu") as client:
        response = await client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
    assert response.status_code == 200
    await app.shutdown()
    assert len(sink.records) == 1
