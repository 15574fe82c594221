"""A fake OpenAI upstream on a real loopback socket (aiohttp), for the gateway's tests.

It records every request it receives (raw bytes and headers) and can be told to misbehave:
answer 500, reject with 400, drop the connection, be slow, hold every request until the test
lets go (to fill a connection pool), answer 200 with a body that is not JSON, answer 429
with `retry-after` and `x-ratelimit-*`, stream slowly (held at a gate after the first
chunk), stream without end until the client goes away (and note that it did), or, after the
first chunk (and the gate), go silent, reset the connection, or close it without ending the
chunked body (optionally half-way through an event), or call functions (`tool_calls`)
instead of answering in text. Streams follow OpenAI: with
`stream_options.include_usage`, every chunk says `"usage": null` and a last chunk with empty
`choices` carries the usage. `tls` serves HTTPS with a certificate the test gives it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CREATED = 1_700_000_000
# How long a held request or a silent stream waits at most (the test has failed by then).
HOLD_LIMIT_S = 30.0
# What a 429 carries besides its body: the client should get all but the last.
LIMIT_HEADERS = {"retry-after": "7", "retry-after-ms": "7000",
                 "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                 "x-ratelimit-reset-requests": "7s", "x-upstream-internal": "not-for-clients"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Behaviour:
    # ok | fail (500) | reject (400) | drop (close the connection) | limit (429) |
    # garbage (200 with `garbage` as its body)
    mode: str = "ok"
    delay: float = 0.0  # seconds before answering
    hold: threading.Event | None = None  # every request: wait for it before answering
    garbage: bytes = b'{"id": "chatcmpl-fake", "choices": [{"message": {"content": "CANARY-'
    gate: threading.Event | None = None  # streaming: wait for it after the first chunk
    # streaming, after the first chunk (and the gate): finish | stall (say nothing more until
    # the client leaves) | reset (RST) | close (FIN before the chunked body's end) |
    # close-mid-event (half an event, then as close) | end (a clean end of the body, but no
    # `data: [DONE]`)
    then: str = "finish"
    endless: bool = False  # streaming: one chunk every 20 ms until the client leaves
    prompt_tokens: int = 11
    completion_tokens: int = 7
    event_end: bytes = b"\n\n"  # streaming: what ends each SSE event (b"\r\n\r\n" is legal too)
    # What a chat answer repeats: the last message's content, or the system message's (so a
    # test can see what a caller put in the system prompt, e.g. retrieved passages).
    echo: str = "last"
    # Function calls the model makes, as (name, arguments JSON), when the request offers
    # `tools` and its last message is not a tool's output (which is echoed like any other).
    # Streamed as OpenAI does: the call's id and name first, its arguments in two pieces.
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    finish: str = "stop"  # the finish_reason of a text answer (e.g. "length")


@dataclass
class FakeUpstream:
    name: str
    ssl_context: ssl.SSLContext | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[Received] = field(default_factory=list)
    chunks_sent: int = 0
    holding: int = 0  # requests waiting at `hold` right now
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.received.clear()
        self.chunks_sent = 0
        self.holding = 0
        self.stream_cancelled.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _misbehave(self, request: web.Request) -> tuple[web.StreamResponse | None, bytes]:
        body = await request.read()
        self.received.append(Received(request.path, dict(request.headers), body))
        b = self.behaviour
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.hold is not None:
            self.holding += 1
            try:
                await _wait_for(b.hold)
            finally:
                self.holding -= 1
        if b.mode == "garbage":
            return web.Response(body=b.garbage, content_type="application/json"), body
        if b.mode == "limit":
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                           "code": "rate_limit_exceeded"}},
                status=429, headers=LIMIT_HEADERS), body
        if b.mode == "fail":
            return web.json_response({"error": {"message": "upstream exploded",
                                                "type": "server_error", "param": None,
                                                "code": None}}, status=500), body
        if b.mode == "reject":
            return web.json_response({"error": {"message": f"{self.name} rejects this",
                                                "type": "invalid_request_error",
                                                "param": "messages", "code": "upstream_says_no"}},
                                     status=400), body
        if b.mode == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(), body
        return None, body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        answer, body = await self._misbehave(request)
        if answer is not None:
            return answer
        parsed = json.loads(body)
        said = parsed["messages"][-1] if self.behaviour.echo == "last" else next(
            (m for m in parsed["messages"] if m.get("role") == "system"), {"content": ""})
        text = f"{self.name} says: " + str(said.get("content"))
        b = self.behaviour
        calling = bool(b.tool_calls and parsed.get("tools")
                       and parsed["messages"][-1].get("role") != "tool")
        if parsed.get("stream"):
            if calling:
                return await self._stream_calls(request, parsed)
            return await self._stream(request, parsed, text)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calling:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": name, "arguments": arguments}}
                for i, (name, arguments) in enumerate(b.tool_calls)]}
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED,
            "model": parsed["model"], "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if calling else b.finish}],
            "usage": {"prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens,
                      "total_tokens": b.prompt_tokens + b.completion_tokens},
        })

    def _chunk(self, model: str, delta: dict[str, Any] | None, finish: str | None = None,
               usage: dict[str, int] | None = None, *, null_usage: bool = False) -> bytes:
        event: dict[str, Any] = {
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED,
            "model": model,
            "choices": [] if delta is None else [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage is not None or null_usage:  # as OpenAI: `"usage": null` when usage is asked
            event["usage"] = usage
        return b"data: " + json.dumps(event).encode() + self.behaviour.event_end

    async def _stream(self, request: web.Request, parsed: dict[str, Any],
                      text: str) -> web.StreamResponse:
        b = self.behaviour
        model = parsed["model"]
        with_usage = bool((parsed.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return self._chunk(model, delta, finish, null_usage=with_usage)

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = text.split(" ")
        try:
            await self._send(response, chunk({"role": "assistant", "content": words[0]}))
            if b.gate is not None:
                await _wait_for(b.gate)
            if b.then != "finish":
                return await self._break_off(request, response, chunk({"content": " half"}))
            if b.endless:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    await self._send(response, chunk({"content": " more"}))
                return response
            for word in words[1:]:
                await self._send(response, chunk({"content": " " + word}))
            await self._send(response, chunk({}, b.finish))
            if with_usage:
                await self._send(response, self._chunk(model, None, usage={
                    "prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens,
                    "total_tokens": b.prompt_tokens + b.completion_tokens}))
            await self._send(response, b"data: [DONE]" + b.event_end)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.stream_cancelled.set()
            raise
        return response

    async def _stream_calls(self, request: web.Request,
                            parsed: dict[str, Any]) -> web.StreamResponse:
        """A streamed answer of `Behaviour.tool_calls`, with usage when asked."""
        b = self.behaviour
        model = parsed["model"]
        with_usage = bool((parsed.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await self._send(response, self._chunk(model, {"role": "assistant", "content": None},
                                               null_usage=with_usage))
        for i, (name, arguments) in enumerate(b.tool_calls):
            half = len(arguments) // 2
            pieces = [{"index": i, "id": f"call_{i}", "type": "function",
                       "function": {"name": name, "arguments": ""}},
                      {"index": i, "function": {"arguments": arguments[:half]}},
                      {"index": i, "function": {"arguments": arguments[half:]}}]
            for piece in pieces:
                await self._send(response, self._chunk(model, {"tool_calls": [piece]},
                                                       null_usage=with_usage))
        await self._send(response, self._chunk(model, {}, "tool_calls", null_usage=with_usage))
        if with_usage:
            await self._send(response, self._chunk(model, None, usage={
                "prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens,
                "total_tokens": b.prompt_tokens + b.completion_tokens}))
        await self._send(response, b"data: [DONE]" + b.event_end)
        await response.write_eof()
        return response

    async def _break_off(self, request: web.Request, response: web.StreamResponse,
                         event: bytes) -> web.StreamResponse:
        """The stream's misbehaviour after its first chunk (`Behaviour.then`)."""
        transport = request.transport
        assert transport is not None
        then = self.behaviour.then
        if then == "stall":  # silent, until the client goes away
            deadline = time.monotonic() + HOLD_LIMIT_S
            while not transport.is_closing() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if transport.is_closing():
                self.stream_cancelled.set()
            return response
        if then == "end":
            await response.write_eof()
            return response
        if then == "close-mid-event":
            await self._send(response, event[: len(event) // 2])
            # Time for the gateway (same loop) to read the half before the FIN, or the two
            # may arrive together and the half never be read.
            await asyncio.sleep(0.05)
        if then == "reset":
            transport.abort()
        else:  # FIN once the bytes written are out: the chunked body has no end
            transport.close()
        return response

    async def _send(self, response: web.StreamResponse, chunk: bytes) -> None:
        await response.write(chunk)
        self.chunks_sent += 1

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        answer, body = await self._misbehave(request)
        if answer is not None:
            return answer
        parsed = json.loads(body)
        inputs = parsed["input"] if isinstance(parsed["input"], list) else [parsed["input"]]
        return web.json_response({
            "object": "list", "model": parsed["model"],
            "data": [{"object": "embedding", "index": i, "embedding": [0.5, 0.5, 0.0]}
                     for i in range(len(inputs))],
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
        })


async def _wait_for(event: threading.Event) -> None:
    """Until the test sets `event` (a thread's event: polled), at most `HOLD_LIMIT_S`."""
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not event.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
