"""G3, the wrong door: credentials are checked before the body, and the refusal names the
right region's URL. Plus the key cache: revocation within one second."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import openai
import pytest

from domicile.gateway import GatewayApp
from domicile.gateway.auth import KeyCache, mask_secret
from domicile.gateway.http import Message, Scope
from tests.gateway.conftest import (
    EU_ZERO_KEY,
    GLOBAL_KEY,
    GLOBAL_PINNED_KEY,
    MISFILED_KEY,
    US_KEY,
    Stack,
)
from tests.gateway.support import EU_URL, US_URL, DictAuthenticator, grant

MESSAGES = [{"role": "user", "content": "hello"}]


def test_missing_key_is_refused_with_401(stack: Stack) -> None:
    response = stack.http().post("/v1/chat/completions", json={"model": "dev-echo"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("value", ["Basic abc", "Bearer", "Bearer  x y", "dk-eu-x"])
def test_malformed_authorization_is_refused_with_401(stack: Stack, value: str) -> None:
    response = stack.http().get("/v1/models", headers={"Authorization": value})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_unknown_key_is_401_and_only_its_first_8_characters_are_echoed(stack: Stack) -> None:
    secret = "dk-eu-nobody-knows-this-key-0123"
    with pytest.raises(openai.AuthenticationError) as caught:
        stack.client(secret).chat.completions.create(model="dev-echo", messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"  # type: ignore[attr-defined]
    assert secret[:8] in caught.value.message
    assert secret[:9] not in caught.value.response.text


def _post_scope(path: str, secret: str, announced: int) -> Scope:
    """An HTTP scope as uvicorn builds it: headers only, the body announced, not yet read."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
        "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", b"eu.domicile.example"),
                    (b"authorization", f"Bearer {secret}".encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % announced)],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 443),
    }


async def _call_without_a_body(app: GatewayApp, scope: Scope) -> list[Message]:
    """Every message between the app and its server, in order: `receive` (a read of the
    body, answered with a disconnect, so a read ends the request without an answer) or the
    app's own `send`s."""
    events: list[Message] = []

    async def receive() -> Message:
        events.append({"type": "test.receive"})
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        events.append(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    return events


@pytest.mark.parametrize("key", [US_KEY, MISFILED_KEY], ids=["us-prefix", "us-project"])
def test_us_key_is_refused_at_eu_naming_the_us_url_before_the_body_is_read(
        stack: Stack, key: str) -> None:
    """The app answers 403 without once asking its server for the body (`receive`)."""
    lookups = stack.auth.lookups
    events = stack.loop.run(_call_without_a_body(
        stack.eu_app, _post_scope("/v1/chat/completions", key, 1_000_000)))
    assert [event["type"] for event in events] == ["http.response.start", "http.response.body"]
    assert events[0]["status"] == 403
    error = json.loads(events[1]["body"])["error"]
    assert error["code"] == "wrong_region"
    assert US_URL in error["message"]
    if key == US_KEY:
        assert stack.auth.lookups == lookups  # refused from the prefix alone


def test_sdk_raises_permission_denied_for_the_wrong_region(stack: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        stack.client(US_KEY).chat.completions.create(model="dev-echo", messages=MESSAGES)
    assert caught.value.code == "wrong_region"  # type: ignore[attr-defined]
    assert US_URL in caught.value.message


def test_eu_key_is_refused_at_the_us_endpoint_naming_the_eu_url(stack: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        stack.client(EU_ZERO_KEY, stack.us).models.list()
    assert EU_URL in caught.value.message
    assert caught.value.response.headers["x-domicile-region"] == "us"


def test_a_key_whose_project_lives_elsewhere_is_refused_after_lookup(stack: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        stack.client(MISFILED_KEY).chat.completions.create(model="dev-echo", messages=MESSAGES)
    assert US_URL in caught.value.message


def test_a_per_request_residency_key_is_processed_where_it_calls(stack: Stack) -> None:
    for served, region in ((stack.eu, "eu"), (stack.us, "us")):
        reply = stack.client(GLOBAL_KEY, served).chat.completions.with_raw_response.create(
            model="dev-echo", messages=MESSAGES)
        assert reply.headers["x-domicile-region"] == region
        assert reply.headers["x-domicile-provider"] == f"{region}-dev"


def test_a_global_key_without_per_request_residency_is_refused(stack: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        stack.client(GLOBAL_PINNED_KEY).models.list()
    assert caught.value.code == "wrong_region"  # type: ignore[attr-defined]


def test_a_revoked_key_stops_working_within_one_second(stack: Stack) -> None:
    secret = "dk-eu-revoke-me-00000000000"
    stack.auth.keys[secret] = grant("key_revoke_me")
    client = stack.client(secret)
    client.models.list()
    del stack.auth.keys[secret]
    time.sleep(1.05)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_mask_secret_keeps_eight_characters() -> None:
    assert mask_secret("dk-eu-abcdefghijkl") == "dk-eu-ab…"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_reuses_a_grant_for_the_ttl_then_asks_again() -> None:
    auth = DictAuthenticator({"dk-eu-a": grant("a")})
    clock = Clock()
    cache = KeyCache(auth, ttl=1.0, clock=clock)
    for _ in range(5):
        assert (await cache.lookup("dk-eu-a")) is not None
    assert auth.lookups == 1
    clock.now += 1.01
    del auth.keys["dk-eu-a"]
    assert await cache.lookup("dk-eu-a") is None
    assert auth.lookups == 2


async def test_cache_never_keeps_unknown_keys() -> None:
    auth = DictAuthenticator()
    cache = KeyCache(auth, clock=Clock())
    for _ in range(3):
        assert await cache.lookup("dk-eu-unknown") is None
    assert auth.lookups == 3
    auth.keys["dk-eu-unknown"] = grant("late")
    assert await cache.lookup("dk-eu-unknown") is not None


async def test_concurrent_misses_share_one_lookup() -> None:
    release = threading.Event()

    class Slow(DictAuthenticator):
        def authenticate_api_key(self, secret: str):  # type: ignore[no-untyped-def]
            release.wait(5)
            return super().authenticate_api_key(secret)

    auth = Slow({"dk-eu-a": grant("a")})
    cache = KeyCache(auth)
    waiters = [asyncio.ensure_future(cache.lookup("dk-eu-a")) for _ in range(10)]
    await asyncio.sleep(0.05)
    release.set()
    grants = await asyncio.gather(*waiters)
    assert all(g is not None and g.key_id == "a" for g in grants)
    assert auth.lookups == 1


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    release = threading.Event()

    class Slow(DictAuthenticator):
        def authenticate_api_key(self, secret: str):  # type: ignore[no-untyped-def]
            release.wait(5)
            return super().authenticate_api_key(secret)

    cache = KeyCache(Slow({"dk-eu-a": grant("a")}))
    first = asyncio.ensure_future(cache.lookup("dk-eu-a"))
    second = asyncio.ensure_future(cache.lookup("dk-eu-a"))
    await asyncio.sleep(0.02)
    first.cancel()
    release.set()
    assert (await second) is not None


async def test_a_failing_directory_fails_the_request_not_the_cache() -> None:
    class Broken(DictAuthenticator):
        def authenticate_api_key(self, secret: str):  # type: ignore[no-untyped-def]
            raise OSError("database is down")

    cache = KeyCache(Broken())
    with pytest.raises(OSError):
        await cache.lookup("dk-eu-a")
    with pytest.raises(OSError):
        await cache.lookup("dk-eu-a")
