"""The chat service: a member's message in, the reply streamed out and kept, sealed, in region.

The region's router is a real `ModelRouter` over two kinds of provider: `dev-echo`
(`DevEchoProvider`, a deterministic stand-in, not a model: it echoes the last user message and
draws images and embeddings from hashes) and `openai-compatible` providers talking HTTP to a
real loopback `FakeUpstream` (tests/gateway/upstream.py), which can be told to fail or to
break its stream. SQLite, except one PostgreSQL smoke test: the storage underneath is the
same code on both (tests/workspace/test_conversations.py and test_files.py run both).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from domicile.config import ProviderSettings, WorkspaceSettings
from domicile.errors import InvalidInput, NoInRegionProvider, RateLimited, ReplyInProgress
from domicile.inference.embeddings import Embedder
from domicile.inference.providers import DevEchoProvider, OpenAICompatibleProvider, Provider
from domicile.inference.providers.dev_echo import png
from domicile.inference.routing import ModelRouter
from domicile.site import Site
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.workspace import chat as chat_module
from domicile.workspace.chat import (
    IMAGES_PER_TURN,
    ChatRequest,
    ChatService,
    MessageLimiter,
    Turn,
    images_to_send,
)
from domicile.workspace.conversations import Citation, Conversation, Conversations, StoredMessage
from domicile.workspace.files import FileStore, WorkspaceFile
from domicile.workspace.gpts import Gpts
from domicile.workspace.knowledge import Knowledge
from tests.gateway.upstream import FakeUpstream
from tests.workspace.conftest import MemberFactory
from tests.workspace.test_files import image_bytes

DEV = "dev-echo"  # the deterministic stand-in's model (chat, vision, images, embeddings)
UPSTREAM_MODEL = "up-model"  # served by the loopback upstream only; chat, no vision
FAILOVER_MODEL = "fo-model"  # served by the upstream, then by a provider nobody listens for
UPSTREAM_NAME = "eu-up"


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(UPSTREAM_NAME)
    await fake.start()
    yield fake
    if fake.behaviour.gate is not None:  # a stream a test left waiting: let it end
        fake.behaviour.gate.set()
    await fake.stop()


@pytest.fixture
async def router(upstream: FakeUpstream) -> AsyncIterator[ModelRouter]:
    def compat(name: str, models: tuple[str, ...], base_url: str) -> Provider:
        return OpenAICompatibleProvider(ProviderSettings(
            name=name, kind="openai-compatible", models=models, base_url=base_url,
            timeout_s=10), "eu")

    providers = [
        DevEchoProvider(ProviderSettings(name="eu-dev", kind="dev-echo", models=(DEV,)), "eu"),
        compat(UPSTREAM_NAME, (UPSTREAM_MODEL, FAILOVER_MODEL), upstream.base_url),
        compat("eu-dead", (FAILOVER_MODEL,), f"http://127.0.0.1:{_closed_port()}/v1"),
    ]
    for provider in providers:
        await provider.start()
    yield ModelRouter("eu", providers)
    for provider in providers:
        await provider.aclose()


@dataclass
class Chat:
    service: ChatService
    conversations: Conversations
    files: FileStore
    gpts: Gpts
    knowledge: Knowledge
    upstream: FakeUpstream

    def new_conversation(self, member: MemberGrant, **fields: str) -> str:
        return self.conversations.create(member, **fields).id

    def get(self, member: MemberGrant, conversation_id: str) -> Conversation:
        return self.conversations.get(member, conversation_id)


ChatFactory = Callable[..., Chat]


@pytest.fixture
def make_chat(eu_store: RegionalStore, router: ModelRouter,
              upstream: FakeUpstream) -> ChatFactory:
    """`make_chat(settings=WorkspaceSettings())`: the chat service of region eu and its parts."""

    def make(settings: WorkspaceSettings | None = None) -> Chat:
        settings = settings or WorkspaceSettings()
        conversations = Conversations(eu_store)
        files = FileStore(eu_store, settings)
        gpts = Gpts(eu_store)
        # Embeddings by dev-echo: deterministic, not semantic (the only embedder here); the
        # GPT below has one passage, so it is found whatever the vectors say.
        knowledge = Knowledge(eu_store, files, Embedder(router))
        service = ChatService("eu", router, conversations, files, gpts, knowledge, settings)
        return Chat(service, conversations, files, gpts, knowledge, upstream)

    return make


@pytest.fixture
def chat(make_chat: ChatFactory) -> Chat:
    return make_chat()


async def answered(turn: Turn) -> StoredMessage:
    """Read the whole reply, then keep it."""
    async for _piece in turn.deltas():
        pass
    return await turn.finish()


async def say(chat: Chat, member: MemberGrant, conversation_id: str, content: str,
              **fields: Any) -> tuple[StoredMessage, StoredMessage]:
    """(the member's message, the reply kept) of one whole turn."""
    turn = await chat.service.send(member, conversation_id, ChatRequest(content, **fields))
    reply = await answered(turn)
    assert turn.user_message is not None
    return turn.user_message, reply


async def happens(event: threading.Event, seconds: float = 10.0) -> bool:
    """Whether `event` is set within `seconds`, waiting without blocking the loop (the
    upstream runs on it)."""
    for _ in range(int(seconds / 0.01)):
        if event.is_set():
            return True
        await asyncio.sleep(0.01)
    return event.is_set()


def contents(messages: list[StoredMessage]) -> list[tuple[str, str, str]]:
    return [(m.role, m.status, m.content) for m in messages]


# -- a reply, streamed and kept -----------------------------------------------------------------


@pytest.mark.parametrize(("model", "provider", "reply"), [
    (DEV, "eu-dev", "tell me about the northern lights"),
    (UPSTREAM_MODEL, UPSTREAM_NAME, "eu-up says: tell me about the northern lights"),
])
async def test_a_reply_is_streamed_then_kept_as_complete(
        chat: Chat, member: MemberGrant, model: str, provider: str, reply: str) -> None:
    cid = chat.new_conversation(member)
    turn = await chat.service.send(member, cid, ChatRequest(
        "tell me about the northern lights", model=model))
    assert "".join([piece async for piece in turn.deltas()]) == reply
    kept = await turn.finish()
    assert turn.provider == provider
    assert (kept.role, kept.status, kept.content, kept.model) == (
        "assistant", "complete", reply, model)
    assert turn.user_message is not None and kept.parent_id == turn.user_message.id
    stored = chat.get(member, cid)  # read back from the store
    assert contents(stored.branch()) == [
        ("user", "complete", "tell me about the northern lights"),
        ("assistant", "complete", reply)]
    assert stored.current_message_id == kept.id


async def test_the_reply_is_passed_on_as_it_comes(chat: Chat, member: MemberGrant) -> None:
    gate = threading.Event()
    chat.upstream.behaviour.gate = gate  # the upstream waits after its first chunk
    cid = chat.new_conversation(member)
    turn = await chat.service.send(member, cid, ChatRequest("one two three",
                                                            model=UPSTREAM_MODEL))
    deltas = turn.deltas()
    assert await anext(deltas) == "eu-up"  # while the rest is still to be written
    assert chat.upstream.chunks_sent == 1
    gate.set()
    assert "".join([piece async for piece in deltas]) == " says: one two three"
    assert (await turn.finish()).content == "eu-up says: one two three"


async def test_the_history_of_the_branch_goes_to_the_model(chat: Chat,
                                                           member: MemberGrant) -> None:
    cid = chat.new_conversation(member)
    await say(chat, member, cid, "my name is Ada", model=UPSTREAM_MODEL)
    await say(chat, member, cid, "what is my name?", model=UPSTREAM_MODEL)
    sent = json.loads(chat.upstream.received[-1].body)["messages"]
    assert sent == [{"role": "user", "content": "my name is Ada"},
                    {"role": "assistant", "content": "eu-up says: my name is Ada"},
                    {"role": "user", "content": "what is my name?"}]


@pytest.mark.parametrize("then", ["reset", "close"])
async def test_a_broken_stream_keeps_what_came_marked_as_an_error(
        chat: Chat, member: MemberGrant, then: str) -> None:
    chat.upstream.behaviour.then = then  # the first chunk, then the connection goes
    cid = chat.new_conversation(member)
    turn = await chat.service.send(member, cid, ChatRequest("a long answer please",
                                                            model=UPSTREAM_MODEL))
    pieces = [piece async for piece in turn.deltas()]
    assert pieces == ["eu-up"]
    assert turn.error is not None and "broke off" in turn.error.message
    kept = await turn.finish()
    assert (kept.status, kept.content) == ("error", "eu-up")
    assert contents(chat.get(member, cid).branch()) == [
        ("user", "complete", "a long answer please"), ("assistant", "error", "eu-up")]


async def test_a_stopped_reply_is_kept_as_stopped_and_the_upstream_let_go(
        chat: Chat, member: MemberGrant) -> None:
    gate = threading.Event()
    chat.upstream.behaviour.gate = gate  # the upstream waits after its first chunk
    cid = chat.new_conversation(member)
    turn = await chat.service.send(member, cid, ChatRequest("count to a million",
                                                            model=UPSTREAM_MODEL))
    deltas = turn.deltas()
    assert await anext(deltas) == "eu-up"
    kept = await turn.finish("stopped")  # the member pressed stop
    assert (kept.status, kept.content) == ("stopped", "eu-up")
    gate.set()
    # The upstream finds its client gone when it writes on: the request was cancelled.
    assert await happens(chat.upstream.stream_cancelled)
    assert await turn.finish() == kept  # kept once
    assert contents(chat.get(member, cid).branch()) == [
        ("user", "complete", "count to a million"), ("assistant", "stopped", "eu-up")]


# -- images -------------------------------------------------------------------------------------


async def test_an_image_for_a_model_without_vision_is_refused_and_nothing_kept(
        chat: Chat, member: MemberGrant) -> None:
    picture = chat.files.add(member, "red.png", image_bytes())
    cid = chat.new_conversation(member)
    request = ChatRequest("what colour is this?", model=UPSTREAM_MODEL, file_ids=(picture.id,))
    with pytest.raises(InvalidInput) as refused:
        await chat.service.send(member, cid, request)
    assert refused.value.status == 400 and refused.value.param == "file_ids"
    assert "`vision`" in refused.value.message and UPSTREAM_MODEL in refused.value.message
    assert chat.upstream.received == []  # sent nowhere
    stored = chat.get(member, cid)
    assert stored.messages == [] and stored.summary.title == ""
    # Control: a model whose provider declares vision gets the same message, image and all.
    user, reply = await say(chat, member, cid, "what colour is this?", model=DEV,
                            file_ids=(picture.id,))
    assert user.file_ids == (picture.id,) and reply.status == "complete"


async def test_an_image_prompt_keeps_a_generated_png_the_reply_points_to(
        chat: Chat, member: MemberGrant) -> None:
    cid = chat.new_conversation(member)
    turn = await chat.service.send(member, cid, ChatRequest("/image a red fox at dawn"))
    assert [piece async for piece in turn.deltas()] == []  # a picture, no text
    kept = await turn.finish()
    assert turn.user_message is not None and turn.user_message.content == "a red fox at dawn"
    assert (kept.status, kept.model, kept.content) == ("complete", DEV, "")
    (file_id,) = kept.file_ids
    generated = chat.files.get(member, file_id)
    assert (generated.origin, generated.media_type) == ("generated", "image/png")
    assert chat.files.read(member, file_id) == png("a red fox at dawn")  # dev-echo's picture
    assert chat.get(member, cid).branch()[-1].file_ids == (file_id,)  # as stored


# -- branches -----------------------------------------------------------------------------------


async def test_editing_a_message_keeps_both_branches(chat: Chat, member: MemberGrant) -> None:
    cid = chat.new_conversation(member)
    first, first_reply = await say(chat, member, cid, "first question")
    second, second_reply = await say(chat, member, cid, "second question")
    # The edit: a new message under the edited one's parent.
    edited, edited_reply = await say(chat, member, cid, "second question, edited",
                                     parent_id=second.parent_id, edit=True)
    assert edited.parent_id == second.parent_id == first_reply.id
    stored = chat.get(member, cid)
    assert len(stored.messages) == 6
    assert [m.content for m in stored.branch()] == [
        "first question", "first question", "second question, edited",
        "second question, edited"]
    assert [m.id for m in stored.branch(second_reply.id)] == [
        first.id, first_reply.id, second.id, second_reply.id]
    assert stored.current_message_id == edited_reply.id


async def test_editing_the_first_message_starts_a_second_root(chat: Chat,
                                                               member: MemberGrant) -> None:
    cid = chat.new_conversation(member)
    first, _ = await say(chat, member, cid, "hello wrold")
    edited, _ = await say(chat, member, cid, "hello world", parent_id=None, edit=True)
    assert first.parent_id is None and edited.parent_id is None
    stored = chat.get(member, cid)
    assert [m.content for m in stored.branch()] == ["hello world", "hello world"]
    assert [m.content for m in stored.branch(first.id)] == ["hello wrold"]
    assert stored.summary.title == "hello wrold"  # the title is the first message's


async def test_regenerating_keeps_both_replies(chat: Chat, member: MemberGrant) -> None:
    cid = chat.new_conversation(member)
    asked, earlier = await say(chat, member, cid, "name a colour")
    again = await answered(await chat.service.regenerate(member, cid, model=UPSTREAM_MODEL))
    assert again.parent_id == earlier.parent_id == asked.id and again.id != earlier.id
    assert (earlier.content, again.content) == ("name a colour", "eu-up says: name a colour")
    stored = chat.get(member, cid)
    assert [m.id for m in stored.messages] == [asked.id, earlier.id, again.id]
    assert stored.branch()[-1].id == again.id
    assert stored.branch(earlier.id)[-1].content == "name a colour"  # still there


# -- titles and limits --------------------------------------------------------------------------


async def test_the_title_comes_from_the_first_message(chat: Chat, member: MemberGrant) -> None:
    cid = chat.new_conversation(member)
    await say(chat, member, cid, "Plan the spring offsite for the team\nwith a budget of 5k")
    assert chat.get(member, cid).summary.title == "Plan the spring offsite for the team"
    await say(chat, member, cid, "and book a venue")
    assert chat.get(member, cid).summary.title == "Plan the spring offsite for the team"
    long_one = chat.new_conversation(member)
    await say(chat, member, long_one, "word " * 30)
    title = chat.get(member, long_one).summary.title
    assert title.endswith("…") and len(title) <= 61 and title.startswith("word word")


async def test_a_member_past_their_message_limit_gets_429_with_retry_after(
        make_chat: ChatFactory, make_member: MemberFactory) -> None:
    chat = make_chat(WorkspaceSettings(messages_per_minute=2))
    now = [1000.0]  # a clock that moves only when the test moves it
    chat.service.limiter = MessageLimiter(2, clock=lambda: now[0])
    member = make_member()
    cid = chat.new_conversation(member)
    await say(chat, member, cid, "one")
    await say(chat, member, cid, "two")
    with pytest.raises(RateLimited) as limited:
        await chat.service.send(member, cid, ChatRequest("three"))
    assert limited.value.status == 429
    headers = dict(limited.value.headers)
    assert int(headers[b"retry-after"]) == 61
    assert [m.content for m in chat.get(member, cid).messages] == ["one", "one", "two", "two"]
    with pytest.raises(RateLimited):  # regenerating is a message too
        await chat.service.regenerate(member, cid)
    # The limit is per member: a colleague in the same workspace still may.
    colleague = make_member(member.workspace_id)
    _, reply = await say(chat, colleague, chat.new_conversation(colleague), "hi")
    assert reply.content == "hi"
    now[0] += 60  # a minute later, the member may again
    await say(chat, member, cid, "four")


async def test_when_every_provider_is_down_503_and_nothing_is_kept(
        chat: Chat, member: MemberGrant) -> None:
    chat.upstream.behaviour.mode = "fail"  # 500; the other provider's port is closed
    cid = chat.new_conversation(member)
    with pytest.raises(NoInRegionProvider) as down:
        await chat.service.send(member, cid, ChatRequest("anyone there?", model=FAILOVER_MODEL))
    assert (down.value.status, down.value.code) == (503, "no_in_region_provider")
    assert UPSTREAM_NAME in down.value.message and "eu-dead" in down.value.message
    assert len(chat.upstream.received) == 1  # it was asked
    stored = chat.get(member, cid)
    assert stored.messages == [] and stored.summary.title == ""
    assert stored.summary.message_count == 0
    # Control: with the upstream back, the same message is answered.
    chat.upstream.reset()
    _, reply = await say(chat, member, cid, "anyone there?", model=FAILOVER_MODEL)
    assert reply.content == "eu-up says: anyone there?"


# -- custom GPTs --------------------------------------------------------------------------------

INSTRUCTIONS = "You are the canteen helper. Answer in one sentence."
HANDBOOK = "The staff canteen opens at 7:45 and serves porridge on Tuesdays."


async def test_a_gpts_instructions_and_knowledge_reach_the_model_and_are_cited(
        chat: Chat, member: MemberGrant) -> None:
    handbook = chat.files.add(member, "handbook.md", HANDBOOK.encode())
    gpt = chat.gpts.create(member, name="Canteen", instructions=INSTRUCTIONS,
                           model=UPSTREAM_MODEL, file_ids=[handbook.id])
    assert await chat.knowledge.index(member.tenant, gpt.id, [handbook.id]) == 1
    chat.upstream.behaviour.echo = "system"  # the upstream repeats the system prompt
    cid = chat.new_conversation(member, gpt_id=gpt.id)
    turn = await chat.service.send(member, cid, ChatRequest("When can I get breakfast?"))
    text = "".join([piece async for piece in turn.deltas()])
    kept = await turn.finish()
    assert text.startswith("eu-up says: " + INSTRUCTIONS)
    assert f"[handbook.md]\n{HANDBOOK}" in text
    assert kept.citations == (Citation(handbook.id, "handbook.md"),)
    assert (kept.gpt_id, kept.model) == (gpt.id, UPSTREAM_MODEL)
    assert chat.get(member, cid).branch()[-1].citations == kept.citations  # as stored
    # Control: the same question without the GPT carries no instructions and cites nothing.
    plain = chat.new_conversation(member)
    _, bare = await say(chat, member, plain, "When can I get breakfast?", model=UPSTREAM_MODEL)
    assert bare.content == "eu-up says: " and bare.citations == ()


# -- PostgreSQL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_turn_and_a_regenerated_reply_on_postgresql(
        site: Site, chat: Chat, member: MemberGrant) -> None:
    assert site.settings.regions["eu"].database_url.startswith("postgresql")
    cid = chat.new_conversation(member)
    asked, first = await say(chat, member, cid, "hello from postgres", model=UPSTREAM_MODEL)
    again = await answered(await chat.service.regenerate(member, cid, model=DEV))
    stored = chat.get(member, cid)
    assert contents(stored.messages) == [
        ("user", "complete", "hello from postgres"),
        ("assistant", "complete", "eu-up says: hello from postgres"),
        ("assistant", "complete", "hello from postgres")]
    assert first.parent_id == again.parent_id == asked.id
    assert stored.summary.title == "hello from postgres"


