"""The outermost layer the Starlette front doors (the workspace's API, the admin API) share: a
request id for every request, every error in the one shape, bounded bodies, and nothing a
client sent in a log line (an unexpected exception is logged by its type, the request id and
the route's template only: its message may quote content, G4)."""

from __future__ import annotations

import contextlib
import logging
import random
import re

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Router

from domicile.errors import BodyTooLarge, DomicileError, InvalidInput, MethodNotAllowed, NotFound
from domicile.storage.faults import store_fault
from domicile.web.asgi import Message, Receive, Scope, Send

__all__ = ["answerable", "error_response", "guard", "new_request_id", "read_bounded",
           "validation_error"]

_DIGITS = re.compile(r"[0-9]{1,12}")


def new_request_id() -> str:
    return f"req_{random.getrandbits(96):024x}"


def error_response(error: DomicileError, request_id: str) -> Response:
    headers = {name.decode(): value.decode() for name, value in error.headers}
    headers["x-request-id"] = request_id
    return Response(error.body(), error.status, headers=headers, media_type="application/json")


def validation_error(error: ValidationError) -> InvalidInput:
    """A pydantic refusal of a body as the client is told it, without quoting the body."""
    first = error.errors()[0]
    if first.get("type") == "extra_forbidden":
        # The name of a field we do not know is the client's text: not repeated.
        return InvalidInput("The body has a field this endpoint does not take.")
    param = ".".join(str(part) for part in first.get("loc", ())) or None
    # pydantic's message says what was expected; it never quotes the value (we drop `input`).
    return InvalidInput(f"Invalid `{param}`: {first.get('msg', 'invalid value')}."
                        if param else "The request body is not valid.", param=param)


async def read_bounded(request: Request, limit: int, what: str = "request body") -> bytes:
    """The whole body, refused (413) past `limit` bytes: by its declared length before a byte
    is read, else as soon as it passes."""
    declared = request.headers.get("content-length")
    if declared is not None and _DIGITS.fullmatch(declared) and int(declared) > limit:
        raise BodyTooLarge(f"The {what} is larger than {limit} bytes.")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge(f"The {what} is larger than {limit} bytes.")
    return bytes(data)


def answerable(exc: Exception, request_id: str, scope: Scope, *, api: str,
               log: logging.Logger) -> DomicileError:
    """An exception as the error a client is told: ours as it is, Starlette's 404/405 in our
    shape, a store fault as 503/507 (logged by `store_fault`), anything else logged by its
    type, the request id and the route's template only."""
    if isinstance(exc, DomicileError):
        return exc
    if isinstance(exc, HTTPException):
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            return MethodNotAllowed(f"Method {scope.get('method')} is not allowed here "
                                    f"(allowed: {allow}).", headers=((b"allow", allow.encode()),))
        return NotFound(f"Invalid URL: no such {api} route.")
    fault = store_fault(exc, request_id)
    if fault is None:
        template = getattr(scope.get("route"), "path", "(unknown)")
        log.error("unhandled %s in request %s (%s %s)", type(exc).__name__, request_id,
                  scope.get("method"), template)
        fault = DomicileError("The server had an error while processing your request "
                              f"(request id {request_id}).")
    return fault


async def guard(router: Router, owner: object, scope: Scope, receive: Receive, send: Send, *,
                api: str, log: logging.Logger) -> None:
    """Serve one HTTP request through `router` with a request id (`scope["state"]`), every
    error answered in the one shape unless an answer had begun. `owner` becomes
    `scope["app"]`, so that Starlette's router raises its 404/405 for this layer to render."""
    request_id = new_request_id()
    scope.setdefault("state", {})["request_id"] = request_id
    scope["app"] = owner
    started = False

    async def tracked(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await router(scope, receive, tracked)
    except Exception as exc:
        error = answerable(exc, request_id, scope, api=api, log=log)
        if not started:
            with contextlib.suppress(Exception):
                await error_response(error, request_id)(scope, receive, send)
