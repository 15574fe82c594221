"""`GET /metrics` of a region's gateway served by uvicorn on loopback: requests counted by route
template (never the path) and status, latency histograms, tokens and provider errors by
provider, fail-closed refusals by reason; the text parses as Prometheus' format.

The providers are dev-echo (a deterministic stand-in, not a model) behind a provider whose
port is closed (a real connection refusal, failed over)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from domicile.gateway import GatewayApp
from domicile.observability.metrics import (
    FAIL_CLOSED_REASONS,
    PROVIDER_ERROR_REASONS,
    RequestMetrics,
    exposition,
    provider_error_reason,
)
from tests.gateway.support import LoopThread, ServedApp
from tests.observability.conftest import (
    REGIONAL_KEY,
    US_KEY,
    ZERO_KEY,
    gateway,
    observed_settings,
    samples,
    value,
)

CHAT = {"model": "dev-echo", "messages": [{"role": "user", "content": "hello"}]}


def _metrics(client: httpx.Client) -> str:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return answer.text


def test_requests_are_counted_by_route_template_and_status(
        served_gateway: ServedApp) -> None:
    with httpx.Client(base_url=served_gateway.url, timeout=20) as client:
        before = _metrics(client)
        auth = {"authorization": f"Bearer {REGIONAL_KEY}"}
        assert client.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
        assert client.get("/v1/files/file-secret-id-123", headers=auth).status_code == 404
        assert client.get("/v1/no/such/route", headers=auth).status_code == 404
        assert client.get("/v1/models", headers={
            "authorization": "Bearer dk-not-a-key"}).status_code == 401
        assert client.get("/healthz").status_code == 200
        after = _metrics(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "domicile_requests_total"
    assert delta(requests, region="eu", route="/v1/chat/completions", method="POST",
                 status="200") == 1
    assert delta(requests, region="eu", route="/v1/files/{file_id}", method="GET",
                 status="404") == 1
    assert delta(requests, region="eu", route="unmatched", method="GET", status="404") == 1
    assert delta(requests, region="eu", route="/v1/models", method="GET", status="401") == 1
    assert delta(requests, region="eu", route="/healthz", method="GET", status="200") == 1
    assert delta("domicile_request_duration_seconds_count", region="eu",
                 route="/v1/chat/completions") == 1
    assert delta("domicile_request_duration_seconds_bucket", region="eu",
                 route="/v1/chat/completions", le="+Inf") == 1
    # The closed port before dev-echo: one refusal, failed over; tokens by the provider.
    assert delta("domicile_provider_errors_total", region="eu", provider="eu-dead",
                 reason="connection") == 1
    assert delta("domicile_tokens_total", region="eu", provider="eu-dev", kind="prompt") > 0
    assert delta("domicile_tokens_total", region="eu", provider="eu-dev",
                 kind="completion") > 0
    # No label anywhere holds a path with an id.
    assert "file-secret-id-123" not in after and "/v1/no/such" not in after


def test_refusals_that_keep_a_guarantee_are_counted_by_reason(
        served_gateway: ServedApp) -> None:
    with httpx.Client(base_url=served_gateway.url, timeout=20) as client:
        before = _metrics(client)
        stored = client.post("/v1/chat/completions", json={**CHAT, "store": True},
                             headers={"authorization": f"Bearer {ZERO_KEY}"})
        assert stored.json()["error"]["code"] == "zero_retention"
        elsewhere = client.post("/v1/chat/completions", json=CHAT,
                                headers={"authorization": f"Bearer {US_KEY}"})
        assert elsewhere.json()["error"]["code"] == "wrong_region"
        missing = client.post("/v1/chat/completions", json={**CHAT, "model": "nope"},
                              headers={"authorization": f"Bearer {ZERO_KEY}"})
        assert missing.status_code == 404  # not a guarantee: not counted
        after = _metrics(client)
    for reason in ("zero_retention", "wrong_region"):
        assert (value(after, "domicile_fail_closed_total", region="eu", reason=reason)
                - value(before, "domicile_fail_closed_total", region="eu", reason=reason)) == 1
    reasons = {dict(labels)["reason"] for name, labels in samples(after)
               if name == "domicile_fail_closed_total"}
    assert reasons <= set(FAIL_CLOSED_REASONS.values())


def test_metrics_is_get_only_and_parses(served_gateway: ServedApp) -> None:
    with httpx.Client(base_url=served_gateway.url, timeout=20) as client:
        refused = client.post("/metrics", content=b"x")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD"
        text = _metrics(client)
    names = {name for name, _labels in samples(text)}
    for family in ("domicile_requests_total", "domicile_request_duration_seconds_bucket",
                   "domicile_tokens_total", "domicile_provider_errors_total"):
        assert family in names


def test_metrics_can_be_turned_off(loop: LoopThread, tmp_path: Path) -> None:
    served = ServedApp(loop, gateway(observed_settings(tmp_path, metrics=False)))
    try:
        assert httpx.get(served.url + "/metrics", timeout=20).status_code == 404
    finally:
        served.stop()


# -- who may read it ------------------------------------------------------------------------

METRICS_TOKEN_ENV = "DOMICILE_TEST_METRICS_TOKEN"
METRICS_TOKEN = "scrape-token-0123456789abcdef"


async def asgi_get(app: GatewayApp, path: str, client: tuple[str, int] | None,
                   headers: list[tuple[bytes, bytes]] | None = None
                   ) -> tuple[int, dict[bytes, bytes], bytes]:
    """One GET straight through the app's ASGI interface, from the client address given
    (what uvicorn puts in the scope: the TCP peer)."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"gateway.eu.internal"), *(headers or [])],
        "client": client, "server": ("10.0.0.1", 8400)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent
                    if message["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def error_code(body: bytes) -> str:
    """The one error shape (OpenAI's): {"error": {"message", "type", "param", "code"}}."""
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return str(error["code"])


async def test_without_a_token_only_loopback_clients_read_the_metrics(tmp_path: Path) -> None:
    app = gateway(observed_settings(tmp_path))
    status, _headers, body = await asgi_get(app, "/metrics", ("10.0.0.5", 1234))
    assert status == 403 and error_code(body) == "forbidden"
    assert b"domicile_" not in body
    status, _headers, body = await asgi_get(app, "/metrics", None)  # a unix socket: no peer
    assert status == 403
    for loopback in ("127.0.0.1", "::1", "127.0.0.9"):
        status, headers, body = await asgi_get(app, "/metrics", (loopback, 1234))
        assert status == 200 and headers[b"content-type"].startswith(b"text/plain")
        assert b"domicile_requests_total" in body
    # A bearer token when none is configured opens nothing off the machine.
    status, _headers, _body = await asgi_get(
        app, "/metrics", ("10.0.0.5", 1234), [(b"authorization", b"Bearer anything")])
    assert status == 403


def test_with_a_token_a_scraper_needs_it_from_anywhere(
        loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Served by uvicorn on loopback: with a token configured, loopback is no exception."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(METRICS_TOKEN_ENV, METRICS_TOKEN)
    settings = observed_settings(tmp_path, metrics_token_env=METRICS_TOKEN_ENV)
    app = gateway(settings)
    served = ServedApp(loop, app)
    try:
        with httpx.Client(base_url=served.url, timeout=20) as client:
            for headers in ({}, {"authorization": "Bearer wrong-token"},
                            {"authorization": f"Bearer {METRICS_TOKEN}x"},
                            {"authorization": f"Basic {METRICS_TOKEN}"},
                            {"authorization": METRICS_TOKEN}):
                refused = client.get("/metrics", headers=headers)
                assert refused.status_code == 401, headers
                assert error_code(refused.content) == "invalid_api_key"
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert "domicile_" not in refused.text
            answer = client.get("/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
            assert answer.status_code == 200
            assert "domicile_requests_total" in answer.text
            assert client.get("/metrics", headers={
                "authorization": f"bearer {METRICS_TOKEN}"}).status_code == 200
    finally:
        served.stop()
    assert METRICS_TOKEN not in caplog.text
    for shown in (settings, settings.observability, app._metrics_access):
        assert METRICS_TOKEN not in repr(shown) and METRICS_TOKEN not in str(shown)
    token = settings.observability.metrics_token()
    assert token is not None and METRICS_TOKEN not in repr(token)


async def test_a_token_from_a_non_loopback_client_reads_the_metrics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(METRICS_TOKEN_ENV, METRICS_TOKEN)
    app = gateway(observed_settings(tmp_path, metrics_token_env=METRICS_TOKEN_ENV))
    status, _headers, body = await asgi_get(app, "/metrics", ("10.0.0.5", 1234))
    assert status == 401 and error_code(body) == "invalid_api_key"
    status, _headers, body = await asgi_get(
        app, "/metrics", ("10.0.0.5", 1234),
        [(b"authorization", f"Bearer {METRICS_TOKEN}".encode())])
    assert status == 200 and b"domicile_requests_total" in body


async def test_an_empty_token_env_var_refuses_every_scrape(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Fail closed: a token is asked for but none is set, so none matches (not even an empty
    one), loopback included; one warning names the env var."""
    monkeypatch.delenv(METRICS_TOKEN_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="domicile.gateway"):
        app = gateway(observed_settings(tmp_path, metrics_token_env=METRICS_TOKEN_ENV))
    assert METRICS_TOKEN_ENV in caplog.text
    for headers in ([], [(b"authorization", b"Bearer ")], [(b"authorization", b"Bearer \0")]):
        status, _headers, _body = await asgi_get(app, "/metrics", ("127.0.0.1", 1234), headers)
        assert status == 401


async def test_metrics_turned_off_is_not_found_from_anywhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(METRICS_TOKEN_ENV, METRICS_TOKEN)
    app = gateway(observed_settings(tmp_path, metrics=False, metrics_token_env=METRICS_TOKEN_ENV))
    for client in (("10.0.0.5", 1234), ("127.0.0.1", 1234)):
        status, _headers, body = await asgi_get(
            app, "/metrics", client, [(b"authorization", f"Bearer {METRICS_TOKEN}".encode())])
        assert status == 404 and error_code(body) == "not_found"


@pytest.mark.parametrize(("reason", "label"), [
    ("HTTP 503", "http_5xx"), ("TimeoutError", "timeout"), ("no data for 30 s", "timeout"),
    ("ClientConnectorError", "connection"), ("it ended with no end-of-stream event",
                                             "stream_broken"), ("not started", "unavailable"),
])
def test_provider_error_reasons_are_a_closed_set(reason: str, label: str) -> None:
    assert provider_error_reason(reason) == label
    assert label in PROVIDER_ERROR_REASONS
    assert provider_error_reason("anything at all", busy=True) == "busy"
    assert provider_error_reason("ServerDisconnectedError", mid_stream=True) == "stream_broken"


def test_cached_children_count_into_the_registry() -> None:
    metrics = RequestMetrics("test-region")
    for status in (200, 200, 500):
        metrics.observe("/v1/embeddings", "POST", status, 0.002)
    metrics.observe("/v1/embeddings", "BREW", 200, 0.002)  # methods are a closed set too
    text = exposition().decode()
    assert value(text, "domicile_requests_total", region="test-region", route="/v1/embeddings",
                 method="POST", status="200") == 2
    assert value(text, "domicile_requests_total", region="test-region", route="/v1/embeddings",
                 method="other", status="200") == 1
    assert value(text, "domicile_request_duration_seconds_count", region="test-region",
                 route="/v1/embeddings") == 4
