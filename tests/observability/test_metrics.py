"""`GET /metrics` of a region's gateway served by uvicorn on loopback: requests counted by route
template (never the path) and status, latency histograms, tokens and provider errors by
provider, fail-closed refusals by reason; the text parses as Prometheus' format.

The providers are dev-echo (a deterministic stand-in, not a model) behind a provider whose
port is closed (a real connection refusal, failed over)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

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
