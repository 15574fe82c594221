"""What the gateway asks of a model provider, whatever its kind.

A provider belongs to exactly one region (G2) and serves a fixed list of models with a set of
capabilities. Calls take the client's raw request bytes (forwarded unchanged where the
provider is an HTTP upstream) plus the one parse of them the gateway already made.

Two exceptions carry the only outcomes the router needs to tell apart:

- `ProviderUnavailable`: this provider cannot serve right now (connection refused, TLS
  failure, timeout, upstream 5xx). The router fails over to the next in-region provider.
- `UpstreamRejected`: the upstream answered a 4xx to a stream request; its status and body
  (already in OpenAI's error shape) go back to the client unchanged.

A non-stream call returns a `ProviderResponse` for any status below 500.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from domicile.config import Capability, ProviderSettings

__all__ = [
    "JSON",
    "Provider",
    "ProviderResponse",
    "ProviderUnavailable",
    "UpstreamRejected",
]

JSON = b"application/json"


@dataclass(slots=True)
class ProviderResponse:
    status: int
    body: bytes
    content_type: bytes = JSON
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ProviderUnavailable(Exception):
    """This provider cannot serve now; try the next. `reason` is a type name or an HTTP status,
    never response content."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason


class UpstreamRejected(Exception):
    """An upstream 4xx on a stream request, passed through to the client as is."""

    def __init__(self, provider: str, response: ProviderResponse) -> None:
        super().__init__(f"{provider}: upstream status {response.status}")
        self.provider = provider
        self.response = response


class Provider:
    """One configured provider of one region. Subclasses implement the calls their kind
    supports (`supported`); the router only calls a provider for a capability it declares."""

    kind: ClassVar[str]
    supported: ClassVar[frozenset[Capability]]

    def __init__(self, settings: ProviderSettings, region: str) -> None:
        self.name = settings.name
        self.region = region
        self.models: tuple[str, ...] = settings.models
        self.weight = settings.weight
        # A config may declare fewer capabilities than the kind has, never more.
        self.capabilities: frozenset[Capability] = (
            settings.effective_capabilities & self.supported
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, region={self.region!r})"

    def describe(self) -> dict[str, Any]:
        """What `/v1/residency` says about this provider."""
        return {
            "name": self.name,
            "kind": self.kind,
            "region": self.region,
            "models": list(self.models),
            "capabilities": sorted(self.capabilities),
        }

    async def start(self) -> None:
        """Open pooled connections; called once from the app's lifespan startup."""

    async def aclose(self) -> None:
        """Close what `start` opened."""

    async def chat(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        raise NotImplementedError(f"{self.kind} does not serve chat")

    def chat_stream(self, body: bytes, parsed: Mapping[str, Any]
                    ) -> AsyncGenerator[bytes, None]:
        """Raw SSE bytes as they arrive. Raises `ProviderUnavailable` or `UpstreamRejected`
        before its first chunk; closing it early cancels the upstream request."""
        raise NotImplementedError(f"{self.kind} does not stream chat")

    async def embeddings(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        raise NotImplementedError(f"{self.kind} does not serve embeddings")

    async def images(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        raise NotImplementedError(f"{self.kind} does not generate images")
