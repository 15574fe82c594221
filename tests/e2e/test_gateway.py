"""The regional API end to end: the official `openai` SDK against `domicile serve`.

G2 (in-region processing, fail closed), G3 (wrong door), G6 (TLS to providers), the error
codes of the contract, and what usage keeps (metadata, never content).
"""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import MODEL, UPSTREAM_SECRET, Deployment

CHAT = [{"role": "user", "content": "hello from the e2e tests"}]


def test_chat_through_an_in_region_upstream(live: Deployment) -> None:
    client = live.client("eu_zero")
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert raw.headers["x-domicile-region"] == "eu"
    assert raw.headers["x-domicile-provider"] in ("eu-a", "eu-b")
    assert raw.headers["x-request-id"]
    served = live.upstreams[raw.headers["x-domicile-provider"]]
    assert len(served.received) == 1 and live.upstreams["us-a"].received == []
    if served.name == "eu-a":  # the provider's key comes from the env var the config names
        assert served.received[0].headers["Authorization"] == f"Bearer {UPSTREAM_SECRET}"


def test_dev_echo_is_labelled_and_deterministic(live: Deployment) -> None:
    client = live.client("eu_zero")
    first = client.chat.completions.create(model="dev-echo", messages=CHAT)
    second = client.chat.completions.create(model="dev-echo", messages=CHAT)
    assert first.choices[0].message.content == CHAT[0]["content"]
    assert second.choices[0].message.content == first.choices[0].message.content
    assert "stand-in" in (first.system_fingerprint or "")


