"""`Exchange`: one gateway request as handled, on the gateway's hot path.

Plain ASGI, no framework: reading a body, sending bytes, rendering a `DomicileError` in
OpenAI's error shape. Every response the gateway sends goes through `Exchange`, which adds
the transparency headers (`x-domicile-region`, `x-domicile-provider`, `x-request-id`) and
any rate-limit headers, errors included. The ASGI helpers and the strict JSON parse it uses
are shared with the workspace (`domicile.web`) and re-exported here.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable
from typing import TypeVar

from domicile.errors import BodyTooLarge, DomicileError, MethodNotAllowed
from domicile.tenancy.grants import ApiKeyGrant
from domicile.web.asgi import (
    ClientDisconnected,
    Message,
    Receive,
    Scope,
    Send,
    header,
    mark_retrieved,
    until_disconnect,
)
from domicile.web.jsonbody import (
    MAX_JSON_BODY,
    MAX_JSON_DEPTH,
    dump_json,
    loads_strict,
    model_of,
    parse_json_object,
)

__all__ = [
    "EVENT_STREAM",
    "JSON",
    "MAX_JSON_BODY",
    "MAX_JSON_DEPTH",
    "UNKNOWN_ROUTE",
    "ClientDisconnected",
    "Exchange",
    "Headers",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "dump_json",
    "header",
    "loads_strict",
    "mark_retrieved",
    "model_of",
    "parse_json_object",
    "refused_unless_get",
    "until_disconnect",
]

Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"
# What usage metadata keeps as the endpoint of a path no route serves (a path is client text).
UNKNOWN_ROUTE = "(unknown)"
_NO_HEADERS: Headers = []
# OpenAI's rule for `X-Client-Request-Id`: ASCII, at most 512 characters.
_CLIENT_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,512}")
T = TypeVar("T")


class Exchange:
    """One request and its answer: what handlers need to reply, and what usage records."""

    __slots__ = (
        "completion_tokens", "endpoint", "extra_headers", "grant", "model", "params",
        "prompt_tokens", "provider", "receive", "region_header", "request_id",
        "response_started", "scope", "send", "started", "status",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, region_header: bytes) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.region_header = region_header
        # Unique, not secret: a PRNG draw costs far less than a system call (os.urandom).
        self.request_id = f"req_{random.getrandbits(96):024x}"
        self.started = time.perf_counter()
        self.endpoint = UNKNOWN_ROUTE  # the route's template, once known: never the raw path
        self.params: tuple[str, ...] = ()  # the path's parameters, in the template's order
        self.grant: ApiKeyGrant | None = None
        self.model = ""
        self.provider: str | None = None
        self.status = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.extra_headers: Headers = _NO_HEADERS
        self.response_started = False

    def headers(self, content_type: bytes, length: int | None) -> Headers:
        headers = [
            (b"content-type", content_type),
            (b"x-domicile-region", self.region_header),
            (b"x-domicile-provider",
             self.provider.encode() if self.provider is not None else b"none"),
            (b"x-request-id", self.request_id.encode()),
            # As OpenAI's: the time until the answer began (a stream's first byte).
            (b"openai-processing-ms",
             b"%d" % int((time.perf_counter() - self.started) * 1000)),
        ]
        client_id = header(self.scope, b"x-client-request-id")
        if client_id is not None and _CLIENT_REQUEST_ID.fullmatch(client_id):
            # Echoed to the client that chose it, never logged nor kept: it is client text.
            headers.append((b"x-client-request-id", client_id))
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        if self.extra_headers:
            headers.extend(self.extra_headers)
        return headers

    async def read_body(self, limit: int = MAX_JSON_BODY) -> bytes:
        receive = self.receive
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
            return body
        parts = bytearray(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            parts += message.get("body", b"")
            if len(parts) > limit:
                raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
            if not message.get("more_body", False):
                return bytes(parts)

    async def unless_disconnected(self, work: Awaitable[T]) -> T:
        """`work`'s result, once the body has been read; if the client goes away first, the
        work is cancelled (an in-process model stops, an upstream request is closed), allowed
        to unwind (what it holds is released before the caller goes on), and
        `ClientDisconnected` is raised."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(until_disconnect(self.receive))
        watch.add_done_callback(mark_retrieved)
        try:
            await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled ourselves: take the work down with us
            task.cancel()
            task.add_done_callback(mark_retrieved)
            raise
        finally:
            watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
            mark_retrieved(task)
            raise ClientDisconnected
        return task.result()

    async def respond(self, status: int, body: bytes, content_type: bytes = JSON) -> None:
        self.status = status
        self.response_started = True
        await self.send({"type": "http.response.start", "status": status,
                         "headers": self.headers(content_type, len(body))})
        await self.send({"type": "http.response.body", "body": body})

    async def respond_json(self, value: object, status: int = 200) -> None:
        await self.respond(status, dump_json(value))

    async def fail(self, error: DomicileError, headers: Headers | None = None) -> None:
        """Render an error in OpenAI's shape, unless the answer has already begun."""
        if headers:
            self.extra_headers = [*self.extra_headers, *headers]
        if self.response_started:
            return
        await self.respond(error.status, error.body())

    async def start_stream(self, content_type: bytes = EVENT_STREAM,
                           extra: Headers | None = None) -> None:
        self.status = 200
        self.response_started = True
        headers = self.headers(content_type, None)
        headers.append((b"cache-control", b"no-cache"))
        if extra:
            headers.extend(extra)
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def stream(self, chunk: bytes) -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end_stream(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


async def refused_unless_get(call: Exchange) -> bool:
    """For a public document (`/healthz`, `/openapi.json`): a method other than GET or HEAD
    is answered 405 here; True when it was."""
    method = call.scope["method"]
    if method in ("GET", "HEAD"):
        return False
    refused = MethodNotAllowed(
        f"Method {method} is not allowed on this path (allowed: GET, HEAD).",
        headers=((b"allow", b"GET, HEAD"),))
    await call.fail(refused, list(refused.headers))
    return True
