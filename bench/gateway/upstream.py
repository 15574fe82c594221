"""A fast fake OpenAI upstream for the gateway benchmark (loopback only).

It is the fixed cost every contender pays, so it does as little as possible:

- ``POST /v1/chat/completions`` reads the body, looks for ``"stream": true`` with one
  byte regex (no JSON parse) and answers a pre-encoded chat completion with a usage
  object; with streaming it writes 5 SSE chunks one ``write`` each (the first at once),
  a usage chunk when ``"include_usage"`` appears in the body, then ``data: [DONE]``.
- ``GET /v1/models`` answers a pre-encoded model list.

Run: ``python upstream.py --port 18000`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal

import uvloop
from aiohttp import web

MODEL = "bench-model"
CREATED = 1_700_000_000

_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
    },
    separators=(",", ":"),
).encode()

MODELS = json.dumps(
    {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}],
    },
    separators=(",", ":"),
).encode()


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    obj = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


STREAM_CHUNKS: tuple[bytes, ...] = (
    _chunk({"role": "assistant", "content": "Hello"}, None),
    _chunk({"content": " from"}, None),
    _chunk({"content": " the bench"}, None),
    _chunk({"content": " upstream."}, None),
    _chunk({}, "stop"),
)
USAGE_CHUNK = (
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
        },
        separators=(",", ":"),
    ).encode()
    + b"\n\n"
)
DONE = b"data: [DONE]\n\n"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if _STREAM_RE.search(body) is None:
        return web.Response(body=COMPLETION, content_type="application/json")
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    for chunk in STREAM_CHUNKS:
        await resp.write(chunk)
    if b'"include_usage"' in body:
        await resp.write(USAGE_CHUNK)
    await resp.write(DONE)
    await resp.write_eof()
    return resp


async def models(_request: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream listening on http://127.0.0.1:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
