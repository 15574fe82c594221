"""`openai-compatible`: any HTTP upstream that speaks OpenAI's API (OpenAI EU, Azure OpenAI,
Mistral, vLLM, Ollama, ...).

The client's request bytes go upstream unchanged (but for the `stream_options` the gateway
splices into a stream request that does not ask for usage: see `usage.request_usage`), over
one pooled `aiohttp.ClientSession` per provider, opened at startup. G6: TLS 1.2 or later
with certificate verification (the system's CAs, or the provider's `ca_file`); plain http
only where config validation allowed it (loopback, or `insecure_http`).

Bounds, each its own setting, so that capacity never looks like an outage:

- `max_connections`: calls in flight at once (the aiohttp pool's size too). A call first
  takes a slot; when none comes free within `pool_timeout_s` the provider is busy
  (`ProviderBusy`). A stream holds its slot until it ends.
- `timeout_s`, from the moment a slot is held: a whole non-stream call, and a stream's
  connect + response headers + first chunk.
- `stream_idle_timeout_s` (default `timeout_s`): the longest an upstream may stay silent
  between two chunks of a stream; past it the stream is ended as broken off.

A stream is passed on in whole SSE events (the bytes after a read's last blank line wait for
the next read), so that when it breaks off the gateway can still append an error event the
client can parse. A non-stream 200 that is not shaped as a JSON object (checked at its
first and last bytes, not parsed whole: see `_object_shaped`) becomes the gateway's 502
`upstream_error`. An upstream 4xx keeps its `retry-after`, `retry-after-ms` and
`x-ratelimit-*` headers.

The provider's API key is read once at start into the request headers; it is never logged
and this object's repr does not show it.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp
from yarl import URL

from domicile.config import Capability, ProviderSettings
from domicile.web.jsonbody import loads_strict

from ..usage import token_counts, usage_counts
from .base import (
    JSON,
    Provider,
    ProviderBusy,
    ProviderResponse,
    ProviderUnavailable,
    UpstreamRejected,
    malformed,
)

__all__ = ["OpenAICompatibleProvider", "upstream_tls_context"]

KEEPALIVE_S = 30.0
_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
# An upstream's headers a client gets with its 4xx: when to retry, and the limits it hit.
_RETRY_HEADERS = (b"retry-after", b"retry-after-ms")
_LIMIT_HEADERS = b"x-ratelimit-"
# What ends an SSE event (a blank line), as upstreams write it.
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n")
# Bytes held back waiting for an event's end; past this the upstream is not framing events
# we can follow, and the rest is passed on as it comes.
_MAX_HELD = 1 << 20
_WHITESPACE = b" \t\r\n"


def upstream_tls_context(ca_file: str | None) -> ssl.SSLContext:
    """G6: verification on (hostname and chain), nothing below TLS 1.2."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _header_value(value: str) -> bytes:
    return value.encode("latin-1", "replace")


