"""Token buckets in Redis, shared by every replica of a region: the one atomic step under the
gateway's per-key limits (`gateway.ratelimit.RedisRateLimiter`) and the workspace's messages
per member (`workspace.chat.MessageLimiter`).

Each limited thing (an API key, a member) is one Redis hash holding a request bucket and a
token bucket. One Lua script (`BUCKET_SCRIPT`) refills both from the time that passed, checks
and takes, and writes them back: atomic, so concurrent requests on any replica never admit
more than the limit. The time is Redis's own (`TIME`), so replicas whose clocks disagree
still agree on the refill. A bucket holds `limit` and refills `limit` per window (a minute);
a hash left alone expires once its buckets would be full again (absent means full).

Redis down (refused, timed out, any Redis error): `take` and `charge` answer None/False and
the caller decides in its own process (the in-memory limiters); each decision made that way
counts in `domicile_rate_limit_fallbacks_total{region}`. A circuit breaker keeps a dead Redis
to one failed attempt per `retry_after_failure_s` (one probe at a time, the rest decide in
process meanwhile), and an outage is logged once, with the error's type only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from domicile.observability.metrics import RATE_LIMIT_FALLBACKS

__all__ = ["BUCKET_SCRIPT", "BucketDecision", "RedisTokenBuckets", "retry_seconds"]

log = logging.getLogger("domicile.limits")

# KEYS[1]: the bucket hash (fields r: requests left, t: tokens left, at: last refill, ms).
# ARGV: request limit, token limit (-1: none), window (ms), take (1: check and count a
# request, 0: no), tokens to charge (subtracted after the check; the level may go negative,
# down to -limit: one window's worth of debt at most, so that one huge answer locks a key out
# for one window, as the in-memory limiter's fixed window would, and the hash lives at most
# two windows; a level stored below that, by an older script, is clamped when next read).
# Returns: verdict (0 admitted, 1 over requests, 2 over tokens), whole requests left, whole
# tokens left, ms until the request / token bucket is full again, ms until the refused
# bucket admits again (0 when admitted). Limits of 0 refuse everything.
BUCKET_SCRIPT = """
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local take = tonumber(ARGV[4])
local charge = tonumber(ARGV[5])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local stored = redis.call('HMGET', KEYS[1], 'r', 't', 'at')
local elapsed = math.max(0, now - (tonumber(stored[3]) or now))

local function refill(limit, level)
  if limit < 0 then return nil end
  level = math.max(-limit, tonumber(level) or limit)
  return math.min(limit, level + elapsed * limit / window)
end
local function until_full(limit, level)
  if level == nil then return 0 end
  if limit <= 0 then return window end
  return math.max(0, (limit - level) * window / limit)
end

local r = refill(rpm, stored[1])
local t = refill(tpm, stored[2])
local verdict, wait = 0, 0
if take == 1 then
  if r ~= nil and r < 1 then
    verdict = 1
    wait = (rpm > 0) and ((1 - r) * window / rpm) or window
  elseif t ~= nil and t <= 0 then
    verdict = 2
    wait = (tpm > 0) and (-t * window / tpm + 1) or window
  elseif r ~= nil then
    r = r - 1
  end
end
if t ~= nil and charge > 0 then t = math.max(-tpm, t - charge) end

local r_full, t_full = until_full(rpm, r), until_full(tpm, t)
local fields = {'at', string.format('%.3f', now)}
if r ~= nil then table.insert(fields, 'r'); table.insert(fields, string.format('%.6f', r)) end
if t ~= nil then table.insert(fields, 't'); table.insert(fields, string.format('%.6f', t)) end
redis.call('HSET', KEYS[1], unpack(fields))
-- At most two windows (+1 s): the token level is at least -tpm, the request level at least 0.
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(r_full, t_full)) + 1000)
return {verdict, math.floor(r or 0), math.floor(t or 0), math.ceil(r_full), math.ceil(t_full),
        math.ceil(wait)}
