"""`openai-compatible`: any HTTP upstream that speaks OpenAI's API (OpenAI EU, Azure OpenAI,
Mistral, vLLM, Ollama, ...).

The client's request bytes go upstream unchanged (but for the `stream_options` the gateway
splices into a stream request that does not ask for usage: see `usage.request_usage`), over
one pooled `aiohttp.ClientSession` per provider, opened at startup. G6: TLS 1.2 or later
with certificate verification (the system's CAs, or the provider's `ca_file`); plain http
only where config validation allowed it (loopback, or `insecure_http`). `timeout_s` bounds a
whole non-stream call, and a stream's connect + response headers + first chunk (later chunks
may take their time).

The provider's API key is read once at start into the request headers; it is never logged
and this object's repr does not show it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

import aiohttp
from yarl import URL

from domicile.config import Capability, ProviderSettings

from ..usage import usage_counts
from .base import JSON, Provider, ProviderResponse, ProviderUnavailable, UpstreamRejected

__all__ = ["OpenAICompatibleProvider", "upstream_tls_context"]

POOL_SIZE = 256
KEEPALIVE_S = 30.0
_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def upstream_tls_context(ca_file: str | None) -> ssl.SSLContext:
    """G6: verification on (hostname and chain), nothing below TLS 1.2."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _header_value(value: str) -> bytes:
    return value.encode("latin-1", "replace")


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
        connector = aiohttp.TCPConnector(
            limit=POOL_SIZE, keepalive_timeout=KEEPALIVE_S, ssl=self._ssl, ttl_dns_cache=300,
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

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ProviderUnavailable(self.name, "not started")
        return self._session

    async def _post(self, url: URL, body: bytes) -> ProviderResponse:
        session = self._open()
        try:
            async with session.post(url, data=body, headers=self._headers) as response:
                data = await response.read()
                status = response.status
                content_type = response.headers.get("Content-Type", "application/json")
        except _ERRORS as exc:
            raise ProviderUnavailable(self.name, type(exc).__name__) from None
        if status >= 500:
            raise ProviderUnavailable(self.name, f"HTTP {status}")
        prompt, completion = usage_counts(data) if status == 200 else (0, 0)
        return ProviderResponse(status, data, _header_value(content_type), prompt,
                                completion)

    async def chat(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        return await self._post(self._chat_url, body)

    async def embeddings(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        return await self._post(self._embeddings_url, body)

    async def images(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        return await self._post(self._images_url, body)

    async def chat_stream(self, body: bytes, parsed: Mapping[str, Any]
                          ) -> AsyncGenerator[bytes, None]:
        session = self._open()
        response: aiohttp.ClientResponse | None = None
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
                        response.status, data, _header_value(content_type) or JSON))
                first = await response.content.readany()
        except _ERRORS as exc:
            if response is not None:
                response.close()
            raise ProviderUnavailable(self.name, type(exc).__name__) from None
        except BaseException:
            if response is not None:
                response.close()
            raise
        finished = not first
        try:
            if first:
                yield first
            while True:
                try:
                    chunk = await response.content.readany()
                except _ERRORS as exc:
                    raise ProviderUnavailable(self.name, type(exc).__name__) from None
                if not chunk:
                    finished = True
                    return
                yield chunk
        finally:
            if finished:
                response.release()  # read to the end: the connection goes back to the pool
            else:
                response.close()  # stopped early: closing the connection cancels upstream
