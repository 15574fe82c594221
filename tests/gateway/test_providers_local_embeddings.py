"""The in-region embedding model (all-MiniLM-L6-v2), for real: loaded once per session."""

from __future__ import annotations

import base64
import json
import math
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from domicile.inference.providers.local_embeddings import STEP_INPUTS, LocalEmbeddingsProvider
from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, Stack
from tests.gateway.encoder_gate import EncoderGate, gate_fixture  # noqa: F401

MODEL = "all-minilm-l6-v2"


def _provider(stack: Stack) -> LocalEmbeddingsProvider:
    found = next(p for p in stack.eu_app.providers if p.name == "eu-embeddings")
    assert isinstance(found, LocalEmbeddingsProvider)
    return found


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_384_dimensional_and_semantic(stack: Stack) -> None:
    result = stack.client().embeddings.create(model=MODEL, encoding_format="float", input=[
        "The cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Quarterly revenue grew by eight percent.",
    ])
    cat, kitten, revenue = (d.embedding for d in result.data)
    assert len(cat) == 384
    assert math.isclose(_cosine(cat, cat), 1.0, rel_tol=1e-3)
    assert _cosine(cat, kitten) > _cosine(cat, revenue) + 0.2
    assert result.usage.prompt_tokens > 10
    assert result.model == MODEL


def test_float_and_base64_formats_agree(stack: Stack) -> None:
    http = stack.http()
    headers = {"Authorization": f"Bearer {EU_ZERO_KEY}"}
    floats = http.post("/v1/embeddings", headers=headers, json={
        "model": MODEL, "input": "hello world", "encoding_format": "float"}).json()
    packed = http.post("/v1/embeddings", headers=headers, json={
        "model": MODEL, "input": "hello world", "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    assert floats["data"][0]["index"] == 0


def test_concurrent_requests_each_get_their_own_vectors(stack: Stack) -> None:
    client = stack.client()
    texts = [f"sentence number {i} about topic {i * 7}" for i in range(8)]
    alone = {t: client.embeddings.create(model=MODEL, input=t, encoding_format="float")
             .data[0].embedding for t in texts[:2]}
    provider = _provider(stack)
    before = provider.steps_run
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(
            lambda t: client.embeddings.create(model=MODEL, input=[t, "x"],
                                               encoding_format="float").data, texts))
    assert provider.steps_run - before < len(texts)
    for text, data in zip(texts, together, strict=True):
        assert [d.index for d in data] == [0, 1]
        if text in alone:
            assert data[0].embedding == pytest.approx(alone[text], abs=1e-4)


@pytest.mark.parametrize("bad", [[], "", [1, 2, 3], [""], None])
def test_bad_input_is_a_400(stack: Stack, bad: object) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().embeddings.create(model=MODEL, input=bad)  # type: ignore[arg-type]
    assert caught.value.param == "input"  # type: ignore[attr-defined]


def test_a_bad_encoding_format_is_a_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError):
        stack.client().embeddings.create(model=MODEL, input="x",
                                         encoding_format="int8")  # type: ignore[arg-type]


@pytest.mark.parametrize(("inputs", "limit"), [
    (["a"] * 2049, "2,048 inputs per request"),
    (["word " * 8191], "8,192 tokens per input"),  # 8,193 with [CLS] and [SEP]
    ([("각" * 30 + " ") * 100], "8,192 tokens per input"),  # 3,100 characters, 9,002 tokens
    (["word " * 7500] * 41, "300,000 tokens per request"),  # 41 x 7,502
])
def test_past_a_limit_is_a_400_naming_it(stack: Stack, inputs: list[str], limit: str) -> None:
    provider = _provider(stack)
    before = provider.steps_run
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().embeddings.create(model=MODEL, input=inputs)
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "input"
    assert limit in caught.value.message
    assert caught.value.response.headers["x-domicile-region"] == "eu"
    assert provider.steps_run == before  # refused before the encoder saw any of it


def test_an_input_at_the_limit_is_served(stack: Stack) -> None:
    result = stack.client().embeddings.create(model=MODEL, input="word " * 8190,  # 8,192
                                              encoding_format="float")
    assert result.usage.prompt_tokens == 256  # what the model reads of it


def _poll(condition: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.02)
    return False


def test_a_client_that_leaves_stops_the_encoder(stack: Stack, gate: EncoderGate) -> None:
    provider = _provider(stack)
    texts = [f"paragraph {i} of a long report" for i in range(3 * STEP_INPUTS)]
    body = json.dumps({"model": MODEL, "input": texts}).encode()
    with socket.create_connection(("127.0.0.1", stack.eu.port), timeout=10) as client:
        client.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: eu\r\n"
                       b"authorization: Bearer " + EU_ZERO_KEY.encode() + b"\r\n"
                       b"content-type: application/json\r\n"
                       b"content-length: %d\r\n\r\n" % len(body) + body)
        assert gate.next_step() == texts[:STEP_INPUTS]  # the first step holds the encoder
    # Gone while its first step runs: the rest of its inputs leave the queue at once.
    assert _poll(lambda: provider.queued_inputs == 0), "the request stayed queued"
    gate.open()
    stack.client().embeddings.create(model=MODEL, input="hello", encoding_format="float")
    assert gate.steps[1:] == [["hello"]]
    stack.loop.run(stack.eu_app.usage.flush())
    assert [r.status for r in stack.sink.records if r.endpoint == "/v1/embeddings"] == [499, 200]


def test_the_encoder_takes_turns_by_project(stack: Stack, gate: EncoderGate) -> None:
    # The gateway says whose request each is: another project's short request is in the
    # next step, though it came behind one project's batch of three steps.
    provider = _provider(stack)
    batch = [f"paragraph {i} of a long report" for i in range(3 * STEP_INPUTS)]
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(stack.client().embeddings.create, model=MODEL, input=batch,
                          encoding_format="float")
        assert gate.next_step() == batch[:STEP_INPUTS]
        small = pool.submit(stack.client(EU_REGIONAL_KEY).embeddings.create, model=MODEL,
                            input="hello", encoding_format="float")
        assert _poll(lambda: provider.queued_inputs == 2 * STEP_INPUTS + 1)
        gate.release()
        assert "hello" in gate.next_step()
        gate.open()
        assert len(small.result(30).data) == 1
        assert len(big.result(60).data) == len(batch)