async def test_one_reply_at_a_time_per_conversation(chat: Chat, member: MemberGrant) -> None:
    cid = chat.new_conversation(member)
    first = await chat.service.send(member, cid, ChatRequest("first", model="dev-echo"))
    with pytest.raises(ReplyInProgress) as busy:
        await chat.service.send(member, cid, ChatRequest("second", model="dev-echo"))
    assert busy.value.status == 409
    with pytest.raises(ReplyInProgress):
        await chat.service.regenerate(member, cid)
    other = chat.new_conversation(member)  # another conversation is not held up
    assert (await say(chat, member, other, "elsewhere", model="dev-echo"))[1].content
    async for _ in first.deltas():
        pass
    await first.finish()
    _, reply = await say(chat, member, cid, "second", model="dev-echo")
    branch = chat.get(member, cid).branch()
    assert [m.content for m in branch] == ["first", "first", "second", "second"]
    assert reply.parent_id == branch[2].id


async def test_a_turn_that_fails_to_open_frees_its_conversation(
        chat: Chat, member: MemberGrant) -> None:
    chat.upstream.behaviour.mode = "fail"
    cid = chat.new_conversation(member)
    with pytest.raises(NoInRegionProvider):
        await chat.service.send(member, cid, ChatRequest("hi", model=FAILOVER_MODEL))
    chat.upstream.reset()
    assert (await say(chat, member, cid, "hi", model="dev-echo"))[1].content == "hi"


