"""HTTP upstreams: raw bytes forwarded, SSE relayed as it arrives, disconnects cancel the
upstream, G6: verified TLS 1.2+ only, and an upstream's garbage or limits answered honestly
(streams that break off: `test_upstream_faults.py`)."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import openai
import pytest

from domicile.inference.providers import OpenAICompatibleProvider, ProviderResponse
from domicile.inference.providers.openai_compatible import upstream_tls_context
from domicile.storage.interfaces import UsageRecord
from tests.gateway.conftest import EU_ZERO_KEY, UPSTREAM_SECRET, Stack
from tests.gateway.support import make_settings, provider

AUTH = {"Authorization": f"Bearer {EU_ZERO_KEY}"}
MESSAGES = [{"role": "user", "content": "one two three"}]


def _wait_for(condition: threading.Event, seconds: float = 3.0) -> bool:
    return condition.wait(seconds)


def _records(stack: Stack, count: int, seconds: float = 3.0) -> list[UsageRecord]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(stack.sink.records) < count:
        time.sleep(0.05)
    return list(stack.sink.records)


def test_the_clients_bytes_reach_the_upstream_unchanged(stack: Stack) -> None:
    body = (b'{ "messages" : [{"role":"user","content":"spaced  out \\u00e9"}],\n'
            b' "model":"solo-model", "x_vendor": {"keep": [1, 2.50, true]} }')
    response = stack.http().post("/v1/chat/completions", content=body, headers=AUTH)
    assert response.status_code == 200
    assert stack.upstreams["eu-solo"].received[0].body == body


def test_the_upstream_gets_the_providers_key_never_the_clients(stack: Stack) -> None:
    stack.client().chat.completions.create(model="fo-model", messages=MESSAGES)
    headers = stack.upstreams["eu-a"].received[0].headers
    assert headers["Authorization"] == f"Bearer {UPSTREAM_SECRET}"
    stack.upstreams["eu-a"].behaviour.mode = "fail"
    stack.client().chat.completions.create(model="fo-model", messages=MESSAGES)
    assert "Authorization" not in stack.upstreams["eu-b"].received[0].headers  # no key set
    for upstream in stack.upstreams.values():
        for received in upstream.received:
            assert EU_ZERO_KEY not in str(received.headers)


def test_a_provider_never_shows_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_KEY", "sk-very-secret")
    settings = make_settings(tmp_path, eu=[provider(
        "p", "openai-compatible", ["m"], base_url="http://127.0.0.1:9/v1",
        api_key_env="SOME_KEY")], us=[])
    p = OpenAICompatibleProvider(settings.regions["eu"].providers[0], "eu")
    assert "sk-very-secret" not in repr(p)
    assert "sk-very-secret" not in str(p.describe())


def test_stream_chunks_reach_the_client_as_they_arrive(stack: Stack) -> None:
    upstream = stack.upstreams["eu-solo"]
    gate = threading.Event()
    upstream.behaviour.gate = gate
    stream = stack.client().chat.completions.create(model="solo-model", messages=MESSAGES,
                                                     stream=True)
    chunks = iter(stream)
    first = next(chunks)
    # The client holds chunk 1 while the upstream is still waiting to send chunk 2.
    assert first.choices[0].delta.content == "eu-solo"
    assert upstream.chunks_sent == 1
    gate.set()
    text = first.choices[0].delta.content + "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "eu-solo says: one two three"


def test_stream_answers_are_event_streams_with_transparency_headers(stack: Stack) -> None:
    with stack.http().stream("POST", "/v1/chat/completions", headers=AUTH, json={
            "model": "solo-model", "messages": MESSAGES, "stream": True}) as response:
        body = response.read()
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-domicile-provider"] == "eu-solo"
    assert response.headers["x-domicile-region"] == "eu"
    assert body.endswith(b"data: [DONE]\n\n")


def test_a_client_that_leaves_cancels_the_upstream_stream(stack: Stack) -> None:
    upstream = stack.upstreams["eu-solo"]
    upstream.behaviour.endless = True
    with stack.http().stream("POST", "/v1/chat/completions", headers=AUTH, json={
            "model": "solo-model", "messages": MESSAGES, "stream": True}) as response:
        for _ in response.iter_raw():
            break
    assert _wait_for(upstream.stream_cancelled), "the upstream kept streaming"
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not stack.sink.records:
        time.sleep(0.05)
    assert stack.sink.records[-1].status == 499


def test_stream_usage_is_counted(stack: Stack) -> None:
    list(stack.client().chat.completions.create(
        model="solo-model", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not stack.sink.records:
        time.sleep(0.05)
    record = stack.sink.records[0]
    assert (record.prompt_tokens, record.completion_tokens) == (11, 7)


def test_a_stream_fails_over_before_its_first_byte(stack: Stack) -> None:
    stack.upstreams["eu-a"].behaviour.mode = "fail"
    with stack.http().stream("POST", "/v1/chat/completions", headers=AUTH, json={
            "model": "fo-model", "messages": MESSAGES, "stream": True}) as response:
        body = response.read()
    assert response.headers["x-domicile-provider"] == "eu-b"
    assert b"eu-b" in body


def test_a_stream_the_upstream_rejects_passes_its_error_through(stack: Stack) -> None:
    stack.upstreams["eu-solo"].behaviour.mode = "reject"
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(model="solo-model", messages=MESSAGES,
                                               stream=True)
    assert caught.value.code == "upstream_says_no"  # type: ignore[attr-defined]


def test_a_stream_with_no_provider_left_is_503(stack: Stack) -> None:
    stack.upstreams["eu-solo"].behaviour.mode = "fail"
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client().chat.completions.create(model="solo-model", messages=MESSAGES,
                                               stream=True)
    assert caught.value.status_code == 503
    assert stack.upstreams["us-solo"].received == []


def test_tls_upstream_with_the_configured_ca_serves(stack: Stack) -> None:
    reply = stack.client().chat.completions.with_raw_response.create(
        model="tls-model", messages=MESSAGES)
    assert reply.headers["x-domicile-provider"] == "eu-tls"
    assert reply.parse().choices[0].message.content == "eu-tls says: one two three"


def test_an_upstream_with_an_untrusted_certificate_is_refused(stack: Stack) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client().chat.completions.create(model="rogue-model", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert "eu-rogue: ClientConnectorCertificateError" in caught.value.message
    assert stack.upstreams["eu-rogue"].received == []


def test_upstream_tls_requires_verification_and_tls12(stack: Stack) -> None:
    context = upstream_tls_context(str(stack.ca_file))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_upstream_refuses_a_server_that_only_speaks_tls11(stack: Stack) -> None:
    """A TLS 1.1-only server (the recipe's SECLEVEL=0 setup) cannot complete a handshake."""
    import socket

    import trustme

    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_context.minimum_version = ssl.TLSVersion.TLSv1
    server_context.maximum_version = ssl.TLSVersion.TLSv1_1
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            server_context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_context = upstream_tls_context(None)
    ca.configure_trust(client_context)
    with pytest.raises((ssl.SSLError, OSError)), socket.create_connection(
            ("127.0.0.1", port), timeout=5) as raw:
        client_context.wrap_socket(raw, server_hostname="127.0.0.1")
    thread.join(5)
    listener.close()


# -- what an upstream answers that is not an answer, and what it says about limits -----------


@pytest.mark.parametrize(("endpoint", "garbage"), [
    ("chat", b'{"id": "chatcmpl-fake", "choices": [{"message": {"content": "CANARY-cut off'),
    ("chat", b"upstream request timeout CANARY"),
    ("chat", b'["CANARY-a list, not an answer"]'),
    ("chat", b""),
    ("chat", b'{"id": "chatcmpl-fake", "choices": [{"message": CANARY-broken inside}]}'),
    ("chat", b'{"id": "chatcmpl-fake", "temperature": NaN, "note": "CANARY"}'),
    ("embeddings", b"<html><body>CANARY-a proxy's login page</body></html>"),
])
def test_a_200_that_is_not_a_json_object_is_a_502_the_sdk_understands(
        stack: Stack, endpoint: str, garbage: bytes) -> None:
    upstream = stack.upstreams["eu-solo"]
    upstream.behaviour.mode = "garbage"
    upstream.behaviour.garbage = garbage
    client = stack.client()
    with pytest.raises(openai.InternalServerError) as caught:  # not JSONDecodeError
        if endpoint == "chat":
            client.chat.completions.create(model="solo-model", messages=MESSAGES)
        else:
            client.embeddings.create(model="remote-embedder", input="x")
    error = caught.value
    assert error.status_code == 502
    assert error.code == "upstream_error"  # type: ignore[attr-defined]
    assert error.response.headers["x-domicile-provider"] in ("eu-solo", "eu-vectors")
    assert "CANARY" not in error.message
    assert len(upstream.received) == 1  # it answered: not sent to a second provider
    record = _records(stack, 1)[0]
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (502, 0, 0)


def test_a_provider_that_answers_garbage_is_not_failed_over(stack: Stack) -> None:
    """It did answer (and may have done the work): the client gets its 502, not a second
    provider's answer at a second cost."""
    stack.upstreams["eu-a"].behaviour.mode = "garbage"
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client().chat.completions.create(model="fo-model", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "eu-a" in caught.value.message
    assert stack.upstreams["eu-b"].received == []


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_429_keeps_its_retry_after_and_limits(stack: Stack, stream: bool) -> None:
    stack.upstreams["eu-solo"].behaviour.mode = "limit"
    with pytest.raises(openai.RateLimitError) as caught:
        stack.client().chat.completions.create(model="solo-model", messages=MESSAGES,
                                               stream=stream)
    headers = caught.value.response.headers
    assert headers["retry-after"] == "7"
    assert headers["retry-after-ms"] == "7000"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "7s"
    assert "x-upstream-internal" not in headers  # only what tells a client when to retry
    assert headers["x-domicile-provider"] == "eu-solo"
    assert caught.value.code == "rate_limit_exceeded"  # type: ignore[attr-defined]


def test_the_gateways_own_limits_win_over_an_upstreams() -> None:
    own = [(b"x-ratelimit-limit-requests", b"10"), (b"x-ratelimit-remaining-requests", b"9")]
    upstream = ProviderResponse(429, b"{}", headers=(
        (b"retry-after", b"7"), (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-limit-tokens", b"1000")))
    assert upstream.client_headers(own) == [*own, (b"retry-after", b"7")]
    assert upstream.client_headers([]) == list(upstream.headers)
