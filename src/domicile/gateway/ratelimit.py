"""Per-key request and token limits, with OpenAI's `x-ratelimit-*` headers.

`RateLimiter` is the protocol the gateway calls: `acquire` before a request (refuses when
the key has used its requests, or already its tokens, in the window) and `charge` after it,
with the tokens the answer reported. `InMemoryRateLimiter` (the embedded default) keeps one
fixed one-minute window per key in this process; `RedisRateLimiter` keeps token buckets in
the region's Redis (`tenancy.limits`), shared by every replica. `rate_limiter_for(region)`
picks one from the region's `redis_url`. Keys without limits cost one check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from domicile.config import RegionSettings
from domicile.errors import RateLimited, TokenRateLimited
from domicile.tenancy.grants import ApiKeyGrant
from domicile.tenancy.limits import RedisTokenBuckets, retry_seconds

from .http import Headers

__all__ = [
    "InMemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "rate_limiter_for",
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

    async def aclose(self) -> None:
        """Release what the limiter holds (connections), at the app's shutdown."""
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

    async def aclose(self) -> None:
        """Nothing to release: the windows live in this process."""

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
        return _limit_headers(rpm, rpm - window.requests if rpm is not None else 0, reset,
                              tpm, tpm - window.tokens if tpm is not None else 0, reset,
                              retry_after=reset if retry else None)


def _limit_headers(rpm: int | None, requests_left: int, requests_reset: float,
                   tpm: int | None, tokens_left: int, tokens_reset: float, *,
                   retry_after: float | None) -> Headers:
    """OpenAI's headers for a key's limits (and `retry-after` on a refusal)."""
    headers: Headers = []
    if rpm is not None:
        headers += [
            (b"x-ratelimit-limit-requests", b"%d" % rpm),
            (b"x-ratelimit-remaining-requests", b"%d" % max(0, requests_left)),
            (b"x-ratelimit-reset-requests", _duration(requests_reset)),
        ]
    if tpm is not None:
        headers += [
            (b"x-ratelimit-limit-tokens", b"%d" % tpm),
            (b"x-ratelimit-remaining-tokens", b"%d" % max(0, tokens_left)),
            (b"x-ratelimit-reset-tokens", _duration(tokens_reset)),
        ]
    if retry_after is not None:
        headers.append((b"retry-after", b"%d" % retry_seconds(retry_after)))
    return headers


class RedisRateLimiter:
    """Token buckets per key in the region's Redis, shared by all its replicas.

    A key with `rpm` requests a minute holds up to `rpm` requests and gets them back at
    `rpm`/min, continuously; its tokens likewise at `tpm`/min. `acquire` takes a request
    (refused when less than one is left, or when the tokens are used up: at or below zero);
    `charge` takes the tokens a finished request used, and may leave the bucket below zero
    so that the next requests are refused until it refills past zero: one atomic Lua script
    per decision, refilled by Redis's own clock (`tenancy.limits`).

    Differences from `InMemoryRateLimiter`'s fixed window, same headers: a bucket gives
    requests back one by one instead of all at the window's end, so
    `x-ratelimit-reset-*` is the time until that bucket is full again (a key that made one
    request of 60 a minute reads `1s`, not `60s`) and `retry-after` the time until one
    request (or a positive token balance) is back, at least 1 s. A burst of `rpm` requests
    is admitted at once, as in the window; the sustained rate is the same.

    If Redis is down (refused, timed out, any Redis error): requests keep flowing, each
    replica limiting on its own with `fallback` (per-process windows, which start empty:
    while it lasts, a key can get up to its limit from each replica). Every decision made
    that way counts in `domicile_rate_limit_fallbacks_total{region}`; the outage is logged
    once, with the error's type; a circuit breaker tries Redis again once every
    `retry_after_failure_s` and uses it as soon as it answers (docs/OPERATIONS.md).
    """

    def __init__(self, redis_url: str, region: str, *, key_prefix: str = "domicile:limits",
                 fallback: RateLimiter | None = None, window_s: float = WINDOW_S,
                 socket_timeout_s: float = 0.25, retry_after_failure_s: float = 5.0) -> None:
        self._buckets = RedisTokenBuckets(
            redis_url, region, key_prefix=key_prefix, what="gateway rate limits",
            window_s=window_s, socket_timeout_s=socket_timeout_s,
            retry_after_failure_s=retry_after_failure_s)
        self._fallback: RateLimiter = fallback or InMemoryRateLimiter()

    @property
    def buckets(self) -> RedisTokenBuckets:
        return self._buckets

    async def acquire(self, grant: ApiKeyGrant) -> Headers:
        rpm, tpm = grant.rpm_limit, grant.tpm_limit
        if rpm is None and tpm is None:
            return _NO_HEADERS
        decision = await self._buckets.take(f"key:{grant.key_id}", requests=rpm, tokens=tpm)
        if decision is None:
            return await self._fallback.acquire(grant)
        headers = _limit_headers(
            rpm, decision.requests_left, decision.requests_reset_s,
            tpm, decision.tokens_left, decision.tokens_reset_s,
            retry_after=None if decision.admitted else decision.retry_after_s)
        wait = retry_seconds(decision.retry_after_s)
        if decision.refused == "requests":
            raise RateLimited(
                f"Rate limit reached for requests on key {grant.key_id}: limit {rpm} / min. "
                f"Please try again in {wait}s.", headers=headers)
        if decision.refused == "tokens":
            assert tpm is not None
            raise TokenRateLimited(
                f"Rate limit reached for tokens on key {grant.key_id}: limit {tpm} / min, "
                f"used {tpm - decision.tokens_left}. Please try again in {wait}s.",
                headers=headers)
        return headers

    async def charge(self, grant: ApiKeyGrant, tokens: int) -> None:
        if grant.tpm_limit is None or tokens <= 0:
            return
        if not await self._buckets.charge(f"key:{grant.key_id}", tokens_limit=grant.tpm_limit,
                                          tokens=tokens):
            await self._fallback.charge(grant, tokens)

    async def aclose(self) -> None:
        """Close the connections to Redis (at the app's shutdown)."""
        await self._buckets.aclose()


def rate_limiter_for(region: RegionSettings) -> RateLimiter:
    """The region's limiter: shared in Redis when it has a `redis_url`, else in memory."""
    if region.redis_url is None:
        return InMemoryRateLimiter()
    return RedisRateLimiter(region.redis_url, region.name)