def _passed_on(raw: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The headers of an upstream 4xx that the client gets too (ASGI wants them lowercase)."""
    kept: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        lowered = name.lower()
        if lowered in _RETRY_HEADERS or lowered.startswith(_LIMIT_HEADERS):
            kept.append((lowered, value))
    return tuple(kept)


def _object_shaped(data: bytes) -> bool:
    """A JSON object's first and last bytes, whitespace aside (no copy of the body).

    The check for answers too large to parse on the request path (embeddings are float
    arrays: a full parse of 100 vectors costs ~50 ms). What an upstream's broken answer
    looks like (empty, cut short, an HTML or text error page, an array) fails it; a body
    broken only inside is not caught. Chat answers are parsed whole instead (`_chat_answer`).
    """
    start, end = 0, len(data) - 1
    while start < end and data[start] in _WHITESPACE:
        start += 1
    while end > start and data[end] in _WHITESPACE:
        end -= 1
    return start < end and data[start] == 0x7B and data[end] == 0x7D  # "{" ... "}"


_DONE = b"[DONE]"
_TAIL = 32


def _whole_events(data: bytes) -> int:
    """How many leading bytes of `data` are whole SSE events."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class _SilenceWatch:
    """Ends a stream whose upstream stays silent longer than `limit` seconds.

    One loop timer per `limit` seconds, not one per chunk: re-arming a timer costs a few
    microseconds, marking a read costs a clock read. Only time spent waiting on the upstream
    counts (`since` is None while the chunk is with the client), so a slow client is never
    taken for a silent upstream. On expiry the pending read fails with `TimeoutError`.
    """

    __slots__ = ("_content", "_handle", "_limit", "_loop", "expired", "since")

    def __init__(self, loop: asyncio.AbstractEventLoop, content: aiohttp.StreamReader,
                 limit: float) -> None:
        self._loop = loop
        self._content = content
        self._limit = limit
        self.since: float | None = None
        self.expired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._loop.time() + limit, self._check)

    def _check(self) -> None:
        since, now = self.since, self._loop.time()
        if since is not None and now - since >= self._limit:
            self.expired = True
            self._handle = None
            self._content.set_exception(TimeoutError())
            return
        self._handle = self._loop.call_at((now if since is None else since) + self._limit,
                                          self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class OpenAICompatibleProvider(Provider):
    kind = "openai-compatible"
    supported: ClassVar[frozenset[Capability]] = frozenset(
        {"chat", "embeddings", "vision", "images"})

    def __init__(self, settings: ProviderSettings, region: str) -> None:
        super().__init__(settings, region)
        if settings.base_url is None:  # config validation already refuses this
            raise ValueError(f"provider {settings.name} has no base_url")
        base = settings.base_url.rstrip("/")
        # Parsed once: aiohttp takes a URL object without parsing it again per request.
        self._chat_url = URL(base + "/chat/completions")
        self._embeddings_url = URL(base + "/embeddings")
        self._images_url = URL(base + "/images/generations")
        self._ssl = upstream_tls_context(str(settings.ca_file) if settings.ca_file else None)
        self._timeout_s = settings.timeout_s
        self._idle_s = settings.effective_stream_idle_timeout_s
        self._max_connections = settings.max_connections
        self._pool_timeout_s = settings.pool_timeout_s
        # The request waited as long as this already; about as long again is a fair hint.
        self._retry_after = max(1, math.ceil(settings.pool_timeout_s))
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.timeout_s)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self._stream_headers = {"Content-Type": "application/json",
                                "Accept": "text/event-stream"}
        key = settings.api_key()
        if key is not None:
            authorization = "Bearer " + key.get_secret_value()
            self._headers["Authorization"] = authorization
            self._stream_headers["Authorization"] = authorization
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        # Made in the serving loop (a semaphore binds to the loop its first waiter runs in).
        self._slots = asyncio.Semaphore(self._max_connections)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=KEEPALIVE_S, ssl=self._ssl,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),  # upstream cookies are not ours to keep
            skip_auto_headers=("User-Agent",),
            trust_env=False,  # never route a region's traffic through an ambient proxy
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def saturated(self) -> bool:
        return self._slots.locked()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ProviderUnavailable(self.name, "not started")
        return self._session

    async def _take_slot(self) -> asyncio.Semaphore:
        """A connection slot, waited for at most `pool_timeout_s` (apart from `timeout_s`:
        waiting for capacity is not the upstream being slow). The caller releases it."""
        slots = self._slots
        if not slots.locked():
            await slots.acquire()  # a free slot: returns at once, no timer armed
            return slots
        try:
            async with asyncio.timeout(self._pool_timeout_s):
                await slots.acquire()
        except TimeoutError:
            raise ProviderBusy(
                self.name, f"all {self._max_connections} connections in use",
                self._retry_after) from None
        return slots

    async def _post(self, url: URL, body: bytes, *, parse_whole: bool = False
                    ) -> ProviderResponse:
        """One non-stream call. A 200 must be a JSON object: checked by a full parse where
        `parse_whole` (chat answers, small; the parse also reads the usage), else by its
        edges (`_object_shaped`)."""
        session = self._open()
        slots = await self._take_slot()
        try:
            async with session.post(url, data=body, headers=self._headers) as response:
                data = await response.read()
                status = response.status
                content_type = response.headers.get("Content-Type", "application/json")
                passed = _passed_on(response.raw_headers) if status >= 400 else ()
        except _ERRORS as exc:
            raise ProviderUnavailable(self.name, type(exc).__name__) from None
        finally:
            slots.release()
        if status >= 500:
            raise ProviderUnavailable(self.name, f"HTTP {status}")
        if status != 200:
            return ProviderResponse(status, data, _header_value(content_type), headers=passed)
        # The upstream did answer (and may have done the work): a broken body is its error,
        # not a reason to send the request to a second provider.
        if parse_whole:
            try:
                answer = loads_strict(data)
            except (ValueError, RecursionError):
                answer = None
            if not isinstance(answer, dict):
                return malformed(self.name, "a body that is not a JSON object")
            prompt, completion = token_counts(answer.get("usage"))
        elif _object_shaped(data):
            prompt, completion = usage_counts(data)
        else:
            return malformed(self.name, "a body that is not a JSON object")
        return ProviderResponse(status, data, _header_value(content_type), prompt,
                                completion)

    async def chat(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        return await self._post(self._chat_url, body, parse_whole=True)

    async def embeddings(self, body: bytes, parsed: Mapping[str, Any], *,
                         owner: str = "") -> ProviderResponse:
        return await self._post(self._embeddings_url, body)

    async def images(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        return await self._post(self._images_url, body)

    async def chat_stream(self, body: bytes, parsed: Mapping[str, Any]
                          ) -> AsyncGenerator[bytes, None]:
        session = self._open()
        slots = await self._take_slot()  # held until the stream ends, however it ends
        response: aiohttp.ClientResponse | None = None
        finished = False
        try:
            try:
                async with asyncio.timeout(self._timeout_s):
                    response = await session.post(self._chat_url, data=body,
                                                  headers=self._stream_headers,
                                                  timeout=self._stream_timeout)
                    if response.status >= 500:
                        raise ProviderUnavailable(self.name, f"HTTP {response.status}")
                    if response.status >= 400:
                        data = await response.read()
                        content_type = response.headers.get("Content-Type", "application/json")
                        raise UpstreamRejected(self.name, ProviderResponse(
                            response.status, data, _header_value(content_type) or JSON,
                            headers=_passed_on(response.raw_headers)))
                    if not response.headers.get("Content-Type", "").startswith(
                            "text/event-stream"):
                        # A 200 that is no stream (a proxy's page, a JSON answer): the
                        # upstream's error, answered as such, not relayed as an empty stream.
                        raise UpstreamRejected(self.name, malformed(
                            self.name, "an answer that is not an event stream"))
                    chunk = await response.content.readany()
            except _ERRORS as exc:
                raise ProviderUnavailable(self.name, type(exc).__name__) from None
            content = response.content
            loop = asyncio.get_running_loop()
            clock = loop.time
            watch = _SilenceWatch(loop, content, self._idle_s)
            held = b""
            tail = b""  # the stream's last bytes: an OpenAI stream ends with `data: [DONE]`
            framing = True
            try:
                while chunk:
                    if held:
                        chunk, held = held + chunk, b""
                    if framing and not chunk.endswith(_EVENT_ENDS):
                        cut = _whole_events(chunk)
                        if len(chunk) - cut > _MAX_HELD:
                            framing = False  # not events we can follow: pass it on as is
                        else:
                            chunk, held = chunk[:cut], chunk[cut:]
                    if chunk:
                        tail = chunk[-_TAIL:] if len(chunk) >= _TAIL else (tail + chunk)[-_TAIL:]
                        yield chunk
                    watch.since = clock()
                    chunk = await content.readany()
                    watch.since = None
                finished = True
                if held:  # the last event came without its blank line: as the upstream sent it
                    tail = (tail + held)[-_TAIL:]
                    yield held
                if _DONE not in tail:
                    # Ended cleanly but early (a connection closed at an event boundary looks
                    # like this): the client must not take a cut answer for a whole one.
                    raise ProviderUnavailable(self.name, "it ended with no end-of-stream event")
            except _ERRORS as exc:
                # Broken off: what was held is part of an event and is dropped with it.
                reason = (f"no data for {self._idle_s:g} s" if watch.expired
                          else type(exc).__name__)
                raise ProviderUnavailable(self.name, reason) from None
            finally:
                watch.cancel()
        finally:
            if response is not None:
                if finished:
                    response.release()  # read to the end: the connection goes back to the pool
                else:
                    response.close()  # stopped early: closing the connection cancels upstream
            slots.release()