"""

_VERDICTS: dict[int, Literal["requests", "tokens"] | None] = {
    0: None, 1: "requests", 2: "tokens"}


@dataclass(frozen=True, slots=True)
class BucketDecision:
    """What the shared buckets said about one request (or one charge)."""

    refused: Literal["requests", "tokens"] | None  # None: admitted
    requests_left: int  # whole requests left after this one (0 when there is no limit)
    tokens_left: int  # whole tokens left; negative after an overshooting charge
    requests_reset_s: float  # until the request bucket is full again
    tokens_reset_s: float  # until the token bucket is full again
    retry_after_s: float  # when refused: until the refused bucket admits again

    @property
    def admitted(self) -> bool:
        return self.refused is None


class RedisTokenBuckets:
    """The region's buckets in Redis at `redis_url`, under `<key_prefix>:<region>:`.

    `take(key, requests=…, tokens=…)` checks and counts one request; `charge(key, …)` takes
    tokens after it. Both answer None/False when Redis cannot be used, having counted the
    fallback decision: the caller then decides in its own process. `what` names the limits
    in the one warning an outage logs ("gateway rate limits", "workspace message limits").
    """

    def __init__(self, redis_url: str, region: str, *, key_prefix: str = "domicile:limits",
                 what: str = "rate limits", window_s: float = 60.0,
                 socket_timeout_s: float = 0.25, retry_after_failure_s: float = 5.0,
                 max_connections: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.region = region
        self._prefix = f"{key_prefix}:{region}:"
        self._what = what
        self._window_ms = window_s * 1000
        self._retry_after_failure_s = retry_after_failure_s
        self._clock = clock
        # Short timeouts and no retries: a slow or dead Redis must cost one quick failure,
        # then the breaker keeps requests off it (they are decided in process meanwhile).
        pool = aioredis.ConnectionPool.from_url(
            redis_url, max_connections=max_connections, socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s, retry=Retry(NoBackoff(), 0),
            health_check_interval=0)
        self._redis = aioredis.Redis.from_pool(pool)
        # A burst queues here for one of the pool's connections (as it would for a CPU): a
        # busy process is not a Redis outage, only Redis's own errors open the breaker.
        self._slots = asyncio.Semaphore(max_connections)
        self._script = self._redis.register_script(BUCKET_SCRIPT)
        self._closed_until = 0.0  # breaker: no Redis attempt before this (monotonic) time
        self._down = False  # in an outage (logged once, at its start)
        self.failures = 0  # Redis attempts that failed (the breaker keeps this low)

    async def take(self, key: str, *, requests: int | None,
                   tokens: int | None) -> BucketDecision | None:
        """Check and count one request on `key`; None: Redis unavailable, decide in
        process (counted in `domicile_rate_limit_fallbacks_total`)."""
        decision = await self._run(key, requests, tokens, take=True, charge=0)
        if decision is None:
            RATE_LIMIT_FALLBACKS.labels(self.region).inc()
        return decision

    async def charge(self, key: str, *, tokens_limit: int, tokens: int) -> bool:
        """Take `tokens` from `key`'s token bucket (it may go below zero, to -`tokens_limit`
        at most: requests are then refused until it refills above, one window at the
        longest). False: Redis unavailable, charge in process."""
        if tokens <= 0:
            return True
        return await self._run(key, None, tokens_limit, take=False, charge=tokens) is not None

    async def _run(self, key: str, requests: int | None, tokens: int | None, *,
                   take: bool, charge: int) -> BucketDecision | None:
        if self._clock() < self._closed_until:
            return None
        async with self._slots:
            now = self._clock()
            if now < self._closed_until:  # it failed while this one waited
                return None
            # One probe at a time while Redis is suspect: the others decide in process.
            if self._down:
                self._closed_until = now + self._retry_after_failure_s
            try:
                answer = await self._script(
                    keys=[self._prefix + key],
                    args=[-1 if requests is None else requests,
                          -1 if tokens is None else tokens,
                          self._window_ms, 1 if take else 0, charge])
            except (RedisError, OSError) as exc:
                self._failed(exc)
                return None
        if self._down:
            self._down = False
            self._closed_until = 0.0
            log.info("shared %s: Redis answers again in region %s", self._what, self.region)
        verdict, requests_left, tokens_left, requests_full, tokens_full, wait = (
            int(value) for value in answer)
        return BucketDecision(_VERDICTS[verdict], requests_left, tokens_left,
                              requests_full / 1000, tokens_full / 1000, wait / 1000)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self._closed_until = self._clock() + self._retry_after_failure_s
        if not self._down:
            self._down = True
            # The type only: a Redis error's message can carry the URL (and its password).
            log.warning("shared %s: Redis unavailable in region %s (%s); each process limits "
                        "on its own until it answers again", self._what, self.region,
                        type(exc).__name__)

    async def aclose(self) -> None:
        await self._redis.aclose()


def retry_seconds(seconds: float) -> int:
    """A `retry-after` value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
