"""Rate limits shared through Redis (`RedisRateLimiter`, `tenancy.limits`): on the machine's
real Redis (fixture `redis_url`, keys under a fresh prefix per test, never FLUSHDB), and on
throwaway `redis-server` processes for the outage cases. Two limiter instances stand for two
replicas of a region."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from domicile.config import RegionSettings, WorkspaceSettings
from domicile.errors import RateLimited, TokenRateLimited
from domicile.gateway import create_gateway_app
from domicile.gateway.ratelimit import (
    InMemoryRateLimiter,
    RedisRateLimiter,
    rate_limiter_for,
)
from domicile.observability.metrics import REGISTRY
from domicile.tenancy.grants import ApiKeyGrant, MemberGrant
from domicile.tenancy.limits import RedisTokenBuckets
from domicile.workspace.chat import MessageLimiter, message_limiter_for
from tests.gateway.support import (
    DictAuthenticator,
    LoopThread,
    MemoryUsageSink,
    ServedApp,
    grant,
    make_settings,
    provider,
)

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def fresh_prefix() -> str:
    return f"test:ratelimit:{uuid.uuid4().hex}"


def fresh_region() -> str:
    """A region label of its own, so that this test's fallback count is its own."""
    return f"r{uuid.uuid4().hex[:10]}"


def fallbacks(region: str) -> float:
    value = REGISTRY.get_sample_value("domicile_rate_limit_fallbacks_total", {"region": region})
    return value or 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def limiter(url: str, region: str, prefix: str, *, window_s: float = 60.0,
            retry_after_failure_s: float = 5.0) -> RedisRateLimiter:
    """A replica's limiter. Its socket timeout is generous (the default is 0.25 s): this
    machine is shared and busy, and a timed-out call would be decided in process, which the
    tests about sharing check never happened (`fallbacks(region) == 0`)."""
    return RedisRateLimiter(url, region, key_prefix=prefix, window_s=window_s,
                            socket_timeout_s=5.0, retry_after_failure_s=retry_after_failure_s)


def a_member() -> MemberGrant:
    return MemberGrant(workspace_id="ws_test", org_id="org_test",
                       user_id=f"usr_{uuid.uuid4().hex}", region="eu", role="member")


async def outcomes(limiter: RedisRateLimiter, key: ApiKeyGrant) -> bool:
    """True: admitted; False: refused (429)."""
    try:
        await limiter.acquire(key)
    except RateLimited:
        return False
    return True


