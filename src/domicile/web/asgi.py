"""Plain ASGI types and helpers, shared by the front doors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = [
    "ClientDisconnected",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "header",
    "mark_retrieved",
    "until_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientDisconnected(Exception):
    """The client went away before its request was read."""


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


