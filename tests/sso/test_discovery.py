"""A provider that is down: its failed discovery is remembered for a while and one fetch per
issuer runs at a time, so unauthenticated sign-in requests cannot each start an outbound
fetch. The "provider" here is a real HTTP server on loopback that counts the discovery
requests it gets and answers them 500, optionally holding them until the test lets go."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from domicile.errors import UpstreamError
from domicile.workspace_web.sso import IdentityProviderUnavailable, ProviderDirectory

from .conftest import SsoSite

DEADLINE_S = 30.0


class DownProvider:
    """A loopback HTTP server whose discovery answers 500; `hold()` makes it wait (up to the
    deadline) before answering, until `release()`."""

    def __init__(self) -> None:
        self.requests = 0
        self._count = threading.Lock()
        self._go = threading.Event()
        self._go.set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._count:
                    owner.requests += 1
                owner._go.wait(DEADLINE_S)
                self.send_response(500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def hold(self) -> None:
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    def close(self) -> None:
        self._go.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def down() -> Iterator[DownProvider]:
    server = DownProvider()
    yield server
    server.close()


async def test_a_failed_discovery_is_remembered_for_its_ttl(down: DownProvider) -> None:
    now = [1000.0]
    directory = ProviderDirectory(failure_ttl=30, clock=lambda: now[0])
    with pytest.raises(IdentityProviderUnavailable) as first:
        await directory.get(down.issuer)
    assert first.value.status == 503 and "500" in first.value.message
    assert dict(first.value.headers)[b"retry-after"] == b"30"
    now[0] += 29
    with pytest.raises(IdentityProviderUnavailable) as again:
        await directory.get(down.issuer)
    assert dict(again.value.headers)[b"retry-after"] == b"1"
    assert down.requests == 1  # answered from the remembered failure
    now[0] += 2
    with pytest.raises(IdentityProviderUnavailable):
        await directory.get(down.issuer)
    assert down.requests == 2  # past its ttl: tried again


async def test_one_discovery_per_issuer_runs_at_a_time(down: DownProvider) -> None:
    directory = ProviderDirectory()
    down.hold()
    tries = [asyncio.ensure_future(directory.get(down.issuer)) for _ in range(5)]
    deadline = time.monotonic() + DEADLINE_S
    while down.requests < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    # Give the other four the chance to reach the server, which they would without the lock.
    settle = time.monotonic() + 0.5
    while down.requests < 5 and time.monotonic() < settle:
        await asyncio.sleep(0.01)
    down.release()
    results = await asyncio.gather(*tries, return_exceptions=True)
    assert all(isinstance(r, IdentityProviderUnavailable) for r in results), results
    assert down.requests == 1


async def test_an_unreachable_issuer_is_a_503_that_is_still_an_upstream_error() -> None:
    with pytest.raises(UpstreamError) as raised:
        await ProviderDirectory().get("http://127.0.0.1:9")
    assert raised.value.status == 503
    assert raised.value.code == "identity_provider_unavailable"


@pytest.mark.e2e
def test_login_to_a_provider_that_is_down_answers_503_without_a_fetch_each(
        sso: SsoSite, down: DownProvider) -> None:
    workspace = sso.new_workspace("Down")
    sso.set_sso(workspace, issuer=down.issuer)
    with sso.browser() as browser:
        for _ in range(3):
            answer = browser.get(f"{sso.base}/workspace/sso/{workspace}/login",
                                 headers={"accept": "application/json"})
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "identity_provider_unavailable"
            assert answer.json()["error"]["type"] == "server_error"
            assert 1 <= int(answer.headers["retry-after"]) <= 30
        page = browser.get(f"{sso.base}/workspace/sso/{workspace}/login")
        assert page.status_code == 503
        assert "unavailable" in page.text
    assert down.requests == 1