class ThrowawayRedis:
    """A `redis-server` of this test's own on a loopback port, stopped and started again on
    the same port to stand for an outage."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self._process.poll() is not None:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1)


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    server = ThrowawayRedis(free_port())
    server.start()
    yield server
    server.stop()


# -- shared between replicas -------------------------------------------------------------------


async def test_two_replicas_share_one_request_limit(redis_url: str) -> None:
    region, prefix = fresh_region(), fresh_prefix()
    replicas = [limiter(redis_url, region, prefix), limiter(redis_url, region, prefix)]
    key = grant(f"key_{uuid.uuid4().hex}", rpm=5)
    admitted = [await outcomes(replicas[i % 2], key) for i in range(10)]
    assert admitted == [True] * 5 + [False] * 5
    other = grant(f"key_{uuid.uuid4().hex}", rpm=5)  # per key: another key is untouched
    assert await outcomes(replicas[1], other)
    assert fallbacks(region) == 0
    for replica in replicas:
        await replica.aclose()


async def test_concurrent_acquires_on_two_replicas_never_pass_the_limit(redis_url: str) -> None:
    """50 requests at once, spread over two replicas, for a limit of 20: exactly 20 pass
    (the check and the count are one atomic script, not a read then a write)."""
    region, prefix = fresh_region(), fresh_prefix()
    replicas = [limiter(redis_url, region, prefix), limiter(redis_url, region, prefix)]
    key = grant(f"key_{uuid.uuid4().hex}", rpm=20)
    admitted = await asyncio.gather(*(outcomes(replicas[i % 2], key) for i in range(50)))
    assert sum(admitted) == 20
    assert fallbacks(region) == 0  # every decision was Redis's
    for replica in replicas:
        await replica.aclose()


async def test_a_burst_bigger_than_the_pool_waits_its_turn_and_is_not_an_outage(
        redis_url: str) -> None:
    """50 decisions at once on 2 connections: they queue for Redis, none is decided in
    process (a busy process is not a Redis outage), and the limit still holds exactly."""
    region = fresh_region()
    buckets = RedisTokenBuckets(redis_url, region, key_prefix=fresh_prefix(),
                                socket_timeout_s=5.0, max_connections=2)
    decisions = await asyncio.gather(*(buckets.take("key:burst", requests=20, tokens=None)
                                       for _ in range(50)))
    assert None not in decisions
    assert sum(d.admitted for d in decisions if d is not None) == 20
    assert fallbacks(region) == 0 and buckets.failures == 0
    await buckets.aclose()


async def test_tokens_charged_on_one_replica_count_on_the_other(redis_url: str) -> None:
    region, prefix = fresh_region(), fresh_prefix()
    a, b = limiter(redis_url, region, prefix), limiter(redis_url, region, prefix)
    key = grant(f"key_{uuid.uuid4().hex}", tpm=100)
    await a.acquire(key)
    await a.charge(key, 60)
    assert dict(await b.acquire(key))[b"x-ratelimit-remaining-tokens"] == b"40"
    await b.charge(key, 60)  # a request may overshoot; the next one is refused, anywhere
    with pytest.raises(TokenRateLimited) as caught:
        await a.acquire(key)
    headers = dict(caught.value.headers)
    assert headers[b"x-ratelimit-remaining-tokens"] == b"0"
    assert int(headers[b"retry-after"]) >= 1
    assert caught.value.type == "tokens"
    assert "used 120" in caught.value.message
    assert fallbacks(region) == 0
    await a.aclose()
    await b.aclose()


async def test_a_huge_charge_locks_a_key_out_for_at_most_two_windows(redis_url: str) -> None:
    """A key's token debt is capped at one window's worth (the balance never goes below
    -tpm): one enormous answer, or a forged count, cannot lock the key out for longer than
    the in-memory limiter would (it forgives at the next window), nor keep its hash in Redis
    for ages. Refused until the debt is paid (one window), full again after two."""
    region, prefix = fresh_region(), fresh_prefix()
    shared = limiter(redis_url, region, prefix)
    key = grant(f"key_{uuid.uuid4().hex}", tpm=1000)
    await shared.acquire(key)
    await shared.charge(key, 10**15)
    client = redis.Redis.from_url(redis_url)
    stored = f"{prefix}:{region}:key:{key.key_id}"
    assert float(client.hget(stored, "t") or 0) == -1000  # the debt as stored: one window
    assert 0 < client.pttl(stored) <= 2 * 60_000 + 1000
    with pytest.raises(TokenRateLimited) as caught:
        await shared.acquire(key)
    headers = dict(caught.value.headers)
    assert 1 <= int(headers[b"retry-after"]) <= 61  # one window of debt, paid in a minute
    reset = headers[b"x-ratelimit-reset-tokens"].decode()  # full again after two windows
    assert reset.endswith("s") and float(reset.rstrip("s")) <= 120
    used = re.search(r"used (\d+)\.", caught.value.message)
    assert used is not None and 1900 <= int(used[1]) <= 2000  # the limit + one window's debt
    # Another huge charge on the capped debt changes nothing: still bounded.
    await shared.charge(key, 10**15)
    assert 0 < client.pttl(stored) <= 2 * 60_000 + 1000
    client.close()
    assert fallbacks(region) == 0
    await shared.aclose()


async def test_a_debt_stored_before_the_cap_is_clamped_when_next_read(redis_url: str) -> None:
    """A hash written by the uncapped script (a balance of -1e15) heals on the next
    decision: retry-after and the hash's TTL are bounded as for a new debt."""
    region, prefix = fresh_region(), fresh_prefix()
    shared = limiter(redis_url, region, prefix)
    key = grant(f"key_{uuid.uuid4().hex}", tpm=1000)
    client = redis.Redis.from_url(redis_url)
    stored = f"{prefix}:{region}:key:{key.key_id}"
    seconds, micros = client.time()
    now_ms = f"{seconds * 1000 + micros / 1000:.3f}"
    client.hset(stored, mapping={"t": "-1000000000000000", "at": now_ms})
    client.pexpire(stored, 10**12)
    with pytest.raises(TokenRateLimited) as caught:
        await shared.acquire(key)
    assert 1 <= int(dict(caught.value.headers)[b"retry-after"]) <= 61
    assert 0 < client.pttl(stored) <= 2 * 60_000 + 1000
    client.close()
    await shared.aclose()


