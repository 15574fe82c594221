"""OpenAI's request and answer shapes, for providers that answer in-process.

HTTP upstreams already speak OpenAI; the in-process providers (dev-echo, local embeddings)
build their answers here so the official SDK parses them like the real thing.
"""

from __future__ import annotations

import base64
import os
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from domicile.errors import InvalidInput
from domicile.web.jsonbody import dump_json

__all__ = [
    "chat_chunk",
    "chat_completion",
    "embedding_inputs",
    "embeddings_list",
    "encoding_format",
    "input_too_long",
    "message_text",
    "new_id",
    "request_too_long",
    "sse",
]

# OpenAI's own limits for embeddings; the in-process model counts tokens with its tokenizer.
MAX_EMBEDDING_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def sse(event: object) -> bytes:
    return b"data: " + dump_json(event) + b"\n\n"


def message_text(content: object) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def chat_completion(model: str, content: str, prompt_tokens: int, completion_tokens: int,
                    fingerprint: str) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(completion_id: str, created: int, model: str, fingerprint: str,
               delta: Mapping[str, str] | None, finish_reason: str | None = None,
               usage_counts: tuple[int, int] | None = None) -> dict[str, Any]:
    """One streamed chunk; with `usage_counts` the final usage-only chunk."""
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [] if delta is None else [
            {"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish_reason}
        ],
    }
    if usage_counts is not None:
        chunk["usage"] = usage(*usage_counts)
    return chunk


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def embedding_inputs(parsed: Mapping[str, Any]) -> list[str]:
    """`input` as a list of strings (a string or a list of strings; not token arrays)."""
    value = parsed.get("input")
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(item, str) and item for item in value)):
        raise InvalidInput("`input` must be a non-empty string or a list of non-empty "
                           "strings.", param="input")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise InvalidInput(f"`input` holds {len(value):,} inputs; the limit is "
                           f"{MAX_EMBEDDING_INPUTS:,} inputs per request.", param="input")
    return value


def input_too_long(index: int, tokens: int) -> InvalidInput:
    """`tokens` is as far as counting went: at least that many."""
    return InvalidInput(f"`input[{index}]` holds at least {tokens:,} tokens; the limit is "
                        f"{MAX_INPUT_TOKENS:,} tokens per input.", param="input")


def request_too_long(tokens: int) -> InvalidInput:
    return InvalidInput(f"`input` holds at least {tokens:,} tokens in all; the limit is "
                        f"{MAX_REQUEST_TOKENS:,} tokens per request.", param="input")


def encoding_format(parsed: Mapping[str, Any]) -> Literal["float", "base64"]:
    value = parsed.get("encoding_format") or "float"
    if value not in ("float", "base64"):
        raise InvalidInput("`encoding_format` must be `float` or `base64`.",
                           param="encoding_format")
    return "base64" if value == "base64" else "float"


def embeddings_list(model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int,
                    fmt: Literal["float", "base64"], label: str | None = None) -> bytes:
    """OpenAI's embeddings answer; base64 is little-endian float32, as the SDK decodes it."""
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        embedding: object = list(vector)
        if fmt == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    answer: dict[str, Any] = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    if label is not None:
        answer["system_fingerprint"] = label
    return dump_json(answer)
