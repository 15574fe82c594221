"""Chat: a member's message in, the assistant's reply streamed out and kept (sealed, in region).

A turn is validated whole before the first byte of an answer: the model (or the GPT's model)
must be offered in this region, images need a model whose providers declare `vision`, an image
request needs one that declares `images`, the member must be within their message rate. Then the
user's message is stored, and the reply is asked of the region's providers through the one
copy of routing and failover the gateway uses (`inference.chat.open_chat_stream`): the workspace
never talks to a provider any other way (G2: only this region's providers; none → 503).

`Turn.deltas()` yields the reply's text as it comes; `Turn.finish(status)` stores what came
(`complete`, or `stopped` when the client left or pressed stop, or `error` when the provider's
stream broke), so a reply is never lost half-way. A custom GPT answers with its instructions
and the passages of its knowledge files most relevant to the message, and cites their files.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from domicile.config import RegionSettings, WorkspaceSettings
from domicile.errors import InvalidInput, NotFound, RateLimited, ReplyInProgress, UpstreamError
from domicile.inference.chat import ChatDeltas, open_chat_stream
from domicile.inference.providers.base import Provider, ProviderUnavailable, UpstreamRejected
from domicile.inference.routing import ModelRouter
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.limits import RedisTokenBuckets, retry_seconds
from domicile.tenancy.secrets import new_id
from domicile.web.asgi import mark_retrieved
from domicile.web.jsonbody import dump_json, loads_strict

from .conversations import Citation, Conversation, Conversations, StoredMessage
from .files import FileStore, WorkspaceFile
from .gpts import Gpt, Gpts
from .knowledge import Knowledge, Passage
from .rendering import render_markdown

__all__ = ["ChatRequest", "ChatService", "MessageLimiter", "Turn", "UsageSink",
           "message_limiter_for", "title_from"]

# What a turn's usage metadata is kept as (the gateway's `UsageRecorder.add`): the workspace
# as the project, the member as the key, the route's template. Never content.
UsageSink = Callable[[str, str, str, str, "str | None", int, int, int, float, str], None]
MESSAGES_ROUTE = "/workspace/api/conversations/{conversation_id}/messages"

IMAGE_COMMAND = "/image "
MAX_ATTACHMENTS = 10
# Text of attached documents given to the model with a message, per file (characters).
ATTACHMENT_TEXT_CHARS = 20_000
TITLE_CHARS = 60
# Images given to the model with one turn: the message's own first, then earlier ones.
IMAGE_BYTES_PER_TURN = 20 * 1024 * 1024
IMAGES_PER_TURN = 16


@dataclass(frozen=True, slots=True)
class ChatRequest:
    content: str
    model: str | None = None
    gpt_id: str | None = None
    file_ids: tuple[str, ...] = ()
    # The message the new one answers; None: the conversation's current leaf. Editing a
    # message is sending its replacement with the edited message's parent: a new branch.
    parent_id: str | None = None
    edit: bool = False
    image: bool = False  # ask for a picture (also: content starting with "/image ")


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a reply is asked with (`ChatService._plan`)."""

    gpt: Gpt | None
    model: str
    providers: Sequence[Provider]
    history: Sequence[StoredMessage]  # the branch before the message answered
    attachments: Sequence[WorkspaceFile]  # the answered message's own files
    earlier: dict[str, list[WorkspaceFile]]  # each earlier user message's files still there
    images: set[str]  # the ids of the images the model gets (`images_to_send`)