async def test_headers_have_the_shape_of_the_in_memory_limiter(redis_url: str) -> None:
    region, prefix = fresh_region(), fresh_prefix()
    shared, local = limiter(redis_url, region, prefix), InMemoryRateLimiter()
    key = grant(f"key_{uuid.uuid4().hex}", rpm=2, tpm=1000)
    first, first_local = await shared.acquire(key), await local.acquire(key)
    assert [name for name, _ in first] == [name for name, _ in first_local]
    values = dict(first)
    assert values[b"x-ratelimit-limit-requests"] == b"2"
    assert values[b"x-ratelimit-remaining-requests"] == b"1"
    # A bucket of 2 a minute gives one request back in 30 s: full again then.
    reset = values[b"x-ratelimit-reset-requests"].decode()
    assert reset.endswith("s") and 29 <= float(reset.rstrip("s")) <= 30
    assert values[b"x-ratelimit-limit-tokens"] == b"1000"
    assert values[b"x-ratelimit-remaining-tokens"] == b"1000"
    assert values[b"x-ratelimit-reset-tokens"] == b"0ms"
    await shared.acquire(key)
    await local.acquire(key)
    with pytest.raises(RateLimited) as refused:
        await shared.acquire(key)
    with pytest.raises(RateLimited) as refused_local:
        await local.acquire(key)
    assert [n for n, _ in refused.value.headers] == [n for n, _ in refused_local.value.headers]
    refusal = dict(refused.value.headers)
    assert refusal[b"x-ratelimit-remaining-requests"] == b"0"
    assert 29 <= int(refusal[b"retry-after"]) <= 30  # until one request is back
    assert refused.value.type == "requests"
    assert fallbacks(region) == 0
    assert await shared.acquire(grant(f"key_{uuid.uuid4().hex}")) == []  # no limits
    await shared.aclose()


async def test_a_bucket_refills_by_redis_time_and_expires_when_idle(redis_url: str) -> None:
    """A 0.4 s window instead of a minute: poll with a deadline, no sleeping for a guess."""
    region, prefix = fresh_region(), fresh_prefix()
    shared = limiter(redis_url, region, prefix, window_s=0.4)
    key = grant(f"key_{uuid.uuid4().hex}", rpm=2)
    assert [await outcomes(shared, key) for _ in range(3)] == [True, True, False]
    client = redis.Redis.from_url(redis_url)
    stored = f"{prefix}:{region}:key:{key.key_id}"
    assert 0 < client.pttl(stored) <= 400 + 1000
    deadline = time.monotonic() + 20
    while not await outcomes(shared, key):  # one request comes back after 0.2 s
        assert time.monotonic() < deadline, "the bucket never refilled"
        await asyncio.sleep(0.02)
    while client.exists(stored):  # idle: gone once it would be full again (+1 s)
        assert time.monotonic() < deadline, "an idle bucket was kept"
        await asyncio.sleep(0.05)
    client.close()
    await shared.aclose()


async def test_a_members_message_limit_is_shared_by_replicas(redis_url: str) -> None:
    region, prefix = fresh_region(), fresh_prefix()
    replicas = [MessageLimiter(2, shared=RedisTokenBuckets(redis_url, region, key_prefix=prefix,
                                                           socket_timeout_s=5.0))
                for _ in range(2)]
    member = a_member()
    await replicas[0].take(member)
    await replicas[1].take(member)
    with pytest.raises(RateLimited) as refused:
        await replicas[0].take(member)
    assert 29 <= int(dict(refused.value.headers)[b"retry-after"]) <= 30
    colleague = a_member()
    await replicas[1].take(colleague)
    client = redis.Redis.from_url(redis_url)  # a key space of its own, beside the API keys'
    assert client.exists(f"{prefix}:{region}:member:ws_test:{member.user_id}")
    assert fallbacks(region) == 0
    client.close()


def test_the_factories_pick_redis_only_when_the_region_names_it(redis_url: str) -> None:
    settings = make_settings(Path("/tmp"), eu=[provider("eu-dev", "dev-echo", ["dev-echo"])],
                             us=[])
    region: RegionSettings = settings.region("eu")
    assert isinstance(rate_limiter_for(region), InMemoryRateLimiter)
    assert message_limiter_for(region, WorkspaceSettings())._shared is None
    with_redis = region.model_copy(update={"redis_url": redis_url})
    assert isinstance(rate_limiter_for(with_redis), RedisRateLimiter)
    assert message_limiter_for(with_redis, WorkspaceSettings())._shared is not None


# -- Redis down ---------------------------------------------------------------------------------


async def test_a_dead_redis_falls_back_per_process_counts_and_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    region = fresh_region()
    dead = limiter(f"redis://:hunter2@127.0.0.1:{free_port()}/0", region, fresh_prefix())
    key = grant(f"key_{uuid.uuid4().hex}", rpm=3)
    with caplog.at_level(logging.INFO, logger="domicile.limits"):
        admitted = [await outcomes(dead, key) for _ in range(6)]
    assert admitted == [True] * 3 + [False] * 3  # requests flow, limited in this process
    assert fallbacks(region) == 6
    assert dead.buckets.failures == 1  # the breaker: one failed attempt, not one per request
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "ConnectionError" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text and "127.0.0.1" not in caplog.text
    await dead.aclose()


