"""Faults of an upstream answered honestly: a stream that goes silent or is cut upstream ends
with an error event the `openai` SDK raises as `APIError`, then a clean end of the body; a
provider whose connections are all in use is busy (503 `region_busy`, `retry-after`), not
down, and waiting for a connection does not count as the upstream being slow.

A gateway of its own (region eu) in front of one loopback fake upstream, with providers
configured for these faults: a short stream idle timeout, small connection pools.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from domicile.gateway import create_gateway_app
from domicile.storage.interfaces import UsageRecord
from tests.gateway.support import (
    DictAuthenticator,
    LoopThread,
    MemoryUsageSink,
    ServedApp,
    grant,
    make_settings,
    provider,
)
from tests.gateway.upstream import FakeUpstream

KEY = "dk-eu-faults00000000000000000"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "CANARY-words of the prompt"}]
IDLE_S = 0.5
POOL_WAIT_S = 0.3
INCOMPLETE = "ASGI callable returned without completing response"


class _Records(logging.Handler):
    """What the server and the gateway log, kept for the test to read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Faults:
    loop: LoopThread
    upstream: FakeUpstream
    served: ServedApp
    sink: MemoryUsageSink
    log: _Records

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.served.url + "/v1", api_key=KEY, max_retries=0,
                             timeout=10)

    def record(self, count: int = 1) -> UsageRecord:
        """The usage record of the test's `count`th request, once the gateway has written it."""
        deadline = time.monotonic() + 5
        while len(self.sink.records) < count and time.monotonic() < deadline:
            self.loop.run(self.served.app.usage.flush())
            time.sleep(0.02)
        return self.sink.records[count - 1]

    def wait_until(self, condition: Callable[[], bool], seconds: float = 5) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, "the upstream never saw the requests"
            time.sleep(0.01)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def faults_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    loop = LoopThread()
    upstream = FakeUpstream("faulty")
    loop.run(upstream.start())
    url = upstream.base_url

    def compat(name: str, model: str, **extra: Any) -> dict[str, Any]:
        return provider(name, "openai-compatible", [model], base_url=url, **extra)

    settings = make_settings(Path(tmp_path_factory.mktemp("faults")), eu=[
        compat("quiet", "quiet-model", timeout_s=5, stream_idle_timeout_s=IDLE_S),
        compat("small", "small-model", max_connections=2, pool_timeout_s=POOL_WAIT_S),
        compat("wide", "wide-model", max_connections=3, pool_timeout_s=POOL_WAIT_S),
        compat("pair-a", "pair-model", max_connections=1, pool_timeout_s=POOL_WAIT_S),
        compat("pair-b", "pair-model", max_connections=1, pool_timeout_s=POOL_WAIT_S),
        # As configured by default (256 connections, 5 s to get one), with a short timeout_s.
        compat("default-pool", "default-model", timeout_s=1.0, stream_idle_timeout_s=30),
    ], us=[])
    sink = MemoryUsageSink()
    app = create_gateway_app(settings, "eu", authenticator=DictAuthenticator(
        {KEY: grant("key_faults")}), usage_sink=sink)
    served = ServedApp(loop, app)
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "domicile.gateway")]
    for logger in loggers:
        logger.addHandler(records)
    yield Faults(loop, upstream, served, sink, records)
    for logger in loggers:
        logger.removeHandler(records)
    served.stop()
    loop.run(upstream.stop())
    loop.close()


@pytest.fixture
def faults(faults_stack: Faults) -> Faults:
    faults_stack.upstream.reset()
    faults_stack.loop.run(faults_stack.served.app.usage.flush())
    faults_stack.sink.clear()
    faults_stack.log.lines.clear()
    return faults_stack


def _text(chunks: Any) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- streams that end honestly (items 10, 11) ---------------------------------------------------


