"""Opening a chat stream on the first in-region provider that serves it, for both front doors.

`open_chat_stream` is the one copy of "try the model's providers in order until one yields
its first chunk" (failover ends once a provider has served its first chunk: from then on, a
break is the stream's error, not a reason to ask another provider). The gateway relays the
bytes as they come; the workspace reads them with `ChatDeltas` to show and keep the reply.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from .providers.base import Provider
from .routing import ModelRouter
from .usage import token_counts

__all__ = ["ChatDeltas", "OpenedStream", "open_chat_stream"]


@dataclass(slots=True)
class OpenedStream:
    provider: Provider
    chunks: AsyncGenerator[bytes, None]
    first: bytes  # the first chunk, already read (b"" for an empty stream)


async def open_chat_stream(router: ModelRouter, model: str, providers: Sequence[Provider],
                           body: bytes, parsed: dict[str, Any]) -> OpenedStream:
    """The first provider's stream that yields a chunk. Raises what the router raises when
    none can (503 `no_in_region_provider` / `region_busy`) and `UpstreamRejected` for an
    upstream 4xx."""

    async def attempt(provider: Provider) -> tuple[AsyncGenerator[bytes, None], bytes]:
        chunks = provider.chat_stream(body, parsed)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        except BaseException:
            await chunks.aclose()
            raise
        return chunks, first

    provider, (chunks, first) = await router.first_available(model, providers, attempt)
    return OpenedStream(provider, chunks, first)


class ChatDeltas:
    """Reads an OpenAI chat stream (whole SSE events, as providers yield them): the text of
    each chunk's first choice, the finish reason and the token counts. Events that are not
    JSON objects (and `[DONE]`) are skipped; a provider's error event is kept in `error`."""

    __slots__ = ("_pending", "completion_tokens", "error", "finish_reason", "prompt_tokens")

    def __init__(self) -> None:
        self._pending = b""
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.error: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> str:
        """The text this chunk adds (may be empty)."""
        data = self._pending + chunk
        *events, self._pending = data.replace(b"\r\n", b"\n").split(b"\n\n")
        return "".join(self._event_text(event) for event in events)

    def _event_text(self, event: bytes) -> str:
        payload = b"".join(line[5:].lstrip() for line in event.split(b"\n")
                           if line.startswith(b"data:"))
        if not payload or payload == b"[DONE]":
            return ""
        try:
            parsed = json.loads(payload)
        except ValueError:
            return ""
        if not isinstance(parsed, dict):
            return ""
        if isinstance(parsed.get("error"), dict):
            self.error = parsed["error"]
            return ""
        usage = parsed.get("usage")
        if usage:
            self.prompt_tokens, self.completion_tokens = token_counts(usage)
        choices = parsed.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return delta["content"]  # type: ignore[no-any-return]
        return ""
