"""dev-echo: deterministic, offline, and labelled as a stand-in."""

from __future__ import annotations

import base64
import math
import struct
import zlib

import openai
import pytest

from domicile.inference.providers.dev_echo import LABEL, png
from tests.gateway.conftest import EU_ZERO_KEY, Stack

AUTH = {"Authorization": f"Bearer {EU_ZERO_KEY}"}


def test_chat_echoes_the_last_user_message_and_says_it_is_a_stand_in(stack: Stack) -> None:
    reply = stack.client().chat.completions.create(model="dev-echo", messages=[
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"},
                                     {"type": "text", "text": "question here"}]},
    ])
    assert reply.choices[0].message.content == "second question here"
    assert reply.model == "dev-echo"
    assert reply.system_fingerprint == LABEL
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (9, 3)


def test_chat_stream_comes_in_several_chunks_then_done(stack: Stack) -> None:
    chunks = list(stack.client().chat.completions.create(
        model="dev-echo", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "a b c d e f"}]))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    assert len(pieces) >= 3
    assert "".join(pieces) == "a b c d e f"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    with stack.http().stream("POST", "/v1/chat/completions", headers=AUTH, json={
            "model": "dev-echo", "stream": True,
            "messages": [{"role": "user", "content": "x"}]}) as response:
        assert response.read().endswith(b"data: [DONE]\n\n")


def test_chat_without_messages_is_a_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(model="dev-echo", messages=[])
    assert caught.value.param == "messages"  # type: ignore[attr-defined]


def test_vision_requests_go_to_a_provider_that_declares_vision(stack: Stack) -> None:
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    reply = stack.client().chat.completions.create(
        model="dev-echo", messages=[{"role": "user", "content": content}])
    assert reply.choices[0].message.content == "what is this"
    with pytest.raises(openai.NotFoundError, match="does not support vision"):
        stack.client().chat.completions.create(
            model="solo-model", messages=[{"role": "user", "content": content}])


def test_embeddings_are_deterministic_unit_vectors(stack: Stack) -> None:
    client = stack.client()
    first = client.embeddings.create(model="dev-echo", input=["alpha", "beta"],
                                     encoding_format="float")
    again = client.embeddings.create(model="dev-echo", input="alpha", encoding_format="float")
    assert len(first.data[0].embedding) == 384
    assert first.data[0].embedding == pytest.approx(again.data[0].embedding, abs=1e-6)
    assert first.data[0].embedding != first.data[1].embedding
    assert math.isclose(sum(v * v for v in first.data[1].embedding), 1.0, rel_tol=1e-4)
    raw = stack.http().post("/v1/embeddings", headers=AUTH, json={
        "model": "dev-echo", "input": "x"}).json()
    assert raw["system_fingerprint"] == LABEL


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, width, height, idat = 8, 0, 0, b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    return width, height, zlib.decompress(idat)


def test_images_are_small_deterministic_pngs(stack: Stack) -> None:
    client = stack.client()
    result = client.images.generate(model="dev-echo", prompt="a red fox", n=2)
    assert result.data is not None and len(result.data) == 2
    image = base64.b64decode(result.data[0].b64_json or "")
    width, height, pixels = _png_pixels(image)
    assert (width, height) == (64, 64)
    assert len(pixels) == 64 * (1 + 64 * 3)
    assert image == png("a red fox")
    again = client.images.generate(model="dev-echo", prompt="a red fox")
    other = client.images.generate(model="dev-echo", prompt="a blue whale")
    assert again.data and other.data
    assert again.data[0].b64_json == result.data[0].b64_json
    assert other.data[0].b64_json != result.data[0].b64_json
    assert result.data[0].revised_prompt == LABEL


def test_images_need_a_provider_that_declares_them(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError):
        stack.client().images.generate(model="fo-model", prompt="x")
    assert stack.upstreams["eu-a"].received == []