def test_a_stream_whose_upstream_goes_silent_ends_with_an_error_event(faults: Faults) -> None:
    client = faults.client()
    # The wait for the first chunk is timeout_s's (5 s), not the idle bound's.
    faults.upstream.behaviour.delay = IDLE_S + 0.3
    stream = client.chat.completions.create(model="quiet-model", messages=MESSAGES,
                                            stream=True)
    assert _text(stream) == "faulty says: CANARY-words of the prompt"

    faults.upstream.reset()
    faults.upstream.behaviour.then = "stall"
    chunks = iter(client.chat.completions.create(model="quiet-model", messages=MESSAGES,
                                                 stream=True))
    assert next(chunks).choices[0].delta.content == "faulty"
    with pytest.raises(openai.APIError) as caught:
        next(chunks)
    error = caught.value
    assert type(error) is openai.APIError  # the error event, not the client's own timeout
    assert error.body == {"message": error.message, "type": "server_error", "param": None,
                          "code": "upstream_error"}
    assert f"quiet broke off (no data for {IDLE_S:g} s)" in error.message
    assert "CANARY" not in error.message
    assert faults.upstream.stream_cancelled.wait(5), "the upstream request was left open"
    assert faults.record(2).status == 502


@pytest.mark.parametrize("then", ["reset", "close", "close-mid-event", "end"])
def test_a_stream_cut_upstream_ends_with_an_error_event_then_a_clean_end(
        faults: Faults, then: str) -> None:
    upstream = faults.upstream
    upstream.behaviour.then = then
    # The SDK: the chunks that came, then APIError (not a connection error, not bad JSON).
    upstream.behaviour.gate = gate = threading.Event()
    # Asking for usage: the stream is relayed as it comes (the silence test covers the other
    # path, where the gateway takes out the usage it asked for).
    chunks = iter(faults.client().chat.completions.create(
        model="quiet-model", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}))
    assert next(chunks).choices[0].delta.content == "faulty"
    gate.set()  # the upstream breaks off once the client holds the first chunk
    with pytest.raises(openai.APIError) as caught:
        next(chunks)
    assert caught.value.body["code"] == "upstream_error"  # type: ignore[index]
    assert "quiet broke off" in caught.value.message
    assert "CANARY" not in caught.value.message
    assert faults.record().status == 502

    # On the wire: whole events, the error event last, and the chunked body properly ended
    # (httpx raises on a body cut short).
    upstream.behaviour.gate = gate = threading.Event()
    with httpx.Client(base_url=faults.served.url, timeout=10) as http, http.stream(
            "POST", "/v1/chat/completions", headers=AUTH,
            json={"model": "quiet-model", "messages": MESSAGES, "stream": True,
                  "stream_options": {"include_usage": True}}) as response:
        parts = response.iter_raw()
        body = b""
        for part in parts:
            body += part
            if body.endswith(b"\n\n"):
                break
        gate.set()
        for part in parts:
            body += part
    events = body.split(b"\n\n")
    assert events[-1] == b""  # every event, the last one too, is whole
    assert events[-2].startswith(b'data: {"error": {"message": "The stream from provider '
                                 b'quiet broke off') or events[-2].startswith(
                                 b'data: {"error":{"message":"The stream from provider '
                                 b"quiet broke off")
    assert b"[DONE]" not in body
    assert not [line for line in faults.log.lines if INCOMPLETE in line or "unhandled" in line]


def test_a_200_that_is_not_an_event_stream_is_a_502(faults: Faults) -> None:
    """A proxy's page or a JSON answer to a stream request: the upstream's error, not an
    empty stream the SDK would take for a finished one."""
    faults.upstream.behaviour.mode = "garbage"
    with pytest.raises(openai.InternalServerError) as caught:
        for _chunk in faults.client().chat.completions.create(
                model="quiet-model", messages=MESSAGES, stream=True):
            pass
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"  # type: ignore[attr-defined]
    assert "CANARY" not in caught.value.message
    assert faults.record().status == 502


# -- capacity is not an outage (item 13) --------------------------------------------------------


def _concurrently(faults: Faults, model: str, count: int
                  ) -> tuple[ThreadPoolExecutor, list[Future[Any]]]:
    pool = ThreadPoolExecutor(count)
    client = faults.client()
    return pool, [pool.submit(client.chat.completions.with_raw_response.create,
                              model=model, messages=MESSAGES) for _ in range(count)]


