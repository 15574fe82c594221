"""`dev-echo`: a deterministic stand-in for demos and tests. Not a model, and says so.

Instant and offline: chat replies with the last user message's text; embeddings are unit
vectors drawn from a hash of the text; images are a small PNG whose colours come from a hash
of the prompt. Every answer carries the label `dev-echo: deterministic stand-in, not a
model`. Token counts are whitespace-separated word counts.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
import zlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

from domicile.config import Capability
from domicile.errors import InvalidInput
from domicile.web.jsonbody import dump_json

from . import shapes
from .base import Provider, ProviderResponse

__all__ = ["LABEL", "DevEchoProvider", "png"]

LABEL = "dev-echo: deterministic stand-in, not a model"
MODEL = "dev-echo"
EMBEDDING_DIMENSIONS = 384
IMAGE_SIDE = 64
MAX_IMAGES = 10


def _words(text: str) -> int:
    return len(text.split())


def _conversation(parsed: Mapping[str, Any]) -> tuple[str, int]:
    """(the reply, the prompt's word count) for a chat request."""
    messages = parsed.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("`messages` must be a non-empty list.", param="messages")
    prompt_words = 0
    reply = ""
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidInput("Each message must be an object.", param="messages")
        text = shapes.message_text(message.get("content"))
        prompt_words += _words(text)
        if message.get("role") == "user":
            reply = text
    return reply, prompt_words


def _pieces(text: str, count: int = 3) -> list[str]:
    """`text` in about `count` pieces cut at spaces, which join back to `text`."""
    words = text.split(" ")
    step = max(1, math.ceil(len(words) / count))
    pieces = [" ".join(words[i:i + step]) for i in range(0, len(words), step)]
    return [piece if i == 0 else " " + piece for i, piece in enumerate(pieces)]


def _vector(text: str) -> list[float]:
    raw = hashlib.shake_256(text.encode()).digest(EMBEDDING_DIMENSIONS * 2)
    values = struct.unpack(f"<{EMBEDDING_DIMENSIONS}h", raw)
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def png(seed: str, side: int = IMAGE_SIDE) -> bytes:
    """A `side`x`side` RGB PNG: a diagonal blend of two colours taken from a hash of `seed`."""
    digest = hashlib.sha256(seed.encode()).digest()
    first, second = digest[0:3], digest[3:6]
    rows = bytearray()
    span = max(1, 2 * (side - 1))
    for y in range(side):
        rows.append(0)  # filter type: none
        for x in range(side):
            t = (x + y) / span
            rows.extend(round(a + (b - a) * t) for a, b in zip(first, second, strict=True))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b""))


class DevEchoProvider(Provider):
    kind = "dev-echo"
    supported: ClassVar[frozenset[Capability]] = frozenset(
        {"chat", "embeddings", "vision", "images"})

    async def chat(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        reply, prompt_words = _conversation(parsed)
        completion_words = _words(reply)
        answer = shapes.chat_completion(MODEL, reply, prompt_words, completion_words, LABEL)
        return ProviderResponse(200, dump_json(answer), prompt_tokens=prompt_words,
                                completion_tokens=completion_words)

    async def chat_stream(self, body: bytes, parsed: Mapping[str, Any]
                          ) -> AsyncGenerator[bytes, None]:
        """As OpenAI streams: with `stream_options.include_usage` every chunk says
        `"usage": null` and a last chunk with no choices carries the usage; without it, neither."""
        reply, prompt_words = _conversation(parsed)
        options = parsed.get("stream_options")
        with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        completion_id, created = shapes.new_id("chatcmpl-"), int(time.time())

        def chunk(delta: Mapping[str, str], finish_reason: str | None = None) -> bytes:
            event = shapes.chat_chunk(completion_id, created, MODEL, LABEL, delta, finish_reason)
            if with_usage:
                event["usage"] = None
            return shapes.sse(event)

        for index, piece in enumerate(_pieces(reply)):
            yield chunk({"role": "assistant", "content": piece} if index == 0
                        else {"content": piece})
        yield chunk({}, "stop")
        if with_usage:
            yield shapes.sse(shapes.chat_chunk(completion_id, created, MODEL, LABEL, None,
                                               usage_counts=(prompt_words, _words(reply))))
        yield b"data: [DONE]\n\n"

    async def embeddings(self, body: bytes, parsed: Mapping[str, Any], *,
                         owner: str = "") -> ProviderResponse:
        texts = shapes.embedding_inputs(parsed)
        fmt = shapes.encoding_format(parsed)
        tokens = sum(_words(text) for text in texts)
        answer = shapes.embeddings_list(MODEL, [_vector(t) for t in texts], tokens, fmt, LABEL)
        return ProviderResponse(200, answer, prompt_tokens=tokens)

    async def images(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        prompt = parsed.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidInput("`prompt` must be a non-empty string.", param="prompt")
        n = parsed.get("n", 1)
        if n is None:
            n = 1
        if type(n) is not int or not 1 <= n <= MAX_IMAGES:
            raise InvalidInput(f"`n` must be an integer from 1 to {MAX_IMAGES}.", param="n")
        if parsed.get("response_format") == "url":
            raise InvalidInput("dev-echo returns images as `b64_json` only.",
                               param="response_format")
        image = base64.b64encode(png(prompt)).decode()
        answer = {"created": int(time.time()),
                  "data": [{"b64_json": image, "revised_prompt": LABEL} for _ in range(n)]}
        return ProviderResponse(200, dump_json(answer), prompt_tokens=_words(prompt))
