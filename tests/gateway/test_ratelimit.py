"""Per-key request and token limits with OpenAI's headers."""

from __future__ import annotations

import openai
import pytest

from domicile.errors import RateLimited, TokenRateLimited
from domicile.gateway.ratelimit import InMemoryRateLimiter
from tests.gateway.conftest import Stack
from tests.gateway.support import grant

MESSAGES = [{"role": "user", "content": "count me"}]


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


async def test_requests_are_counted_per_key_in_a_minute_window() -> None:
    clock = Clock()
    limiter = InMemoryRateLimiter(clock=clock)
    limited, other = grant("a", rpm=2), grant("b", rpm=2)
    first = dict(await limiter.acquire(limited))
    assert first[b"x-ratelimit-limit-requests"] == b"2"
    assert first[b"x-ratelimit-remaining-requests"] == b"1"
    assert first[b"x-ratelimit-reset-requests"] == b"60s"
    await limiter.acquire(limited)
    await limiter.acquire(other)
    clock.now += 59.5
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(limited)
    headers = dict(caught.value.headers)
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert headers[b"x-ratelimit-reset-requests"] == b"500ms"
    assert headers[b"retry-after"] == b"1"
    assert caught.value.type == "requests"
    clock.now += 0.5
    assert dict(await limiter.acquire(limited))[b"x-ratelimit-remaining-requests"] == b"1"


async def test_tokens_are_charged_after_and_checked_before() -> None:
    limiter = InMemoryRateLimiter(clock=Clock())
    limited = grant("t", tpm=100)
    await limiter.acquire(limited)
    await limiter.charge(limited, 60)
    assert dict(await limiter.acquire(limited))[b"x-ratelimit-remaining-tokens"] == b"40"
    await limiter.charge(limited, 60)  # a request may overshoot; the next one is refused
    with pytest.raises(TokenRateLimited) as caught:
        await limiter.acquire(limited)
    assert caught.value.type == "tokens"
    assert caught.value.code == "rate_limit_exceeded"


async def test_keys_without_limits_get_no_headers() -> None:
    limiter = InMemoryRateLimiter()
    assert await limiter.acquire(grant("free")) == []
    await limiter.charge(grant("free"), 10**9)


def test_the_sdk_sees_a_rate_limit_error_with_openai_headers(stack: Stack) -> None:
    secret = "dk-eu-rpm-limited-0000000000"
    stack.auth.keys[secret] = grant("key_rpm_limited", rpm=2)
    client = stack.client(secret)
    ok = client.chat.completions.with_raw_response.create(model="dev-echo", messages=MESSAGES)
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"
    client.chat.completions.create(model="dev-echo", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="dev-echo", messages=MESSAGES)
    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"  # type: ignore[attr-defined]
    assert caught.value.type == "requests"  # type: ignore[attr-defined]
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert headers["x-domicile-region"] == "eu"


def test_a_key_over_its_tokens_is_refused_until_the_window_ends(stack: Stack) -> None:
    secret = "dk-eu-tpm-limited-0000000000"
    stack.auth.keys[secret] = grant("key_tpm_limited", tpm=10)
    client = stack.client(secret)
    client.chat.completions.create(model="solo-model", messages=MESSAGES)  # 11 + 7 tokens
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="solo-model", messages=MESSAGES)
    assert caught.value.type == "tokens"  # type: ignore[attr-defined]
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(stack.upstreams["eu-solo"].received) == 1