def _served_by(futures: list[Future[Any]]) -> list[str]:
    return [f.result(10).headers["x-domicile-provider"] for f in futures]


def test_a_full_pool_answers_region_busy_with_retry_after(faults: Faults) -> None:
    upstream = faults.upstream
    upstream.behaviour.hold = hold = threading.Event()
    pool, held = _concurrently(faults, "small-model", 2)
    try:
        faults.wait_until(lambda: upstream.holding == 2)
        with pytest.raises(openai.InternalServerError) as caught:
            faults.client().chat.completions.create(model="small-model", messages=MESSAGES)
    finally:
        hold.set()
        pool.shutdown()
    error = caught.value
    assert error.status_code == 503
    assert error.code == "region_busy"  # type: ignore[attr-defined]
    assert error.response.headers["retry-after"] == "1"  # pool_timeout_s 0.3, rounded up
    assert "Region eu is busy" in error.message
    assert "small: all 2 connections in use" in error.message
    assert "TimeoutError" not in error.message
    assert len(upstream.received) == 2  # the third never reached the upstream
    assert _served_by(held) == ["small", "small"]

    # A pool one wider serves all three at once.
    upstream.reset()
    upstream.behaviour.hold = hold = threading.Event()
    pool, held = _concurrently(faults, "wide-model", 3)
    try:
        faults.wait_until(lambda: upstream.holding == 3)
    finally:
        hold.set()
        pool.shutdown()
    assert _served_by(held) == ["wide"] * 3


def test_a_busy_provider_fails_over_before_the_region_is_busy(faults: Faults) -> None:
    upstream = faults.upstream
    upstream.behaviour.hold = hold = threading.Event()
    pool = ThreadPoolExecutor(2)
    client = faults.client()
    try:
        first = pool.submit(client.chat.completions.with_raw_response.create,
                            model="pair-model", messages=MESSAGES)
        faults.wait_until(lambda: upstream.holding == 1)
        # pair-a's one connection is taken: straight to pair-b, without waiting for pair-a.
        second = pool.submit(client.chat.completions.with_raw_response.create,
                             model="pair-model", messages=MESSAGES)
        faults.wait_until(lambda: upstream.holding == 2)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="pair-model", messages=MESSAGES)
    finally:
        hold.set()
        pool.shutdown()
    assert _served_by([first, second]) == ["pair-a", "pair-b"]
    assert caught.value.code == "region_busy"  # type: ignore[attr-defined]
    assert "pair-a: all 1 connections in use; pair-b: all 1" in caught.value.message


def test_waiting_for_a_connection_is_not_a_timeout(faults: Faults) -> None:
    """The issue's case: every one of the default pool's 256 connections holds a stream; one
    more request waits longer than `timeout_s` (1 s here) for a connection, then gets one
    and is served: its wait was capacity, not a slow upstream."""
    upstream = faults.upstream
    upstream.behaviour.gate = gate = threading.Event()  # the streams stay open after chunk 1
    url = faults.served.url + "/v1/chat/completions"
    ask = {"model": "default-model", "messages": MESSAGES}

    async def scenario() -> tuple[int, str, bytes]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async def open_stream() -> aiohttp.ClientResponse:
                response = await http.post(url, json={**ask, "stream": True}, headers=AUTH)
                await response.content.readuntil(b"\n\n")  # the stream holds its connection
                return response

            streams = await asyncio.gather(*(open_stream() for _ in range(256)))
            try:
                waiting = asyncio.ensure_future(http.post(url, json=ask, headers=AUTH))
                await asyncio.sleep(1.5)  # longer than timeout_s, shorter than pool_timeout_s
                assert not waiting.done(), "the request gave up while waiting for a connection"
                streams[0].close()  # one stream ends: its connection is free again
                async with await asyncio.wait_for(waiting, 10) as answer:
                    return (answer.status, answer.headers["x-domicile-provider"],
                            await answer.read())
            finally:
                gate.set()
                for stream in streams:
                    stream.close()

    status, served_by, body = faults.loop.run(scenario())
    assert (status, served_by) == (200, "default-pool"), body
