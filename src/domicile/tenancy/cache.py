"""`CredentialCache`: who a presented credential (an API key, a workspace token) belongs to,
remembered for a moment so the hot path asks the directory at most once a second per key.

A positive answer is reused for `ttl` seconds (1 s by default), a negative one never, so a
revoked credential stops working within `ttl` on every worker. Concurrent misses for one
credential share one directory lookup, run in a thread (the directory is a blocking database
call), in a task of its own so that one cancelled request cannot cancel the others waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from domicile.web.asgi import mark_retrieved

__all__ = ["CredentialCache"]

G = TypeVar("G")


class CredentialCache(Generic[G]):
    def __init__(self, lookup: Callable[[str], G | None], *, ttl: float = 1.0,
                 max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[G, float]] = {}
        self._inflight: dict[str, asyncio.Task[G | None]] = {}

    def __repr__(self) -> str:  # never the credentials it holds
        return f"{type(self).__name__}(entries={len(self._entries)})"

    def peek(self, secret: str) -> G | None:
        """The cached grant, without waiting: the hot path's common case."""
        entry = self._entries.get(secret)
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        return None

    async def lookup(self, secret: str) -> G | None:
        grant = self.peek(secret)
        if grant is not None:
            return grant
        task = self._inflight.get(secret)
        if task is None:
            task = asyncio.ensure_future(self._fetch(secret))
            task.add_done_callback(mark_retrieved)
            self._inflight[secret] = task
        return await asyncio.shield(task)

    async def _fetch(self, secret: str) -> G | None:
        try:
            grant = await asyncio.to_thread(self._lookup, secret)
        finally:
            del self._inflight[secret]
        if grant is None:
            self._entries.pop(secret, None)
        else:
            if len(self._entries) >= self._max_entries:
                self._evict()
            self._entries[secret] = (grant, self._clock() + self._ttl)
        return grant

    def _evict(self) -> None:
        now = self._clock()
        for secret in [s for s, (_, expires) in self._entries.items() if expires <= now]:
            del self._entries[secret]
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