def picture(name: str, size: int, media_type: str = "image/png") -> WorkspaceFile:
    return WorkspaceFile(name, "user_x", name, media_type, size, "upload",
                         datetime.now(UTC), False)


def test_images_sent_with_a_turn_stay_within_a_budget() -> None:
    mib = 1024 * 1024
    own = [picture("own", 6 * mib), picture("notes", 3 * mib, "text/plain")]
    earlier = [[picture("oldest", 8 * mib)], [picture("older", 9 * mib)],
               [picture("newest", 5 * mib)]]
    # The message's own first, then the newest earlier ones while 20 MiB last.
    assert images_to_send(own, earlier) == {"own", "newest", "older"}
    assert images_to_send([], earlier) == {"newest", "older"}  # 8 more would pass 20
    with pytest.raises(InvalidInput) as too_much:
        images_to_send([picture("a", 12 * mib), picture("b", 9 * mib)], [])
    assert too_much.value.param == "file_ids"
    many = [[picture(f"p{i}", 1000)] for i in range(40)]
    assert len(images_to_send([], many)) == IMAGES_PER_TURN


async def test_a_reply_is_kept_with_its_sanitised_html(chat: Chat, member: MemberGrant) -> None:
    cid = chat.new_conversation(member)
    _, reply = await say(chat, member, cid, "**bold** <script>window.x=1</script>",
                         model="dev-echo")  # the stand-in echoes the prompt
    assert "<strong>bold</strong>" in (reply.html or "")
    assert "<script" not in (reply.html or "")
    stored = chat.get(member, cid).messages[-1]
    assert stored.html == reply.html and stored.content == reply.content


async def test_too_many_image_bytes_are_refused_before_the_message_is_counted(
        make_chat: ChatFactory, member: MemberGrant, monkeypatch: pytest.MonkeyPatch) -> None:
    chat = make_chat(WorkspaceSettings(messages_per_minute=1))
    picture = chat.files.add(member, "red.png", image_bytes())
    monkeypatch.setattr(chat_module, "IMAGE_BYTES_PER_TURN", picture.size - 1)
    cid = chat.new_conversation(member)
    with pytest.raises(InvalidInput) as refused:
        await chat.service.send(member, cid, ChatRequest("look", model="dev-echo",
                                                         file_ids=(picture.id,)))
    assert refused.value.param == "file_ids"
    monkeypatch.setattr(chat_module, "IMAGE_BYTES_PER_TURN", 20 * 1024 * 1024)
    # The refused message neither counted against the limit nor held the conversation.
    _, reply = await say(chat, member, cid, "look", model="dev-echo", file_ids=(picture.id,))
    assert reply.content == "look"
