"""Tiny ASGI helpers for the gateway's hot path, and `Exchange`: one request as handled.

Plain ASGI, no framework: reading a body, sending bytes, rendering a `DomicileError` in
OpenAI's error shape. Every response the gateway sends goes through `Exchange`, which adds
the transparency headers (`x-domicile-region`, `x-domicile-provider`, `x-request-id`) and
any rate-limit headers, errors included.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from domicile.errors import BodyTooLarge, DomicileError, InvalidInput
from domicile.tenancy.grants import ApiKeyGrant

__all__ = [
    "JSON",
    "MAX_JSON_BODY",
    "MAX_JSON_DEPTH",
    "UNKNOWN_ROUTE",
    "ClientDisconnected",
    "Exchange",
    "Headers",
    "Receive",
    "Scope",
    "Send",
    "dump_json",
    "header",
    "loads_strict",
    "mark_retrieved",
    "model_of",
    "parse_json_object",
    "until_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"
MAX_JSON_BODY = 32 * 1024 * 1024
MAX_JSON_DEPTH = 128
# What usage metadata keeps as the endpoint of a path no route serves (a path is client text).
UNKNOWN_ROUTE = "(unknown)"
_NO_HEADERS: Headers = []
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before its request was read."""


def dump_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class _NonFiniteNumber(ValueError):
    """`NaN`, `Infinity`, `-Infinity`, or a literal too large for a float (`1e400`): Python's
    parser takes them (as nan and inf), JSON has no such numbers."""


def _refuse_constant(name: str) -> float:
    raise _NonFiniteNumber(name)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NonFiniteNumber("overflow")
    return value


# A float literal costs one Python call (`_finite_float`: 1e400 parses to inf otherwise); a
# request holds few of them, and a scan of every body for big exponents would cost more.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
# Answers may hold many floats (logprobs): NaN and Infinity are refused, in C.
_ANSWER_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
# A surrogate escape without its other half (a pair decodes to one code point and is fine).
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _decode(body: bytes) -> Any:
    """Strict UTF-8 JSON; `_NonFiniteNumber` for a number JSON does not have."""
    return _DECODER.decode(body.decode("utf-8"))


def loads_strict(data: bytes) -> Any:
    """An upstream's JSON answer: UTF-8, no NaN or Infinity (ValueError otherwise)."""
    return _ANSWER_DECODER.decode(data.decode("utf-8"))


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request's one JSON parse: strict UTF-8 JSON, one object, every number finite, no
    lone surrogate, nested at most `MAX_JSON_DEPTH` deep. Anything else is a 400 that names
    the parameter where it can (never echoing the text)."""
    try:
        parsed = _decode(body)
    except UnicodeDecodeError:
        raise InvalidInput("The request body must be JSON encoded as UTF-8.") from None
    except _NonFiniteNumber:
        raise InvalidInput("Numbers must be finite: NaN, Infinity and numbers too large for "
                           "a double are not JSON.", param=_param_with_non_finite(body)) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise InvalidInput("We could not parse the JSON body of your request.") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("The JSON body of your request must be an object.")
    # The exact checks run only when a scan of the bytes (in C) says a body could fail them.
    if (b"\\" in body and (b"\\ud" in body or b"\\uD" in body)  # one memchr, mostly
            and _LONE_SURROGATE.search(body) is not None):
        _refuse_lone_surrogates(parsed)
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _deeper_than(
            parsed, MAX_JSON_DEPTH):
        raise _too_deep()
    return parsed


def _too_deep() -> InvalidInput:
    return InvalidInput(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")


def _param_with_non_finite(body: bytes) -> str | None:
    """The top-level parameter holding a non-finite number (the rare, refused case)."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    for key, value in parsed.items():
        pending = [value]
        while pending:
            item = pending.pop()
            if isinstance(item, float) and not math.isfinite(item):
                return str(key) if str(key).isascii() else None
            if isinstance(item, dict):
                pending.extend(item.values())
            elif isinstance(item, list):
                pending.extend(item)
    return None


def _refuse_lone_surrogates(parsed: dict[str, Any]) -> None:
    """A 400 naming the parameter that holds a lone surrogate: such a string cannot be
    encoded, forwarded or stored. (The byte scan also matches an escaped backslash followed
    by the letters `ud800`, which is fine text: hence this exact check.)"""
    for key, value in parsed.items():
        try:
            key.encode()
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            param = key if key.isascii() else None
            raise InvalidInput("The request holds text that is not valid Unicode (a lone "
                               "surrogate).", param=param) from None


def _deeper_than(value: object, limit: int) -> bool:
    """Whether a parsed value nests more than `limit` levels (the value itself is level 1).

    Breadth-first, one level at a time, descending only into objects and arrays; a
    container's children are typed in C (`set(map(type, ...))`) so an array of numbers or
    strings costs no Python step per item. The cost follows the number of containers, as
    the parse's does."""
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            kinds = set(map(type, children))
            if dict in kinds or list in kinds:
                below.extend(c for c in children if type(c) is dict or type(c) is list)
        level = below
        depth += 1
    return False


def model_of(parsed: dict[str, Any]) -> str:
    model = parsed.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("You must provide a model parameter.", param="model")
    return model


def mark_retrieved(task: asyncio.Future[Any]) -> None:
    """A done-callback: mark a background task's exception as seen, or asyncio would log it
    (message and all) when the task is collected. Its owner deals with the failure."""
    if not task.cancelled():
        task.exception()


async def until_disconnect(receive: Receive) -> None:
    """Returns when the client has gone (call only once the request body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's value (ASGI header names are lowercase)."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


class Exchange:
    """One request and its answer: what handlers need to reply, and what usage records."""

    __slots__ = (
        "completion_tokens", "endpoint", "extra_headers", "grant", "model", "prompt_tokens",
        "provider", "receive", "region_header", "request_id", "response_started", "scope",
        "send", "started", "status",
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
        ]
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
