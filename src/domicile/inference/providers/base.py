"""What the gateway asks of a model provider, whatever its kind.

A provider belongs to exactly one region (G2) and serves a fixed list of models with a set of
capabilities. Calls take the client's raw request bytes (forwarded unchanged where the
provider is an HTTP upstream) plus the one parse of them the gateway already made.

Three exceptions carry the only outcomes the router needs to tell apart:

- `ProviderUnavailable`: this provider cannot serve right now (connection refused, TLS
  failure, timeout, upstream 5xx). The router fails over to the next in-region provider.
- `ProviderBusy`, a `ProviderUnavailable`: every connection this provider may open is in
  use and none came free in time (capacity, not an outage). Failed over the same way; when
  it is all that is left the region answers 503 `region_busy` with `retry-after`.
- `UpstreamRejected`: the upstream answered a 4xx to a stream request; its status, body
  (already in OpenAI's error shape) and `retry-after`/`x-ratelimit-*` headers go back to the
  client unchanged.

A non-stream call returns a `ProviderResponse` for any status below 500, and a 502
`upstream_error` of the gateway's own (`malformed`) for a 200 that is not a JSON object.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from domicile.config import Capability, ProviderSettings
from domicile.errors import DomicileError, UpstreamError

__all__ = [
    "JSON",
    "Provider",
    "ProviderBusy",
    "ProviderResponse",
    "ProviderUnavailable",
    "UpstreamRejected",
    "malformed",
    "sse_error",
]

JSON = b"application/json"
# Raw header pairs, as ASGI has them.
HeaderPairs = Sequence[tuple[bytes, bytes]]


@dataclass(slots=True)
class ProviderResponse:
    status: int
    body: bytes
    content_type: bytes = JSON
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # What of an upstream's headers the client gets (on a 4xx: `retry-after`, `x-ratelimit-*`).
    headers: HeaderPairs = ()

    def client_headers(self, own: HeaderPairs) -> list[tuple[bytes, bytes]]:
        """The gateway's own extra headers plus the upstream's. The gateway's win: when it set
        `x-ratelimit-*` (the key's limits), the upstream's (the provider account's) are left
        out, so a client never sees two sets under the same names."""
        names = {name.lower() for name, _ in own}
        own_limits = any(name.startswith(b"x-ratelimit-") for name in names)
        return [*own, *((name, value) for name, value in self.headers
                        if name not in names
                        and not (own_limits and name.startswith(b"x-ratelimit-")))]


def malformed(provider: str, what: str) -> ProviderResponse:
    """The 502 the client gets for an upstream answer that is not a valid one. `what` says
    what was wrong in the gateway's words; the upstream's bytes are never quoted (they may
    hold content)."""
    error = UpstreamError(f"The provider {provider} answered with {what}; the gateway does "
                          "not relay it as an answer.")
    return ProviderResponse(error.status, error.body())


def sse_error(error: DomicileError) -> bytes:
    """`error` as an SSE event, as OpenAI's streams carry errors."""
    return b"data: " + error.body() + b"\n\n"


class ProviderUnavailable(Exception):
    """This provider cannot serve now; try the next. `reason` is a type name or an HTTP status,
    never response content."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason

    def stream_error(self) -> bytes:
        """The SSE event that ends a stream this broke off: OpenAI's error shape in a `data:`
        event, on which the `openai` SDK raises `APIError`."""
        return sse_error(UpstreamError(
            f"The stream from provider {self.provider} broke off ({self.reason}); the answer "
            "is incomplete."))


class ProviderBusy(ProviderUnavailable):
    """Every connection this provider may open is in use and none came free within its
    `pool_timeout_s`: the provider is up, just full. `retry_after` is the hint (seconds) the
    client gets when no other provider could take the request either."""

    def __init__(self, provider: str, reason: str, retry_after: int) -> None:
        super().__init__(provider, reason)
        self.retry_after = retry_after


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
    # Works in this process (a model): the gateway cancels its call when the client leaves.
    in_process: ClassVar[bool] = False

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

    @property
    def saturated(self) -> bool:
        """True while a call would have to wait for a connection (in-process kinds never)."""
        return False

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
        """Raw SSE bytes as they arrive, whole events only. Raises `ProviderUnavailable` or
        `UpstreamRejected` before its first chunk, and `ProviderUnavailable` when the stream
        breaks off later (so the client can be told); closing it early cancels the upstream
        request."""
        raise NotImplementedError(f"{self.kind} does not stream chat")

    async def embeddings(self, body: bytes, parsed: Mapping[str, Any], *,
                         owner: str = "") -> ProviderResponse:
        """`owner` says whose request this is (the gateway passes the project's id): for a
        fair share of a resource the provider's callers share, nothing else."""
        raise NotImplementedError(f"{self.kind} does not serve embeddings")

    async def images(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        raise NotImplementedError(f"{self.kind} does not generate images")