async def test_a_redis_that_comes_back_is_used_again(
        throwaway_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture) -> None:
    region, prefix = fresh_region(), fresh_prefix()
    shared = limiter(throwaway_redis.url, region, prefix, retry_after_failure_s=0.05)
    key = grant(f"key_{uuid.uuid4().hex}", rpm=1000)
    stored = f"{prefix}:{region}:key:{key.key_id}"
    caplog.set_level(logging.INFO, logger="domicile.limits")
    await shared.acquire(key)
    assert fallbacks(region) == 0
    throwaway_redis.stop()
    deadline = time.monotonic() + 20
    while shared.buckets.failures < 3:  # a long outage: several probes fail, one warning
        assert time.monotonic() < deadline, "the breaker never probed again"
        await shared.acquire(key)
        await asyncio.sleep(0.01)
    assert fallbacks(region) >= 3
    throwaway_redis.start()  # empty: it kept nothing (--save '')
    client = throwaway_redis.client()
    deadline = time.monotonic() + 20
    while not client.exists(stored):  # the breaker lets a probe through, and it sticks
        assert time.monotonic() < deadline, "the limiter never went back to Redis"
        await shared.acquire(key)
        await asyncio.sleep(0.01)
    counted = fallbacks(region)
    remaining = dict(await shared.acquire(key))[b"x-ratelimit-remaining-requests"]
    assert remaining == b"998"  # decided in Redis (empty again): the probe's request and this
    assert fallbacks(region) == counted
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # one outage, one warning
    assert "answers again" in caplog.text
    client.close()
    await shared.aclose()


async def test_a_redis_that_forgot_the_script_gets_it_again(
        throwaway_redis: ThrowawayRedis) -> None:
    """EVALSHA answers NOSCRIPT after SCRIPT FLUSH (or a failover to a fresh server): the
    script is loaded again and the decision made in Redis, not in process."""
    region = fresh_region()
    shared = limiter(throwaway_redis.url, region, fresh_prefix())
    key = grant(f"key_{uuid.uuid4().hex}", rpm=10)
    await shared.acquire(key)
    client = throwaway_redis.client()
    client.script_flush()
    assert dict(await shared.acquire(key))[b"x-ratelimit-remaining-requests"] == b"8"
    assert fallbacks(region) == 0 and shared.buckets.failures == 0
    client.close()
    await shared.aclose()


# -- through the gateway ------------------------------------------------------------------------


def test_two_gateway_replicas_enforce_one_key_limit_through_redis(
        redis_url: str, tmp_path: Path) -> None:
    """Two gateway apps (two replicas) on real loopback servers, one Redis: a key of 3
    requests a minute gets 3 answers in all, then 429 with OpenAI's headers from either."""
    settings = make_settings(tmp_path, eu=[provider("eu-dev", "dev-echo", ["dev-echo"])], us=[])
    secret = "dk-eu-redis-limited-00000000"
    auth = DictAuthenticator({secret: grant(f"key_{uuid.uuid4().hex}", rpm=3)})
    region, prefix = "eu", fresh_prefix()
    loop = LoopThread()
    limiters = [limiter(redis_url, region, prefix) for _ in range(2)]
    replicas = [ServedApp(loop, create_gateway_app(settings, "eu", authenticator=auth,
                                                   usage_sink=MemoryUsageSink(),
                                                   rate_limiter=shared))
                for shared in limiters]
    body = {"model": "dev-echo", "messages": [{"role": "user", "content": "count me"}]}
    try:
        statuses, last = [], None
        for i in range(6):
            last = httpx.post(f"{replicas[i % 2].url}/v1/chat/completions", json=body,
                              headers={"authorization": f"Bearer {secret}"}, timeout=30)
            statuses.append(last.status_code)
        assert statuses == [200, 200, 200, 429, 429, 429]
        assert last is not None
        assert last.json()["error"]["code"] == "rate_limit_exceeded"
        assert last.headers["x-ratelimit-limit-requests"] == "3"
        assert last.headers["x-ratelimit-remaining-requests"] == "0"
        assert int(last.headers["retry-after"]) >= 1
    finally:
        for served in replicas:
            served.stop()
        for shared in limiters:
            loop.run(shared.aclose())
        loop.close()
