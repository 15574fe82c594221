"""Per-key request and token limits, with OpenAI's `x-ratelimit-*` headers.

`RateLimiter` is the protocol the gateway calls: `acquire` before a request (refuses when
the key has used its requests, or already its tokens, in the window) and `charge` after it,
with the tokens the answer reported. `InMemoryRateLimiter` keeps one fixed one-minute window
per key in this process; a shared (Redis) implementation can fill the same protocol when a
region runs several replicas. Keys without limits cost one dictionary-free check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from domicile.errors import RateLimited, TokenRateLimited
from domicile.tenancy.grants import ApiKeyGrant

from .http import Headers

__all__ = [
    "InMemoryRateLimiter",
    "RateLimiter",
]

WINDOW_S = 60.0
_NO_HEADERS: Headers = []


class RateLimiter(Protocol):
    async def acquire(self, grant: ApiKeyGrant) -> Headers:
        """Count one request; the rate-limit headers for the answer. Raises
        `RateLimited` when the key is over a limit."""
        ...

    async def charge(self, grant: ApiKeyGrant, tokens: int) -> None:
        """Add the tokens a finished request used."""
        ...


def _duration(seconds: float) -> bytes:
    """OpenAI's reset format: `20ms`, `1s`, `59.5s`."""
    if seconds < 1:
        return b"%dms" % max(0, int(seconds * 1000))
    return (f"{seconds:.3f}".rstrip("0").rstrip(".") + "s").encode()


class _Window:
    __slots__ = ("requests", "start", "tokens")

    def __init__(self, start: float) -> None:
        self.start = start
        self.requests = 0
        self.tokens = 0


class InMemoryRateLimiter:
    """Fixed one-minute windows per key, starting at the key's first request."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._windows: dict[str, _Window] = {}

    def _window(self, key_id: str, now: float) -> _Window:
        window = self._windows.get(key_id)
        if window is None or now - window.start >= WINDOW_S:
            if window is None and len(self._windows) >= self._max_keys:
                self._prune(now)
            window = self._windows[key_id] = _Window(now)
        return window

    def _prune(self, now: float) -> None:
        for key_id in [k for k, w in self._windows.items() if now - w.start >= WINDOW_S]:
            del self._windows[key_id]

    async def acquire(self, grant: ApiKeyGrant) -> Headers:
        rpm, tpm = grant.rpm_limit, grant.tpm_limit
        if rpm is None and tpm is None:
            return _NO_HEADERS
        now = self._clock()
        window = self._window(grant.key_id, now)
        reset = window.start + WINDOW_S - now
        if rpm is not None and window.requests >= rpm:
            raise RateLimited(
                f"Rate limit reached for requests on key {grant.key_id}: limit {rpm} / min. "
                f"Please try again in {math.ceil(reset)}s.",
                headers=self._headers(window, rpm, tpm, reset, retry=True),
            )
        if tpm is not None and window.tokens >= tpm:
            raise TokenRateLimited(
                f"Rate limit reached for tokens on key {grant.key_id}: limit {tpm} / min, "
                f"used {window.tokens}. Please try again in {math.ceil(reset)}s.",
                headers=self._headers(window, rpm, tpm, reset, retry=True),
            )
        window.requests += 1
        return self._headers(window, rpm, tpm, reset, retry=False)

    async def charge(self, grant: ApiKeyGrant, tokens: int) -> None:
        if grant.tpm_limit is None or tokens <= 0:
            return
        self._window(grant.key_id, self._clock()).tokens += tokens

    @staticmethod
    def _headers(window: _Window, rpm: int | None, tpm: int | None, reset: float,
                 *, retry: bool) -> Headers:
        headers: Headers = []
        reset_at = _duration(reset)
        if rpm is not None:
            headers += [
                (b"x-ratelimit-limit-requests", b"%d" % rpm),
                (b"x-ratelimit-remaining-requests", b"%d" % max(0, rpm - window.requests)),
                (b"x-ratelimit-reset-requests", reset_at),
            ]
        if tpm is not None:
            headers += [
                (b"x-ratelimit-limit-tokens", b"%d" % tpm),
                (b"x-ratelimit-remaining-tokens", b"%d" % max(0, tpm - window.tokens)),
                (b"x-ratelimit-reset-tokens", reset_at),
            ]
        if retry:
            headers.append((b"retry-after", b"%d" % max(1, math.ceil(reset))))
        return headers
