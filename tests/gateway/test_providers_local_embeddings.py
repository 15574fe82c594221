"""The in-region embedding model (all-MiniLM-L6-v2), for real: loaded once per session."""

from __future__ import annotations

import base64
import math
import struct
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.gateway.conftest import EU_ZERO_KEY, Stack

MODEL = "all-minilm-l6-v2"


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_384_dimensional_and_semantic(stack: Stack) -> None:
    # The SDK asks for base64 by default: this also checks the float32 packing.
    result = stack.client().embeddings.create(model=MODEL, input=[
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
    alone = {t: client.embeddings.create(model=MODEL, input=t).data[0].embedding
             for t in texts[:2]}
    provider = next(p for p in stack.eu_app.providers if p.name == "eu-embeddings")
    before = provider.batches_run  # type: ignore[attr-defined]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(
            lambda t: client.embeddings.create(model=MODEL, input=[t, "x"]).data, texts))
    assert provider.batches_run - before < len(texts)  # type: ignore[attr-defined]
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