class MessageLimiter:
    """Messages per member per minute: a fixed one-minute window in this process, or, with
    `shared` (the region's Redis: `message_limiter_for`), a token bucket every replica
    shares, this process's window deciding while Redis is unavailable (`tenancy.limits`)."""

    def __init__(self, per_minute: int, clock: Any = time.monotonic, *,
                 shared: RedisTokenBuckets | None = None) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._shared = shared
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}

    async def take(self, member: MemberGrant) -> None:
        if self._shared is not None:
            decision = await self._shared.take(
                f"member:{member.workspace_id}:{member.user_id}", requests=self._per_minute,
                tokens=None)
            if decision is not None:
                if not decision.admitted:
                    self._refuse(retry_seconds(decision.retry_after_s))
                return
        now = self._clock()
        key = (member.workspace_id, member.user_id)
        start, used = self._windows.get(key, (now, 0))
        if now - start >= 60:
            start, used = now, 0
        if used >= self._per_minute:
            self._refuse(max(1, int(60 - (now - start)) + 1))
        if len(self._windows) > 100_000:
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < 60}
        self._windows[key] = (start, used + 1)

    def _refuse(self, retry: int) -> NoReturn:
        raise RateLimited(
            f"You have sent {self._per_minute} messages in the last minute, the most a "
            f"member may send. Please try again in {retry} s.",
            headers=((b"retry-after", b"%d" % retry),))


def message_limiter_for(region: RegionSettings, settings: WorkspaceSettings) -> MessageLimiter:
    """The region's message limiter: shared in Redis when it has a `redis_url`."""
    shared = None if region.redis_url is None else RedisTokenBuckets(
        region.redis_url, region.name, what="workspace message limits")
    return MessageLimiter(settings.messages_per_minute, shared=shared)


def title_from(text: str) -> str:
    """A conversation's title from its first message: its first line, at most 60 characters,
    cut at a word."""
    line = " ".join(text.strip().split("\n", 1)[0].split())
    if len(line) <= TITLE_CHARS:
        return line or "New chat"
    cut = line[:TITLE_CHARS].rsplit(" ", 1)[0] or line[:TITLE_CHARS]
    return cut + "…"


@dataclass(slots=True)
class Turn:
    """One reply in the making. `deltas()` once, then `finish()` (always, whatever happened)."""

    service: ChatService
    member: MemberGrant
    conversation_id: str
    user_message: StoredMessage | None  # None until the reply has opened
    model: str
    gpt_id: str | None
    citations: tuple[Citation, ...]
    provider: str = ""
    text: list[str] = field(default_factory=list)
    file_ids: tuple[str, ...] = ()
    error: UpstreamError | None = None
    _chunks: Any = None  # the provider's open stream
    _first: bytes = b""
    _reader: ChatDeltas = field(default_factory=ChatDeltas)
    _finished: StoredMessage | None = None
    _user_stored: asyncio.Future[StoredMessage] | None = None
    _started: float = field(default_factory=time.perf_counter)

    async def deltas(self) -> AsyncIterator[str]:
        if self._chunks is None:  # an image turn: nothing to stream
            return
        reader = self._reader
        try:
            if self._first and (piece := reader.feed(self._first)):
                self.text.append(piece)
                yield piece
            async for chunk in self._chunks:
                if piece := reader.feed(chunk):
                    self.text.append(piece)
                    yield piece
        except ProviderUnavailable as broken:
            self.error = UpstreamError(
                f"The reply from provider {broken.provider} broke off ({broken.reason}); what "
                "came is kept, marked as incomplete.")
        finally:
            await self.close()
        if reader.error is not None and self.error is None:
            self.error = UpstreamError("The provider ended the reply with an error; what came "
                                       "is kept, marked as incomplete.")

    async def close(self) -> None:
        if self._chunks is not None:
            chunks, self._chunks = self._chunks, None
            await chunks.aclose()

    async def finish(self, status: str | None = None) -> StoredMessage:
        """Store the reply: `complete`, `stopped` (the client left) or `error`."""
        if self._finished is not None:
            return self._finished
        try:
            await self.close()
            if self._user_stored is not None:
                await self._user_stored  # the reply is stored under a stored message
            if status is None:
                status = "error" if self.error is not None else "complete"
            self._finished = await asyncio.to_thread(self.service._store_reply, self, status)
            self.service._account(self, status)
        finally:
            self.service._replying.discard(self.conversation_id)
        return self._finished


