"""The regional OpenAI-compatible gateway: a plain ASGI application, one per region.

The hot path is kept short on purpose (the gateway must add well under a millisecond): a dict
dispatch on (method, path), the key check from an in-memory cache before the body is read
(G3), one stdlib JSON parse of the body to read `model`/`stream`/`store`, the client's raw
bytes forwarded upstream unchanged (a stream that does not ask for usage gets
`stream_options.include_usage` spliced in, and the usage chunk taken back out of the answer,
so its tokens count too), usage appended to a buffer, the request counted in `/metrics` by
route template (cached counter children: microseconds). No logging per request, no disk, no
pydantic.

Every answer, errors included, carries `x-domicile-region`, `x-domicile-provider` and
`x-request-id`. Errors are rendered once, here, in OpenAI's shape. An unexpected exception is
a 500 whose log line names only its type and the request id (G4: an exception's message may
quote content).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

from pydantic import SecretStr

from domicile.config import Capability, ObservabilitySettings, Settings, is_loopback_host
from domicile.errors import (
    DomicileError,
    Forbidden,
    InvalidApiKey,
    NotFound,
    ZeroRetentionViolation,
)
from domicile.inference.chat import open_chat_stream
from domicile.inference.providers import (
    Provider,
    ProviderResponse,
    UpstreamRejected,
    build_providers,
)
from domicile.inference.providers.base import ProviderUnavailable, sse_error
from domicile.inference.routing import ModelRouter
from domicile.inference.usage import SseUsageScanner, SseUsageStripper, UsageRecorder, request_usage
from domicile.observability.metrics import (
    CONTENT_TYPE,
    UNMATCHED_ROUTE,
    RequestMetrics,
    count_fail_closed,
    count_provider_error,
    exposition,
)
from domicile.observability.tracing import request_tracer
from domicile.storage.faults import store_fault
from domicile.storage.interfaces import ContentStore, UsageSink
from domicile.tenancy.grants import ApiKeyGrant, KeyAuthenticator

from .auth import Doorkeeper, KeyCache
from .batches import BatchesEndpoint
from .files import FilesEndpoint
from .http import (
    UNKNOWN_ROUTE,
    ClientDisconnected,
    Exchange,
    Message,
    Receive,
    Scope,
    Send,
    dump_json,
    mark_retrieved,
    model_of,
    parse_json_object,
    refused_unless_get,
)
from .ratelimit import InMemoryRateLimiter, RateLimiter
from .residency import content_store_for, residency_answer
from .responses import ResponsesEndpoint
from .routes import Endpoint, Route, RouteTable
from .uploads import UploadsEndpoint

__all__ = ["UNKNOWN_ROUTE", "ASGIApp", "GatewayApp", "create_gateway_app"]

log = logging.getLogger("domicile.gateway")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _MountedLifespan:
    """Runs the fallback app's own lifespan inside ours, if it has one."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _next(self) -> Message | None:
        assert self._task is not None
        getter = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait((getter, self._task), return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        return None

    async def startup(self, scope: Scope) -> None:
        async def send(message: Message) -> None:
            await self._outbox.put(message)

        self._task = asyncio.ensure_future(self._app(scope, self._inbox.get, send))
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._next()
        if answer is None:  # the app does not speak lifespan: fine
            with contextlib.suppress(Exception):
                self._task.result()
            self._task = None
        elif answer["type"] == "lifespan.startup.failed":
            raise RuntimeError("the mounted application failed to start")

    async def shutdown(self) -> None:
        if self._task is None:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._next()
        with contextlib.suppress(Exception):
            await self._task


class GatewayApp:
    """The ASGI app of `region`'s gateway, built from that region's providers only (G2).

    `fallback_app` receives every request outside `/v1` and `/healthz` (the workspace);
    `rate_limiter` defaults to per-process in-memory windows; `providers` are the region's
    providers when the caller built them (to share them with the workspace), else built here.
    """

    def __init__(
        self,
        settings: Settings,
        region: str,
        *,
        authenticator: KeyAuthenticator,
        usage_sink: UsageSink,
        content_store: ContentStore | None = None,
        fallback_app: ASGIApp | None = None,
        rate_limiter: RateLimiter | None = None,
        providers: Sequence[Provider] | None = None,
    ) -> None:
        region_settings = settings.region(region)
        if content_store is not None and content_store.region != region:
            raise ValueError(f"the content store of region {content_store.region} "
                             f"cannot serve region {region}")
        self.region = region
        self.providers = list(providers) if providers is not None else build_providers(
            region_settings)
        self.router = ModelRouter(region, self.providers)
        self.usage = UsageRecorder(usage_sink, region)
        self._door = Doorkeeper(settings, region, KeyCache(authenticator))
        self._limiter: RateLimiter = rate_limiter or InMemoryRateLimiter()
        self._store = content_store
        self._fallback = fallback_app
        self._mounted = _MountedLifespan(fallback_app) if fallback_app is not None else None
        self._responses = ResponsesEndpoint(self.router, content_store, self.usage, self._limiter)
        self._files = FilesEndpoint(content_store, region)
        self._uploads = UploadsEndpoint(content_store, region)
        self._batches = BatchesEndpoint(content_store, region, lambda: self.routes,
                                        usage=self.usage, offers=self.router.offers)
        self._endpoints: tuple[Endpoint, ...] = (
            self._responses, self._files, self._uploads, self._batches)
        self._region_header = region.encode()
        self._health = dump_json({"status": "ok", "region": region})
        self._models = dump_json({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": provider.name}
            for model, provider in self.router.models()
        ]})
        self.routes = RouteTable([
            Route("GET", "/v1/models", self._list_models, "listModels"),
            Route("POST", "/v1/chat/completions", self._chat, "createChatCompletion"),
            Route("POST", "/v1/embeddings", self._embeddings, "createEmbedding"),
            Route("POST", "/v1/images/generations", self._images, "createImage"),
            Route("GET", "/v1/residency", self._residency, "getResidency"),
            *(route for endpoint in self._endpoints for route in endpoint.routes()),
        ])
        self._starting: asyncio.Future[None] | None = None
        self._started = False
        # Counts and timings per route template (never a path): `GET /metrics`.
        self.metrics = RequestMetrics(region)
        self._serves_metrics = settings.observability.metrics
        # Answered here outside /v1; every other path goes to the mounted app (the workspace).
        self._own_paths = frozenset({"/healthz", "/openapi.json",
                                     *(("/metrics",) if self._serves_metrics else ())})
        self._metrics_access = MetricsAccess(settings.observability)
        self._tracer = request_tracer(settings.observability, region)

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                await self._http(scope, receive, send)
            except Exception as exc:
                # Nothing may escape to the server: its traceback would quote content (G4).
                log.error("unhandled %s outside a handler", type(exc).__name__)
                with contextlib.suppress(Exception):  # the answer may have begun already
                    await Exchange(scope, receive, send, self._region_header).fail(
                        DomicileError("The server had an error while processing your request."))
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif self._fallback is not None and not _is_api(scope["path"]):
            await self._fallback(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup(scope)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed",
                                "message": f"gateway startup failed: {type(exc).__name__}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self, lifespan_scope: Scope | None = None) -> None:
        """Open provider connection pools, start the usage flusher (and the mounted app).

        Run by the lifespan protocol; a server without lifespan gets it on the first request.
        """
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start(lifespan_scope))
            self._starting.add_done_callback(mark_retrieved)
        await asyncio.shield(self._starting)

    async def _start(self, lifespan_scope: Scope | None) -> None:
        await asyncio.gather(*(provider.start() for provider in self.providers))
        await self.usage.start()
        for endpoint in self._endpoints:
            await endpoint.start()
        if self._mounted is not None:
            await self._mounted.startup(lifespan_scope or {
                "type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}})
        self._started = True

    async def shutdown(self) -> None:
        """Flush usage, close provider pools."""
        if self._mounted is not None:
            await self._mounted.shutdown()
        for endpoint in reversed(self._endpoints):
            await endpoint.aclose()
        await self.usage.aclose()
        await self._limiter.aclose()
        await asyncio.gather(*(provider.aclose() for provider in self.providers),
                             return_exceptions=True)
        if self._tracer is not None:  # sends the spans still batched
            await asyncio.to_thread(self._tracer.shutdown)
            self._tracer = None
        self._starting = None
        self._started = False

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if not _is_api(path):
            await self._outside_api(scope, receive, send, path)
            return
        call = Exchange(scope, receive, send, self._region_header)
        route = self.routes.exact(scope["method"], path)
        # Usage keeps a route's template, never the path itself: a path is client text (G4).
        call.endpoint = path if route is not None else self.routes.template_of(path)
        try:
            if not self._started:
                await self.startup()
            grant = await self._door.admit(scope)  # G3: before a byte of the body is read
            call.grant = grant
            if grant.rpm_limit is not None or grant.tpm_limit is not None:
                call.extra_headers = await self._limiter.acquire(grant)
            if route is None:
                route = self._match(call, grant)
            await route.handler(call, grant)
        except DomicileError as exc:
            count_fail_closed(self.region, exc.code)
            await call.fail(exc, list(exc.headers))
        except ClientDisconnected:
            call.status = 499
        except Exception as exc:
            # A store fault is 503/507, logged with its cause by store_fault. Anything else:
            # the type and request id only, the message may quote request content (G4).
            fault = store_fault(exc, call.request_id)
            if fault is not None:  # a KMS that did not answer is a fail-closed refusal
                count_fail_closed(self.region, fault.code)
            else:
                log.error("unhandled %s in request %s", type(exc).__name__, call.request_id,
                          extra={"request_id": call.request_id, "route": call.endpoint,
                                 "region": self.region})
                fault = DomicileError(
                    "The server had an error while processing your request "
                    f"(request id {call.request_id}).")
            await call.fail(fault, list(fault.headers))
        if call.grant is not None:  # auth failures leave no usage
            await self._account(call, call.grant)
        self._observe(call.endpoint, scope["method"], call.status, call.started)

    def _observe(self, route: str, method: str, status: int, started: float) -> None:
        """Count a finished request by its route template (metrics, and a span if traced)."""
        if route == UNKNOWN_ROUTE:
            route = UNMATCHED_ROUTE
        now = time.perf_counter()
        self.metrics.observe(route, method, status, now - started)
        if self._tracer is not None:
            end_ns = time.time_ns()
            self._tracer.record(method, route, status,
                                end_ns - int((now - started) * 1e9), end_ns)

    async def _outside_api(self, scope: Scope, receive: Receive, send: Send, path: str
                           ) -> None:
        """`/healthz`, `/metrics`, `/openapi.json`, and the mounted app (the workspace)."""
        public = Exchange(scope, receive, send, self._region_header)
        if self._fallback is not None and path not in self._own_paths:
            answered = _Answered()
            try:
                await self._fallback(scope, receive, self._tagged(send, answered))
            finally:
                # The workspace's route template, as its router matched it (Starlette puts
                # the route in the scope), else "unmatched": never the path.
                template = getattr(scope.get("route"), "path", None)
                # No answer begun: the client left (or the app failed), counted as the API's
                # client-gone 499.
                self._observe(template if isinstance(template, str) else UNMATCHED_ROUTE,
                              scope["method"], answered.status or 499, public.started)
            return
        route = path
        if path == "/healthz":
            if not await refused_unless_get(public):
                await public.respond(200, self._health)
        elif path == "/metrics" and self._serves_metrics:
            # Counts and labels only (no content), but they name providers and volumes: the
            # scraper's bearer token, else loopback only (docs/OPERATIONS.md).
            refusal = self._metrics_access.refusal(scope)
            if refusal is not None:
                await public.fail(refusal, list(refusal.headers))
            elif not await refused_unless_get(public):
                await public.respond(200, await asyncio.to_thread(exposition), CONTENT_TYPE)
        elif path == "/openapi.json":  # public, like /healthz; built once per route table
            from .openapi import serve_document

            await serve_document(public, self.routes, workspace=self._fallback is not None)
        else:
            route = UNMATCHED_ROUTE
            await public.fail(NotFound(f"Invalid URL ({scope['method']} {path})"))
        self._observe(route, scope["method"], public.status, public.started)

    async def _account(self, call: Exchange, grant: ApiKeyGrant) -> None:
        """Charge the tokens to the key's limit and record the usage metadata."""
        try:
            tokens = call.prompt_tokens + call.completion_tokens
            if tokens and grant.tpm_limit is not None:
                await self._limiter.charge(grant, tokens)
        except Exception as exc:  # a shared limiter's store may be down: log, go on
            log.error("rate limiter charge failed (%s) in request %s", type(exc).__name__,
                      call.request_id, extra={"request_id": call.request_id,
                                              "route": call.endpoint, "region": self.region})
        # A model name not offered here is client text like any other: not kept (G4).
        model = call.model if self.router.offers(call.model) else ""
        self.usage.add(grant.project_id, grant.key_id, call.endpoint, model, call.provider,
                       call.status, call.prompt_tokens, call.completion_tokens,
                       (time.perf_counter() - call.started) * 1000, call.request_id)

    def _tagged(self, send: Send, answered: _Answered) -> Send:
        """The mounted app's answers say which region served them, too (and their status is
        noted in `answered`, for the metrics)."""
        region = self._region_header

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"x-domicile-region" for name, _ in headers):
                    headers.append((b"x-domicile-region", region))
                message = {**message, "headers": headers}
            await send(message)

        return tagged

    def _match(self, call: Exchange, grant: ApiKeyGrant) -> Route:
        """The route of a path with ids (or none: 404, 405). Under a resource whose every
        route keeps content, a zero-retention key is refused first, whatever the path (G4)."""
        method, path = call.scope["method"], call.scope["path"]
        feature = self.routes.retained_feature(path)
        if feature is not None:
            content_store_for(grant, self._store, feature)
        route, call.params = self.routes.match(method, path)
        return route

    # -- endpoints --------------------------------------------------------------------------

    async def _list_models(self, call: Exchange, grant: ApiKeyGrant) -> None:
        await call.respond(200, self._models)

    async def _residency(self, call: Exchange, grant: ApiKeyGrant) -> None:
        await call.respond_json(residency_answer(grant, self.router,
                                                 has_store=self._store is not None))

    async def _chat(self, call: Exchange, grant: ApiKeyGrant) -> None:
        body = await call.read_body()
        parsed = parse_json_object(body)
        model = call.model = model_of(parsed)
        if parsed.get("store") is True and grant.retention == "zero":
            raise ZeroRetentionViolation(
                "`store: true` keeps the completion, and this project has zero data "
                "retention. Send `store: false` (or omit it).", param="store")
        # A cheap look for image parts: they need a provider that declares vision.
        capability: Capability = "vision" if b'"image_url"' in body else "chat"
        providers = self.router.route(model, capability)
        if parsed.get("stream") is True:
            await self._chat_stream(call, providers, body, parsed)
            return
        provider, answer = await self.router.first_available(
            model, providers, lambda p: p.chat(body, parsed))
        await self._answer(call, provider.name, answer)

    async def _embeddings(self, call: Exchange, grant: ApiKeyGrant) -> None:
        # Whose request it is: an in-process encoder shares its steps fairly among projects.
        owner = grant.project_id
        await self._forward(call, "embeddings",
                            lambda p, body, parsed: p.embeddings(body, parsed, owner=owner))

    async def _images(self, call: Exchange, grant: ApiKeyGrant) -> None:
        await self._forward(call, "images", lambda p, body, parsed: p.images(body, parsed))

    async def _forward(
        self, call: Exchange, capability: Capability,
        ask: Callable[[Provider, bytes, dict[str, Any]], Awaitable[ProviderResponse]],
    ) -> None:
        """Read, route and answer a one-shot request to the first provider that serves it."""
        body = await call.read_body()
        parsed = parse_json_object(body)
        model = call.model = model_of(parsed)

        def attempt(provider: Provider) -> Awaitable[ProviderResponse]:
            # An in-process model's work stops when its client leaves; an upstream call is
            # not watched (watching costs two tasks, ~50 us, on every request).
            if provider.in_process:
                return call.unless_disconnected(ask(provider, body, parsed))
            return ask(provider, body, parsed)

        provider, answer = await self.router.first_available(
            model, self.router.route(model, capability), attempt)
        await self._answer(call, provider.name, answer)

    @staticmethod
    async def _answer(call: Exchange, provider: str, answer: ProviderResponse) -> None:
        """A provider's answer, as it gave it (a stream's 4xx too), with what of its headers
        the client gets."""
        call.provider = provider
        call.prompt_tokens = answer.prompt_tokens
        call.completion_tokens = answer.completion_tokens
        if answer.headers:  # an upstream 4xx's `retry-after` and `x-ratelimit-*`
            call.extra_headers = answer.client_headers(call.extra_headers)
        await call.respond(answer.status, answer.body, answer.content_type)

    async def _chat_stream(self, call: Exchange, providers: Sequence[Provider], body: bytes,
                           parsed: dict[str, Any]) -> None:
        # Token counts only come with `include_usage`: ask for them when the client did not
        # (the stripper then takes the extra chunk back out), so streaming counts against
        # usage and token limits like any other request.
        asking = request_usage(body, parsed)
        if asking is not None:
            body, parsed = asking

        try:
            opened = await open_chat_stream(self.router, call.model, providers, body, parsed)
        except UpstreamRejected as rejected:
            await self._answer(call, rejected.provider, rejected.response)
            return
        call.provider = opened.provider.name
        await self._relay(call, opened.chunks, opened.first, strip_usage=asking is not None)

    async def _relay(self, call: Exchange, chunks: AsyncGenerator[bytes, None],
                     first: bytes, *, strip_usage: bool = False) -> None:
        """Upstream SSE bytes to the client as they come; a client that leaves cancels the
        upstream request (closing the generator closes its connection). With `strip_usage`
        the usage the gateway asked for is taken out on the way (`SseUsageStripper`).

        A stream that breaks off upstream (silent past the provider's idle timeout, its
        connection cut, its body truncated) ends with an error event in OpenAI's shape and
        then a clean end of the body, so the client knows the answer is incomplete (the
        `openai` SDK raises `APIError`); its usage status is 502."""
        scanner = SseUsageScanner()
        stripper = SseUsageStripper() if strip_usage else None

        async def relay_as_is() -> None:
            if first:
                scanner.feed(first)
                await call.stream(first)
            async for chunk in chunks:
                scanner.feed(chunk)
                await call.stream(chunk)

        async def relay_stripped(stripper: SseUsageStripper) -> None:
            if first and (out := stripper.feed(first)):
                await call.stream(out)
            async for chunk in chunks:
                if out := stripper.feed(chunk):
                    await call.stream(out)
            if out := stripper.close():
                await call.stream(out)

        async def pump() -> None:
            await call.start_stream()
            try:
                if stripper is None:
                    await relay_as_is()
                else:
                    await relay_stripped(stripper)
            except ProviderUnavailable as broken:
                call.status = 502
                count_provider_error(self.region, broken.provider, broken.reason,
                                     mid_stream=True)
                await call.stream(broken.stream_error())
            except Exception:
                # Not the upstream's doing: still a parseable end for the client; the caller
                # logs the type.
                call.status = 500
                await call.stream(sse_error(DomicileError(
                    "The server had an error while relaying this stream (request id "
                    f"{call.request_id}); the answer is incomplete.")))
                await call.end_stream()
                raise
            await call.end_stream()

        try:
            await call.unless_disconnected(pump())
        finally:
            # Always, whatever ended the relay: closes the upstream connection (or returns it
            # to the pool) and frees the provider's connection slot.
            await chunks.aclose()
            counted = scanner if stripper is None else stripper
            call.prompt_tokens = counted.prompt_tokens
            call.completion_tokens = counted.completion_tokens


class _Answered:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0


class MetricsAccess:
    """Who may read `GET /metrics`. With `[observability] metrics_token_env`: whoever sends
    `Authorization: Bearer <the token>` (compared in constant time), 401 otherwise, and 401
    for everyone while that env var is empty (fail closed). Without: loopback clients only,
    403 otherwise, so that a default install exposes nothing off the machine."""

    __slots__ = ("_token", "_token_required")

    def __init__(self, settings: ObservabilitySettings) -> None:
        self._token_required = settings.metrics_token_env is not None
        self._token: SecretStr | None = settings.metrics_token()
        if self._token_required and self._token is None:
            log.warning("[observability] metrics_token_env names %s, which is empty: "
                        "GET /metrics refuses every scrape", settings.metrics_token_env)

    def __repr__(self) -> str:
        return f"MetricsAccess(token_required={self._token_required})"

    def refusal(self, scope: Scope) -> DomicileError | None:
        """None: the request may read the metrics; else the error to answer."""
        if not self._token_required:
            client = scope.get("client")
            if is_loopback_host(client[0] if client else None):
                return None
            return Forbidden("GET /metrics answers loopback clients only; set [observability] "
                             "metrics_token_env to scrape it from elsewhere.")
        presented = _bearer_token(scope)
        expected = b"" if self._token is None else self._token.get_secret_value().encode()
        # compare_digest even when one is missing: the time taken says nothing either way.
        if hmac.compare_digest(presented or b"\0", expected) and expected:
            return None
        return InvalidApiKey("GET /metrics needs the scraper's bearer token "
                             "(Authorization: Bearer <token>).",
                             headers=[(b"www-authenticate", b'Bearer realm="metrics"')])


def _bearer_token(scope: Scope) -> bytes | None:
    """The credential of an `Authorization: Bearer …` header, if there is one."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, credential = bytes(value).strip().partition(b" ")
            if scheme.lower() == b"bearer" and credential.strip():
                return credential.strip()
            return None
    return None


def _is_api(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


# The public name of the constructor (the class is the factory: one signature to keep).
create_gateway_app = GatewayApp
