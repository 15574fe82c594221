"""The Responses API (`/v1/responses`), served on top of chat completions.

A Responses request becomes one chat request (`responses_shapes.to_chat_request`: input
items, instructions, function tools, `tool_choice`), so any in-region chat provider serves it
with the same routing and failover as `/v1/chat/completions`. The answer becomes a Response
object (`resp_…`): an assistant message and/or `function_call` items. With `stream: true`
the provider's chat stream is translated event by event (`responses_stream`), never
buffered; a stream that breaks off upstream ends with `response.failed`, and a client that
leaves closes the upstream request.

Retention decides what is kept (G4):
- zero: stateless. `store: true`, `background: true`, `previous_response_id` and every read
  of a stored response (`GET`, `input_items`, `cancel`, `DELETE`) are refused with
  `zero_retention`; an absent `store` means "do not store".
- regional: `store` true or absent keeps the response, its input items and its conversation
  (record kind "response") in the region's encrypted store; `GET /v1/responses/{id}` reads
  it back, `previous_response_id` continues it (tool calls and their outputs included).

Background (`background: true`, regional only): the response is stored `queued` and the
request answers at once; a task of this process runs it in the region (at most
`MAX_RUNNING` at a time, `MAX_WAITING` waiting, else 503 `server_busy`), polled with GET,
stopped with `POST /v1/responses/{id}/cancel` (status `cancelled`). Each queued or running
record names its owner (this process's boot id) and a lease the owner renews every
`LEASE_S / 3` s. A process that stops ends its runs as `failed`; one that dies cannot, so a
read that finds a run whose owner's lease has lapsed (or, in the owner itself, a run with no
task) marks it `failed` with an error saying so: nothing stays `queued` forever, and a run
still alive on another replica is never taken for dead. A run records its usage and charges
its tokens to the key's limit when it ends, as the app does for a request. A run writes its
state only while the record exists (`replace_record`), so a DELETE is never undone.

`GET /v1/responses/{id}?stream=true` replays a finished response's events
(`responses_stream.replay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from domicile.errors import (
    DomicileError,
    InvalidInput,
    NotFound,
    ServerBusy,
    UpstreamError,
    ZeroRetentionViolation,
)
from domicile.inference.chat import open_chat_stream
from domicile.inference.providers import Provider, ProviderResponse, UpstreamRejected
from domicile.inference.providers.base import ProviderUnavailable
from domicile.inference.providers.shapes import new_id
from domicile.inference.routing import ModelRouter
from domicile.inference.usage import UsageRecorder
from domicile.storage.faults import store_fault
from domicile.storage.interfaces import ContentStore, TenantRef
from domicile.tenancy.grants import ApiKeyGrant
from domicile.web.query import int_param, query_params

from .http import Exchange, dump_json, mark_retrieved, model_of, parse_json_object
from .ratelimit import RateLimiter
from .residency import content_store_for, tenant_of
from .responses_shapes import (
    ChatRequest,
    ResponseDraft,
    check_params,
    output_from_chat,
    to_chat_request,
)
from .responses_shapes import usage_object as _usage
from .responses_stream import ResponseEventStream, replay
from .routes import Route

__all__ = ["LEASE_S", "MAX_RUNNING", "MAX_WAITING", "ResponsesEndpoint", "to_chat_request"]

log = logging.getLogger("domicile.gateway")

KIND = "response"
_RESPONSE_ID = re.compile(r"^resp_[A-Za-z0-9]{1,64}$")
_ITEM_ID = re.compile(r"^(?:msg|fc|fco)_[A-Za-z0-9]{1,64}$")
MAX_RUNNING = 8  # background responses running at once in one process
MAX_WAITING = 256  # and waiting for a slot
LEASE_S = 60.0  # how long a run's owner may stay silent before a reader takes it for dead
_UNFINISHED = frozenset({"queued", "in_progress"})
_REPLAYABLE = frozenset({"completed", "incomplete", "failed"})  # those with a closing event
_ORPHANED = ("The server that was running this background response stopped before it "
             "finished; nothing more will come of it. Create the response again.")
_STOPPED = ("The server stopped before this background response finished; create the "
            "response again.")
_MAX_ITEMS_PAGE = 100


def _record(response: dict[str, Any], items: list[dict[str, Any]],
            conversation: list[dict[str, Any]], run: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """A stored response's record: the Response object, this request's input items, the chat
    conversation so far (for `previous_response_id`) and, while a background run is
    unfinished, who runs it."""
    record = {"response": response, "input_items": items, "conversation": conversation}
    if run is not None:
        record["run"] = run
    return record


class ResponsesEndpoint:
    def __init__(self, router: ModelRouter, store: ContentStore | None,
                 usage: UsageRecorder | None = None, limiter: RateLimiter | None = None
                 ) -> None:
        self._router = router
        self._store = store
        # A background run's tokens, recorded and charged as the foreground request's are
        # (the app does that for a request, once it has answered: a run ends later).
        self._usage = usage
        self._limiter = limiter
        self._boot = new_id("boot_")  # this process's runs; another's are judged by lease
        self._slots = asyncio.Semaphore(MAX_RUNNING)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, tuple[ContentStore, TenantRef]] = {}
        self._writes = _KeyedLocks()  # one write of a response's record at a time, per id
        self._renewer: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Start renewing the leases of this process's background runs."""
        self._closing = False
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew(), name="domicile-responses-lease")

    async def aclose(self) -> None:
        """Stop the background runs (each marks its response `failed`), then the renewer."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/responses", self.create, "createResponse"),
            Route("GET", "/v1/responses/{response_id}", self.retrieve, "getResponse"),
            Route("DELETE", "/v1/responses/{response_id}", self.delete, "deleteResponse"),
            Route("POST", "/v1/responses/{response_id}/cancel", self.cancel,
                  "cancelResponse"),
            Route("GET", "/v1/responses/{response_id}/input_items", self.input_items,
                  "listInputItems"),
        ]

    def _stored(self, grant: ApiKeyGrant, feature: str) -> tuple[ContentStore, TenantRef]:
        return (content_store_for(grant, self._store, feature),
                tenant_of(grant, self._router.region))

    # -- create ------------------------------------------------------------------------------

    async def create(self, call: Exchange, grant: ApiKeyGrant) -> None:
        parsed = parse_json_object(await call.read_body())
        call.model = model_of(parsed)
        check_params(parsed)  # what the Response echoes is of OpenAI's types, or a 400
        zero = grant.retention == "zero"
        background = parsed.get("background") is True
        streaming = parsed.get("stream") is True
        if background and zero:
            raise ZeroRetentionViolation(
                "Background responses are kept until read, and this project has zero "
                "data retention.", param="background")
        if parsed.get("store") is True and zero:
            raise ZeroRetentionViolation(
                "`store: true` keeps the response, and this project has zero data retention. "
                "Send `store: false` (or omit it).", param="store")
        if background and parsed.get("store") is False:
            raise InvalidInput("A background response is kept until read: it needs `store` "
                               "true (or absent).", param="store")
        if background and streaming:
            raise InvalidInput("Streaming a background response is not supported by this "
                               "gateway: create it, then poll it with GET.", param="stream")
        keep = parsed.get("store") is not False and not zero
        previous = parsed.get("previous_response_id")
        history: list[dict[str, Any]] = []
        if previous is not None:
            store, tenant = self._stored(grant, "`previous_response_id`")
            earlier = await self._load(store, tenant, previous, "previous_response_id")
            if earlier["response"]["status"] in _UNFINISHED:
                raise InvalidInput(f"Response '{previous}' has not finished yet.",
                                   param="previous_response_id")
            history = earlier["conversation"]
        request = to_chat_request(parsed, history)
        providers = self._router.route(call.model, "vision" if request.has_image else "chat")
        draft = ResponseDraft(parsed, stored=keep, background=background)
        if background:
            await self._enqueue(call, grant, draft, request, providers)
        elif streaming:
            await self._stream(call, grant, draft, request, providers, keep)
        else:
            await self._answer(call, grant, draft, request, providers, keep)

    async def _ask(self, model: str, providers: Sequence[Provider], request: ChatRequest
                   ) -> tuple[Provider, ProviderResponse]:
        body = dump_json(request.chat)
        return await self._router.first_available(
            model, providers, lambda p: p.chat(body, request.chat))

    @staticmethod
    def _finished(draft: ResponseDraft, provider: str, answer: ProviderResponse
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the Response, the assistant message to keep) of a provider's 200 answer."""
        try:
            chat_answer = json.loads(answer.body)
        except ValueError:
            raise UpstreamError(f"Provider {provider} answered with invalid JSON.") from None
        # Any shape but chat's is the provider's fault: a 502, never a 500 of ours.
        choices = chat_answer.get("choices") if isinstance(chat_answer, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        if (not isinstance(choice, dict) or not isinstance(message, dict)
                or not isinstance(message.get("tool_calls") or [], list)):
            raise UpstreamError(f"Provider {provider} answered with something that is not a "
                                "chat completion (no choice with a message object).")
        if isinstance(chat_answer.get("model"), str) and chat_answer["model"]:
            draft.model = chat_answer["model"]
        output, incomplete, assistant = output_from_chat(message, choice.get("finish_reason"))
        status = "incomplete" if incomplete else "completed"
        response = draft.snapshot(status, output, incomplete=incomplete,
                                  usage=_usage(answer.prompt_tokens, answer.completion_tokens))
        return response, assistant

    async def _answer(self, call: Exchange, grant: ApiKeyGrant, draft: ResponseDraft,
                      request: ChatRequest, providers: Sequence[Provider], keep: bool) -> None:
        provider, answer = await self._ask(call.model, providers, request)
        call.provider = provider.name
        call.prompt_tokens, call.completion_tokens = answer.prompt_tokens, answer.completion_tokens
        if answer.status != 200:  # the upstream's own error, already in OpenAI's shape
            await call.respond(answer.status, answer.body, answer.content_type)
            return
        response, assistant = self._finished(draft, provider.name, answer)
        if keep:
            await self._keep(grant, response, request, assistant)
        await call.respond_json(response)

    async def _keep(self, grant: ApiKeyGrant, response: dict[str, Any], request: ChatRequest,
                    assistant: dict[str, Any]) -> None:
        store, tenant = self._stored(grant, "Storing a response")
        record = _record(response, request.items, [*request.conversation, assistant])
        await asyncio.to_thread(store.put_record, tenant, KIND, response["id"],
                                dump_json(record))

    # -- stream ------------------------------------------------------------------------------

    async def _stream(self, call: Exchange, grant: ApiKeyGrant, draft: ResponseDraft,
                      request: ChatRequest, providers: Sequence[Provider], keep: bool) -> None:
        # The gateway builds this chat request itself, so it asks for the usage chunk
        # directly (what `request_usage` splices into a client's own bytes on /chat).
        chat = {**request.chat, "stream": True, "stream_options": {"include_usage": True}}
        try:
            opened = await open_chat_stream(self._router, call.model, providers,
                                            dump_json(chat), chat)
        except UpstreamRejected as rejected:  # a 4xx before any event: an HTTP error
            call.provider = rejected.provider
            answer = rejected.response
            if answer.headers:
                call.extra_headers = answer.client_headers(call.extra_headers)
            await call.respond(answer.status, answer.body, answer.content_type)
            return
        call.provider = opened.provider.name
        events = ResponseEventStream(draft)
        chunks = opened.chunks

        async def pump() -> None:
            # The first events are made before the head is sent, so head and events leave
            # back to back (as a chat stream's first chunk does): a client then wakes once.
            first = events.opening() + events.feed(opened.first)
            await call.start_stream()
            await call.stream(first)
            try:
                async for chunk in chunks:
                    if out := events.feed(chunk):
                        await call.stream(out)
            except ProviderUnavailable as broken:
                call.status = 502
                closing = events.fail(f"The stream from provider {broken.provider} broke "
                                      f"off ({broken.reason}); the answer is incomplete.")
            except Exception:
                # Not the upstream's doing: still a parseable end; the caller logs the type.
                call.status = 500
                await call.stream(events.fail(
                    "The server had an error while streaming this response (request id "
                    f"{call.request_id}); the answer is incomplete.") + events.end())
                await call.end_stream()
                raise
            else:
                closing = events.finish()
                if events.upstream_error:
                    call.status = 502
            if keep and events.response is not None:  # kept before the client hears the end
                closing += await self._keep_streamed(call, grant, events, request)
            await call.stream(closing + events.end())
            await call.end_stream()

        try:
            await call.unless_disconnected(pump())
        finally:
            # Whatever ended it (the end, a break, the client leaving): the upstream request
            # is closed and its connection slot freed.
            await chunks.aclose()
            call.prompt_tokens = events.prompt_tokens
            call.completion_tokens = events.completion_tokens

    async def _keep_streamed(self, call: Exchange, grant: ApiKeyGrant,
                             events: ResponseEventStream, request: ChatRequest) -> bytes:
        """Keeps a streamed response; when the store fails, the stream ends `failed` saying
        so (its events are sent already: an HTTP error is too late)."""
        assert events.response is not None
        try:
            await self._keep(grant, events.response, request, events.assistant())
        except Exception as exc:
            fault = store_fault(exc, call.request_id)
            if fault is None:
                log.error("keeping a streamed response failed with %s in request %s",
                          type(exc).__name__, call.request_id)
            call.status = fault.status if fault is not None else 500
            return events.fail("The response was not kept: "
                               + (fault.message if fault is not None else
                                  f"the server had an error (request id {call.request_id})."))
        return b""

    # -- background --------------------------------------------------------------------------

    def _lease(self) -> dict[str, Any]:
        return {"owner": self._boot, "lease_until": time.time() + LEASE_S}

    async def _enqueue(self, call: Exchange, grant: ApiKeyGrant, draft: ResponseDraft,
                       request: ChatRequest, providers: Sequence[Provider]) -> None:
        if len(self._tasks) >= MAX_RUNNING + MAX_WAITING:
            raise ServerBusy("Too many background responses are waiting in this region; "
                             "retry later.", headers=((b"retry-after", b"5"),))
        store, tenant = self._stored(grant, "A background response")
        queued = draft.snapshot("queued")
        record = _record(queued, request.items, request.conversation, self._lease())
        await asyncio.to_thread(store.put_record, tenant, KIND, draft.id, dump_json(record))
        task = asyncio.create_task(self._run(store, tenant, draft, request, call.model,
                                             providers, _Origin(grant, call.request_id)),
                                   name="domicile-background-response")
        task.add_done_callback(mark_retrieved)
        self._tasks[draft.id] = task
        self._running[draft.id] = (store, tenant)
        await call.respond_json(queued)

    async def _update(self, store: ContentStore, tenant: TenantRef, response_id: str,
                      response: dict[str, Any], *, conversation: list[dict[str, Any]] | None
                      = None, running: bool = False, only_if: frozenset[str] = _UNFINISHED
                      ) -> bool:
        """Rewrite a run's record with `response`, unless its status has left `only_if`
        meanwhile (cancelled, or failed by a reader); False then."""
        async with self._writes.holding(response_id):
            raw = await asyncio.to_thread(store.get_record, tenant, KIND, response_id)
            if raw is None:
                return False
            record = json.loads(raw)
            if record["response"]["status"] not in only_if:
                return False
            record["response"] = response
            if conversation is not None:
                record["conversation"] = conversation
            if running:
                record["run"] = self._lease()
            else:
                record.pop("run", None)
            # Only if it is still there: a DELETE by another replica between the read and
            # this write must not be undone (the lock above only covers this process).
            return await asyncio.to_thread(store.replace_record, tenant, KIND, response_id,
                                           dump_json(record))

    async def _run(self, store: ContentStore, tenant: TenantRef, draft: ResponseDraft,
                   request: ChatRequest, model: str, providers: Sequence[Provider],
                   origin: _Origin) -> None:
        try:
            async with self._slots:
                if not await self._update(store, tenant, draft.id,
                                          draft.snapshot("in_progress"), running=True,
                                          only_if=frozenset({"queued"})):
                    return  # cancelled while it waited
                await self._run_once(store, tenant, draft, request, model, providers, origin)
        except asyncio.CancelledError:
            if self._closing:  # the server stops: say so rather than leave it running
                with contextlib.suppress(Exception):
                    await self._update(store, tenant, draft.id,
                                       draft.snapshot("failed", error=_STOPPED))
        except Exception as exc:
            log.error("background response failed with %s", type(exc).__name__)
            with contextlib.suppress(Exception):
                await self._update(store, tenant, draft.id, draft.snapshot(
                    "failed", error="The server had an error while running this response."))
        finally:
            self._tasks.pop(draft.id, None)
            self._running.pop(draft.id, None)

    async def _run_once(self, store: ContentStore, tenant: TenantRef, draft: ResponseDraft,
                        request: ChatRequest, model: str, providers: Sequence[Provider],
                        origin: _Origin) -> None:
        provider: Provider | None = None
        answer: ProviderResponse | None = None
        try:
            provider, answer = await self._ask(model, providers, request)
            if answer.status != 200:
                raise UpstreamError(f"The provider {provider.name} refused the request "
                                    f"(HTTP {answer.status}).")
            response, assistant = self._finished(draft, provider.name, answer)
        except DomicileError as exc:  # no provider, region busy, an upstream refusal
            await self._account(origin, model, provider, answer,
                                answer.status if answer is not None else exc.status)
            await self._update(store, tenant, draft.id,
                               draft.snapshot("failed", error=exc.message))
            return
        await self._account(origin, model, provider, answer, 200)
        await self._update(store, tenant, draft.id, response,
                           conversation=[*request.conversation, assistant])

    async def _account(self, origin: _Origin, model: str, provider: Provider | None,
                       answer: ProviderResponse | None, status: int) -> None:
        """A background run's usage row and its tokens charged to the key's limit, as the
        app does for a request (`GatewayApp._account`)."""
        prompt, completion = ((answer.prompt_tokens, answer.completion_tokens)
                              if answer is not None else (0, 0))
        grant = origin.grant
        if self._limiter is not None and grant.tpm_limit is not None and prompt + completion:
            try:
                await self._limiter.charge(grant, prompt + completion)
            except Exception as exc:  # a shared limiter's store may be down: log, go on
                log.error("rate limiter charge failed (%s) for a background response of "
                          "request %s", type(exc).__name__, origin.request_id)
        if self._usage is not None:
            # A model name not offered here is client text like any other: not kept (G4).
            self._usage.add(grant.project_id, grant.key_id, "/v1/responses",
                            model if self._router.offers(model) else "",
                            provider.name if provider is not None else None, status, prompt,
                            completion, (time.perf_counter() - origin.started) * 1000,
                            origin.request_id)

    async def _renew(self) -> None:
        """Every `LEASE_S / 3` s: this process's unfinished runs are still alive."""
        while True:
            await asyncio.sleep(LEASE_S / 3)
            for response_id, (store, tenant) in list(self._running.items()):
                try:
                    async with self._writes.holding(response_id):
                        raw = await asyncio.to_thread(store.get_record, tenant, KIND,
                                                      response_id)
                        if raw is None:
                            continue
                        record = json.loads(raw)
                        if record["response"]["status"] not in _UNFINISHED:
                            continue
                        record["run"] = self._lease()
                        await asyncio.to_thread(store.replace_record, tenant, KIND,
                                                response_id, dump_json(record))
                except Exception as exc:  # the store may be down for a moment: next round
                    log.warning("renewing a background lease failed (%s)", type(exc).__name__)

    def _abandoned(self, response_id: str, record: dict[str, Any]) -> bool:
        """Is this unfinished run's owner gone (see the module's docstring)?"""
        run = record.get("run") or {}
        if run.get("owner") == self._boot:
            return response_id not in self._tasks
        lease = run.get("lease_until")
        return not isinstance(lease, (int, float)) or lease < time.time()

    async def _settled(self, store: ContentStore, tenant: TenantRef, response_id: str,
                       record: dict[str, Any]) -> dict[str, Any]:
        """The record, with an abandoned run marked `failed` (and kept so)."""
        response = record["response"]
        if response["status"] not in _UNFINISHED or not self._abandoned(response_id, record):
            return record
        failed = {**response, "status": "failed",
                  "error": {"code": "server_error", "message": _ORPHANED}}
        if await self._update(store, tenant, response_id, failed):
            record = {**record, "response": failed}
            record.pop("run", None)
        return record

    # -- stored responses --------------------------------------------------------------------

    async def _load(self, store: ContentStore, tenant: TenantRef, response_id: object,
                    param: str) -> dict[str, Any]:
        raw = None
        if isinstance(response_id, str) and _RESPONSE_ID.fullmatch(response_id):
            raw = await asyncio.to_thread(store.get_record, tenant, KIND, response_id)
        if raw is None:
            raise NotFound(f"Response with id {_quoted(response_id, _RESPONSE_ID)} not found.",
                           param=param)
        record: dict[str, Any] = json.loads(raw)
        if isinstance(response_id, str):
            record = await self._settled(store, tenant, response_id, record)
        return record

    async def retrieve(self, call: Exchange, grant: ApiKeyGrant) -> None:
        response_id = call.params[0]
        store, tenant = self._stored(grant, "Reading a stored response")
        streaming, starting_after = _retrieve_params(call.scope.get("query_string", b""))
        record = await self._load(store, tenant, response_id, "response_id")
        response = record["response"]
        if not streaming:
            await call.respond_json(response)
            return
        if response["status"] not in _REPLAYABLE:
            raise InvalidInput(f"Response '{response_id}' is {response['status']}: only a "
                               "completed, incomplete or failed response can be streamed "
                               "again. Poll it with GET (without `stream`) until it ends.",
                               param="stream")
        # A finished response's events, again (as OpenAI does): after `starting_after`.
        events = replay(response)[starting_after + 1:]
        await call.start_stream()
        await call.stream(b"".join(events))
        await call.end_stream()

    async def cancel(self, call: Exchange, grant: ApiKeyGrant) -> None:
        response_id = call.params[0]
        store, tenant = self._stored(grant, "Cancelling a stored response")
        record = await self._load(store, tenant, response_id, "response_id")
        response = record["response"]
        if not response.get("background"):
            raise InvalidInput("Only background responses can be cancelled.",
                               param="response_id")
        if response["status"] in _UNFINISHED:
            cancelled = {**response, "status": "cancelled"}
            if await self._update(store, tenant, response_id, cancelled):
                response = cancelled
                task = self._tasks.get(response_id)
                if task is not None:
                    task.cancel()
            else:  # it finished meanwhile
                response = (await self._load(store, tenant, response_id,
                                             "response_id"))["response"]
        if response["status"] not in ("cancelled",):
            raise InvalidInput(f"Response '{response_id}' is {response['status']}: only a "
                               "queued or running response can be cancelled.",
                               param="response_id")
        await call.respond_json(response)

    async def input_items(self, call: Exchange, grant: ApiKeyGrant) -> None:
        response_id = call.params[0]
        store, tenant = self._stored(grant, "Listing a stored response's input items")
        limit, after, order = _page_params(call.scope.get("query_string", b""))
        record = await self._load(store, tenant, response_id, "response_id")
        items: list[dict[str, Any]] = list(record.get("input_items") or ())
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise NotFound(f"Input item {_quoted(after, _ITEM_ID)} not found in "
                               f"response '{response_id}'.", param="after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        await call.respond_json({
            "object": "list", "data": page, "has_more": len(items) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        })

    async def delete(self, call: Exchange, grant: ApiKeyGrant) -> None:
        response_id = call.params[0]
        store, tenant = self._stored(grant, "Deleting a stored response")
        task = self._tasks.get(response_id)
        deleted = False
        if _RESPONSE_ID.fullmatch(response_id):
            # After any write of this process in flight: it cannot land after the delete.
            async with self._writes.holding(response_id):
                deleted = await asyncio.to_thread(store.delete_record, tenant, KIND,
                                                  response_id)
        if not deleted:
            raise NotFound(f"Response with id {_quoted(response_id, _RESPONSE_ID)} not found.",
                           param="response_id")
        if task is not None:  # a run whose response is gone has nothing left to write
            task.cancel()
        await call.respond_json({"id": response_id, "object": "response", "deleted": True})