class ChatService:
    def __init__(self, region: str, router: ModelRouter, conversations: Conversations,
                 files: FileStore, gpts: Gpts, knowledge: Knowledge,
                 settings: WorkspaceSettings) -> None:
        self.region = region
        self.router = router
        self.conversations = conversations
        self.files = files
        self.gpts = gpts
        self.knowledge = knowledge
        self.settings = settings
        self.limiter = MessageLimiter(settings.messages_per_minute)
        # Where a turn's usage metadata goes (the region's usage recorder, set by the server).
        self.usage: UsageSink | None = None
        # Conversations with a reply in the making (in this process): one turn at a time, so
        # two messages sent at once cannot chain one prompt under the other.
        self._replying: set[str] = set()

    # -- what the region offers -------------------------------------------------------------

    def chat_models(self) -> list[dict[str, Any]]:
        """The models a member can chat with here, with what they can do."""
        offered: dict[str, set[str]] = {}
        for provider in self.router.providers:
            for model in provider.models:
                offered.setdefault(model, set()).update(provider.capabilities)
        return [{"id": model, "object": "model", "capabilities": sorted(caps)}
                for model, caps in offered.items() if "chat" in caps or "images" in caps]

    def default_model(self) -> str:
        for model in self.chat_models():
            if "chat" in model["capabilities"]:
                return str(model["id"])
        raise InvalidInput(f"No chat model is offered in region {self.region}.", param="model")

    def _providers(self, model: str, vision: bool) -> Sequence[Provider]:
        """The model's chat providers here; with `vision`, those that read images (400 when
        none does: the capability is named, the message is not sent anywhere)."""
        providers = self.router.route(model, "chat")
        if not vision:
            return providers
        if not any("vision" in p.capabilities for p in providers):
            raise InvalidInput(
                f"The model `{model}` cannot read images in region {self.region}: none of its "
                "providers declares the `vision` capability. Choose a model that does, or send "
                "the message without images.", param="file_ids")
        return [p for p in providers if "vision" in p.capabilities]

    # -- a turn ------------------------------------------------------------------------------

    async def send(self, member: MemberGrant, conversation_id: str,
                   request: ChatRequest) -> Turn:
        """Validate, store the member's message, open the reply. Raises before anything is
        stored when the turn cannot be served."""
        self._refuse_if_replying(conversation_id)
        content = request.content
        wants_image = request.image or content.startswith(IMAGE_COMMAND)
        if wants_image and content.startswith(IMAGE_COMMAND):
            content = content[len(IMAGE_COMMAND):].strip()
        if not content.strip():
            raise InvalidInput("The message is empty.", param="content")
        if len(request.file_ids) > MAX_ATTACHMENTS:
            raise InvalidInput(f"Attach at most {MAX_ATTACHMENTS} files to a message.",
                               param="file_ids")
        conversation = await asyncio.to_thread(self.conversations.get, member, conversation_id)
        gpt_id = request.gpt_id or conversation.summary.gpt_id
        gpt = await asyncio.to_thread(self.gpts.get, member, gpt_id) if gpt_id else None
        model = request.model or (gpt.model if gpt else None) or conversation.summary.model \
            or self.default_model()
        attachments = [await asyncio.to_thread(self.files.get, member, file_id)
                       for file_id in dict.fromkeys(request.file_ids)]
        parent_id = request.parent_id if request.parent_id is not None or request.edit \
            else conversation.current_message_id
        history = conversation.branch(parent_id) if parent_id else []
        if parent_id and (not history or history[-1].id != parent_id):
            raise InvalidInput("`parent_id` is not a message of this conversation.",
                               param="parent_id")
        if wants_image:
            model = self._image_model(request.model)
            providers = self.router.route(model, "images")
            with self._turn_of(conversation_id):
                await self.limiter.take(member)
                turn = Turn(self, member, conversation_id, None, model, gpt_id, ())
                await self._generate_image(turn, providers, content)
                self._keep_user_message(turn, conversation, content, parent_id, attachments)
                return turn
        plan = await self._plan(member, gpt, model, history, attachments)
        with self._turn_of(conversation_id):
            await self.limiter.take(member)
            turn = await self._reply(member, conversation_id, plan, content, None)
            self._keep_user_message(turn, conversation, content, parent_id, attachments)
            return turn

    def _keep_user_message(self, turn: Turn, conversation: Conversation, content: str,
                           parent_id: str | None,
                           attachments: Sequence[WorkspaceFile]) -> None:
        """Once a provider has answered, the member's message is stored (with the title a
        first message gives) while the reply streams: its first words do not wait for the
        database, and a turn no provider can serve (503) leaves nothing behind.
        `Turn.finish` waits for it before the reply is stored."""
        shown = StoredMessage(new_id("msg"), turn.conversation_id, parent_id, "user",
                              "complete", content, datetime.now(UTC), turn.model,
                              turn.gpt_id, tuple(f.id for f in attachments), ())
        turn.user_message = shown
        turn._user_stored = asyncio.ensure_future(asyncio.to_thread(
            self.conversations.add_message, turn.member, turn.conversation_id, role="user",
            content=content, parent_id=parent_id, model=turn.model, gpt_id=turn.gpt_id,
            file_ids=shown.file_ids, message_id=shown.id, created_at=shown.created_at,
            title=None if conversation.messages else title_from(content)))
        turn._user_stored.add_done_callback(mark_retrieved)

    async def regenerate(self, member: MemberGrant, conversation_id: str,
                         message_id: str | None = None, model: str | None = None) -> Turn:
        """A new reply to a user message (default: the one the current reply answers), beside
        the earlier reply: both branches are kept."""
        self._refuse_if_replying(conversation_id)
        conversation = await asyncio.to_thread(self.conversations.get, member, conversation_id)
        path = conversation.branch(message_id) if message_id else conversation.branch()
        users = [m for m in path if m.role == "user"]
        if not users:
            raise InvalidInput("There is no message to answer again.", param="message_id")
        target = users[-1]
        gpt = await asyncio.to_thread(self.gpts.get, member, target.gpt_id) \
            if target.gpt_id else None
        attachments = [await asyncio.to_thread(self.files.get, member, file_id)
                       for file_id in target.file_ids]
        plan = await self._plan(member, gpt, model or target.model or self.default_model(),
                                path[:path.index(target)], attachments)
        with self._turn_of(conversation_id):
            await self.limiter.take(member)
            return await self._reply(member, conversation_id, plan, target.content, target)

    async def _plan(self, member: MemberGrant, gpt: Gpt | None, model: str,
                    history: Sequence[StoredMessage],
                    attachments: Sequence[WorkspaceFile]) -> _Plan:
        """What a reply is asked with, decided (and refused: 400, 404) before the
        conversation is claimed or a message counted: the earlier messages' files (looked up
        once), the images the model gets, the model's providers (vision when an image goes)."""
        earlier = {message.id: await self._files_still_there(member, message.file_ids)
                   for message in history if message.role == "user"}
        images = images_to_send(attachments, list(earlier.values()))
        return _Plan(gpt, model, self._providers(model, vision=bool(images)), history,
                     attachments, earlier, images)

    async def _reply(self, member: MemberGrant, conversation_id: str, plan: _Plan,
                     content: str, answering: StoredMessage | None) -> Turn:
        """Open the reply to `content` on the first of the plan's providers that answers."""
        turn = Turn(self, member, conversation_id, answering, plan.model,
                    plan.gpt.id if plan.gpt else None, ())
        passages = await self._passages(member, plan.gpt, content)
        turn.citations = tuple(dict.fromkeys(Citation(p.file_id, p.file_name)
                                             for p in passages))
        messages = await self._messages(member, plan, passages, content)
        await self._open(turn, plan.providers, messages)
        return turn

    def _refuse_if_replying(self, conversation_id: str) -> None:
        if conversation_id in self._replying:
            raise ReplyInProgress("A reply in this conversation is still being written. Wait "
                                  "for it (or stop it), then send again.",
                                  param="conversation_id")

    @contextlib.contextmanager
    def _turn_of(self, conversation_id: str) -> Iterator[None]:
        """Claim the conversation for a turn: 409 while another reply is in the making. A turn
        that fails before it opens gives it back; one that opens keeps it until
        `Turn.finish`."""
        self._refuse_if_replying(conversation_id)
        self._replying.add(conversation_id)
        try:
            yield
        except BaseException:
            self._replying.discard(conversation_id)
            raise

    async def _open(self, turn: Turn, providers: Sequence[Provider],
                    messages: list[dict[str, Any]]) -> None:
        parsed: dict[str, Any] = {"model": turn.model, "messages": messages, "stream": True,
                                  "stream_options": {"include_usage": True}}
        # A body with pictures is megabytes of base64: made off the event loop.
        body = await asyncio.to_thread(dump_json, parsed)
        try:
            opened = await open_chat_stream(self.router, turn.model, providers, body, parsed)
        except UpstreamRejected as rejected:
            raise UpstreamError(
                f"The provider {rejected.provider} refused the request (status "
                f"{rejected.response.status}).") from None
        turn.provider = opened.provider.name
        turn._chunks, turn._first = opened.chunks, opened.first

    # -- images ------------------------------------------------------------------------------

    def _image_model(self, asked: str | None) -> str:
        for provider in self.router.providers:
            if "images" in provider.capabilities and (asked is None or asked in provider.models):
                return asked or provider.models[0]
        raise InvalidInput(
            f"No model in region {self.region} can make images"
            + (f" as `{asked}`" if asked else "") + ": none of its providers declares the "
            "`images` capability.", param="model")

    async def _generate_image(self, turn: Turn, providers: Sequence[Provider],
                              prompt: str) -> None:
        parsed = {"model": turn.model, "prompt": prompt, "n": 1, "response_format": "b64_json"}
        body = dump_json(parsed)
        provider, answer = await self.router.first_available(
            turn.model, providers, lambda p: p.images(body, parsed))
        turn.provider = provider.name
        png = _first_image(answer.status, answer.body, provider.name)
        stored = await asyncio.to_thread(self.files.add, turn.member, "image.png", png,
                                         origin="generated")
        turn.file_ids = (stored.id,)

    async def _files_still_there(self, member: MemberGrant,
                                 file_ids: Sequence[str]) -> list[WorkspaceFile]:
        """The files of an earlier message that still exist (one deleted since is gone for the
        model too)."""
        found = []
        for file_id in file_ids:
            with contextlib.suppress(NotFound):
                found.append(await asyncio.to_thread(self.files.get, member, file_id))
        return found

    # -- the request to the model -------------------------------------------------------------

    async def _passages(self, member: MemberGrant, gpt: Gpt | None,
                        content: str) -> list[Passage]:
        if gpt is None or not gpt.file_ids:
            return []
        return await self.knowledge.search(member.tenant, gpt.id, content,
                                           self.settings.knowledge_passages)

    async def _messages(self, member: MemberGrant, plan: _Plan,
                        passages: Sequence[Passage], content: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        system = []
        if plan.gpt is not None:
            system.append(plan.gpt.instructions)
        if passages:
            system.append("Passages from the knowledge files (cite the file name when you use "
                          "one):\n\n" + "\n\n".join(
                              f"[{p.file_name}]\n{p.text}" for p in passages))
        if system:
            messages.append({"role": "system", "content": "\n\n".join(system)})
        for message in plan.history:
            if message.role == "assistant":
                if message.content:
                    messages.append({"role": "assistant", "content": message.content})
                continue
            messages.append(await self._user_message(member, message.content,
                                                     plan.earlier[message.id], plan.images))
        messages.append(await self._user_message(member, content, plan.attachments,
                                                 plan.images))
        return messages

    async def _user_message(self, member: MemberGrant, content: str,
                            files: Sequence[WorkspaceFile],
                            images_sent: Collection[str]) -> dict[str, Any]:
        if not files:
            return {"role": "user", "content": content}
        text = content
        parts: list[dict[str, Any]] = []
        for file in files:
            if file.is_image and file.id in images_sent:
                url = await asyncio.to_thread(self._data_url, member, file)
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif file.is_image:
                text += f"\n\n[An earlier image, {file.name}, is not sent again.]"
            else:
                extracted = await asyncio.to_thread(self.files.text, member.tenant, file.id)
                if extracted:
                    text += (f"\n\n[Attached file: {file.name}]\n"
                             f"{extracted[:ATTACHMENT_TEXT_CHARS]}")
        if not parts:
            return {"role": "user", "content": text}
        return {"role": "user", "content": [{"type": "text", "text": text}, *parts]}

    def _data_url(self, member: MemberGrant, file: WorkspaceFile) -> str:
        data = self.files.read(member, file.id)
        return f"data:{file.media_type};base64,{base64.b64encode(data).decode()}"

    # -- keeping the reply ---------------------------------------------------------------------

    def _account(self, turn: Turn, status: str) -> None:
        if self.usage is None:
            return
        reader = turn._reader
        self.usage(turn.member.workspace_id, turn.member.user_id, MESSAGES_ROUTE, turn.model,
                   turn.provider or None, 502 if status == "error" else 200,
                   reader.prompt_tokens, reader.completion_tokens,
                   (time.perf_counter() - turn._started) * 1000, "")

    def _store_reply(self, turn: Turn, status: str) -> StoredMessage:
        assert turn.user_message is not None, "a turn is finished only once it has opened"
        content = "".join(turn.text)
        return self.conversations.add_message(
            turn.member, turn.conversation_id, role="assistant", content=content,
            parent_id=turn.user_message.id, status=status, model=turn.model,
            gpt_id=turn.gpt_id, file_ids=turn.file_ids, citations=turn.citations,
            html=render_markdown(content))  # once, here, not on every read


def images_to_send(attachments: Sequence[WorkspaceFile],
                    earlier: Sequence[Sequence[WorkspaceFile]]) -> set[str]:
    """Which images go to the model with a turn: all of the message's own (400 past the
    budget), then earlier ones, newest first, while the budget lasts; a conversation with many
    pictures does not grow every request without end."""
    current = [f for f in attachments if f.is_image]
    budget = IMAGE_BYTES_PER_TURN - sum(f.size for f in current)
    if budget < 0:
        raise InvalidInput(f"The images of one message may hold at most "
                           f"{IMAGE_BYTES_PER_TURN // (1024 * 1024)} MiB together.",
                           param="file_ids")
    chosen = {f.id for f in current}
    for files in reversed(earlier):
        for file in files:
            if file.is_image and file.size <= budget and len(chosen) < IMAGES_PER_TURN:
                chosen.add(file.id)
                budget -= file.size
    return chosen


def _first_image(status: int, body: bytes, provider: str) -> bytes:
    """The PNG of an images answer, or a 502 that quotes nothing of it."""
    if status >= 400:
        raise UpstreamError(f"The provider {provider} could not make the image (status "
                            f"{status}).")
    try:
        parsed = loads_strict(body)
        encoded = parsed["data"][0]["b64_json"]
        image = base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error, json.JSONDecodeError):
        raise UpstreamError(f"The provider {provider} answered with no image.") from None
    if not image.startswith(b"\x89PNG\r\n\x1a\n"):
        raise UpstreamError(f"The provider {provider} answered with an image that is not a "
                            "PNG.")
    return image