def test_streaming_is_forwarded_chunk_by_chunk(live: Deployment) -> None:
    stream = live.client("eu_zero").chat.completions.create(model=MODEL, messages=CHAT,
                                                            stream=True)
    chunks = [chunk for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and text


def test_embeddings_from_the_in_process_model(live: Deployment) -> None:
    client = live.client("eu_zero")
    result = client.embeddings.create(model="all-minilm-l6-v2",
                                      input=["a cat sits on the mat", "a kitten on a rug",
                                             "quarterly tax filing deadline"])
    vectors = [item.embedding for item in result.data]
    assert [len(v) for v in vectors] == [384, 384, 384]

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_images_from_a_provider_that_declares_them(live: Deployment) -> None:
    image = live.client("eu_zero").images.generate(model="dev-echo", prompt="a red square")
    assert image.data and image.data[0].b64_json
    assert base64.b64decode(image.data[0].b64_json).startswith(b"\x89PNG\r\n\x1a\n")


def test_stateless_responses(live: Deployment) -> None:
    response = live.client("eu_zero").responses.create(model="dev-echo", input="say this back")
    assert response.output_text == "say this back"


def test_models_lists_only_this_regions_models(live: Deployment) -> None:
    eu_models = {m.id for m in live.client("eu_zero").models.list()}
    assert {"dev-echo", "all-minilm-l6-v2", MODEL} <= eu_models
    assert "us-only-model" not in eu_models
    us_models = {m.id for m in live.client("us", "us").models.list()}
    assert "us-only-model" in us_models


def test_residency_endpoint_names_region_and_providers(live: Deployment) -> None:
    response = httpx.get(live.site.url("eu") + "/v1/residency",
                         headers={"Authorization": f"Bearer {live.keys['eu_zero']}"})
    body = response.json()
    assert body["region"] == "eu" and body["retention"] == "zero"
    assert {p["region"] for p in body["providers"]} == {"eu"}
    assert "/v1/files" not in body["endpoints"]


# -- G3: the wrong door -------------------------------------------------------------------


def test_eu_key_at_us_is_refused_naming_the_eu_url(live: Deployment) -> None:
    client = openai.OpenAI(base_url=live.site.url("us") + "/v1", api_key=live.keys["eu_zero"],
                           max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model=MODEL, messages=CHAT)
    assert caught.value.code == "wrong_region"
    assert live.site.url("eu") in caught.value.message
    assert all(not u.received for u in live.upstreams.values())


def read_http_answer(sock: socket.socket, deadline_s: float = 15) -> tuple[bytes, bytes]:
    """(status line and headers, body) of one HTTP/1.1 answer, read until its Content-Length
    is in or the server closes; a server that stalls fails the test at the deadline."""
    deadline = time.monotonic() + deadline_s
    data = bytearray()
    head: bytes | None = None
    length: int | None = None
    while True:
        if head is None and b"\r\n\r\n" in data:
            head, _, rest = bytes(data).partition(b"\r\n\r\n")
            data = bytearray(rest)
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
        if length is not None and len(data) >= length:
            return head or b"", bytes(data[:length])
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no complete answer within {deadline_s} s: {bytes(data)[:200]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue  # the deadline check above fails the test
        if not chunk:  # closed: the answer is what came
            assert head is not None, f"closed before the headers ended: {bytes(data)!r}"
            return head, bytes(data)
        data += chunk


def test_wrong_door_is_refused_before_the_body_is_read(live: Deployment) -> None:
    """The server answers 403 while the client has not even sent the body it announced: the
    client sends the headers of a 1 MB request and never a byte of its body."""
    with socket.create_connection(("127.0.0.1", live.site.port_base + 1), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {live.keys['eu_zero']}\r\n".encode()
            + b"Content-Length: 1000000\r\n\r\n")
        head, body = read_http_answer(sock)
    assert head.startswith(b"HTTP/1.1 403")
    error = json.loads(body)["error"]
    assert error["code"] == "wrong_region"
    assert live.site.url("eu") in error["message"]


def test_unknown_and_revoked_keys_are_401(live: Deployment) -> None:
    client = openai.OpenAI(base_url=live.site.url("eu") + "/v1", api_key="dk-eu-nope",
                           max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"
    created = live.site.cli("key", "create", "--project", live.projects["eu_zero"])
    fresh = openai.OpenAI(base_url=live.site.url("eu") + "/v1", api_key=created["key"],
                          max_retries=0)
    assert fresh.models.list().data
    assert live.site.cli("key", "revoke", created["id"])["revoked"]
    time.sleep(1.2)  # the gateway caches a key's lookup for at most one second
    with pytest.raises(openai.AuthenticationError):
        fresh.models.list()
    assert live.client("eu_zero").models.list().data  # the project's other key still works


# -- G2: in-region routing, failover, fail closed -----------------------------------------


def test_failover_to_the_second_eu_provider(live: Deployment) -> None:
    live.upstreams["eu-a"].behaviour.mode = "fail"
    live.upstreams["eu-b"].behaviour.mode = "fail"
    # whichever is tried first fails; let exactly one fail to see failover name the other
    for broken, healthy in (("eu-a", "eu-b"), ("eu-b", "eu-a")):
        live.reset()
        live.upstreams[broken].behaviour.mode = "fail"
        raw = live.client("eu_zero").chat.completions.with_raw_response.create(
            model=MODEL, messages=CHAT)
        assert raw.headers["x-domicile-provider"] == healthy
        assert live.upstreams["us-a"].received == []


def test_no_in_region_provider_fails_closed_and_us_is_untouched(live: Deployment) -> None:
    live.upstreams["eu-a"].behaviour.mode = "drop"
    live.upstreams["eu-b"].behaviour.mode = "fail"
    with pytest.raises(openai.InternalServerError) as caught:
        live.client("eu_zero").chat.completions.create(model=MODEL, messages=CHAT)
    assert caught.value.status_code == 503 and caught.value.code == "no_in_region_provider"
    assert live.upstreams["eu-a"].received and live.upstreams["eu-b"].received
    assert live.upstreams["us-a"].received == []  # the us upstream serves the model, untouched


def test_unknown_model_in_this_region_is_404(live: Deployment) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        live.client("eu_zero").chat.completions.create(model="us-only-model", messages=CHAT)
    assert caught.value.code == "model_not_found"
    assert live.upstreams["us-a"].received == []


def test_global_project_is_processed_in_the_region_it_calls(live: Deployment) -> None:
    for region in ("eu", "us"):
        raw = live.client("global", region).chat.completions.with_raw_response.create(
            model=MODEL, messages=CHAT)
        assert raw.headers["x-domicile-region"] == region
    assert len(live.upstreams["us-a"].received) == 1


# -- G4 refusals, rate limits, usage ------------------------------------------------------


def test_storing_features_are_refused_under_zero_retention(live: Deployment) -> None:
    client = live.client("eu_zero")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="dev-echo", messages=CHAT, store=True)
    assert caught.value.code == "zero_retention"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="dev-echo", input="x", store=True)
    assert caught.value.code == "zero_retention"
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.txt", b"content"), purpose="assistants")
    assert caught.value.code == "zero_retention"


def test_rate_limit_is_429_with_openai_headers(live: Deployment) -> None:
    client = live.client("limited")
    client.models.list()
    client.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    headers = caught.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_usage_keeps_metadata_with_token_counts(live: Deployment) -> None:
    client = live.client("eu_zero")
    client.chat.completions.create(model=MODEL, messages=CHAT)
    time.sleep(1.5)  # usage is flushed in batches, off the request path
    usage = live.site.cli("usage", "--project", live.projects["eu_zero"])
    calls = [r for r in usage["requests"] if r["endpoint"] == "/v1/chat/completions"
             and r["model"] == MODEL and r["status"] == 200]
    assert calls and calls[-1]["prompt_tokens"] > 0 and calls[-1]["completion_tokens"] > 0
    assert calls[-1]["provider"] in ("eu-a", "eu-b") and calls[-1]["region"] == "eu"


def test_provider_secret_never_reaches_the_log(live: Deployment) -> None:
    live.client("eu_zero").chat.completions.create(model=MODEL, messages=CHAT)
    assert UPSTREAM_SECRET not in live.server.log()