def _quoted(given: object, shape: re.Pattern[str]) -> str:
    """An id as an error may quote it: only one of our own shapes; anything else is client
    text (never echoed: errors land in logs, batch error files and stored records)."""
    if isinstance(given, str) and shape.fullmatch(given):
        return f"'{given}'"
    return "the given id"


@dataclass(frozen=True, slots=True)
class _Origin:
    """Whose background run this is, for its usage: the key, and the creating request."""

    grant: ApiKeyGrant
    request_id: str
    started: float = field(default_factory=time.perf_counter)


class _KeyedLocks:
    """One asyncio lock per response id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def users(self, key: str) -> int:
        """How many hold or wait for `key`'s lock."""
        entry = self._locks.get(key)
        return entry[1][0] if entry is not None else 0

    @contextlib.asynccontextmanager
    async def holding(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


def _retrieve_params(query: bytes) -> tuple[bool, int]:
    """`stream` (`true`/`false`) and `starting_after` (a sequence number) of a GET."""
    # Options the SDK may send that change nothing here (`include[]`) are let through.
    params = query_params(query, ("stream", "starting_after"), ignore_unknown=True)
    stream = params.get("stream", "false").lower()
    if stream not in ("true", "false"):
        raise InvalidInput("`stream` must be true or false.", param="stream")
    return stream == "true", int_param(params, "starting_after", -1, 0, 2**31 - 1)


def _page_params(query: bytes) -> tuple[int, str | None, str]:
    """`limit` (1-100, default 20), `after` and `order` (`asc`/`desc`, default `desc`) of an
    input_items list, as OpenAI takes them."""
    params = query_params(query, ("limit", "after", "order"), ignore_unknown=True)
    limit = int_param(params, "limit", 20, 1, _MAX_ITEMS_PAGE)
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidInput("`order` must be `asc` or `desc`.", param="order")
    return limit, params.get("after") or None, order
