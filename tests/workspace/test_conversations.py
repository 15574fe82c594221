"""Conversations: message trees and branches, keyset pages and title search, isolation between
workspaces and members, sealed columns, retention; on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from domicile.errors import InvalidInput, NotFound
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.workspace import conversations as conversations_module
from domicile.workspace.conversations import (
    Citation,
    Conversations,
    ConversationSummary,
    StoredMessage,
)
from domicile.workspace.models import ConversationRow, MessageRow
from tests.conftest import canary_forms
from tests.workspace.conftest import MemberFactory


@pytest.fixture
def conversations(eu_store: RegionalStore) -> Conversations:
    return Conversations(eu_store)


Exchange = Callable[..., tuple[StoredMessage, StoredMessage]]


@pytest.fixture
def exchange(conversations: Conversations, member: MemberGrant) -> Exchange:
    """`exchange(cid, prompt, parent_id=None)`: a user's message and the assistant's reply."""

    def add(conversation_id: str, prompt: str, parent_id: str | None = None,
            who: MemberGrant = member) -> tuple[StoredMessage, StoredMessage]:
        asked = conversations.add_message(who, conversation_id, role="user", content=prompt,
                                          parent_id=parent_id)
        answered = conversations.add_message(who, conversation_id, role="assistant",
                                             content=f"answer to {prompt}", parent_id=asked.id)
        return asked, answered

    return add


def message_count(store: RegionalStore, conversation_id: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(MessageRow)
                               .where(MessageRow.conversation_id == conversation_id)) or 0)


def age(store: RegionalStore, conversation_id: str, days: int) -> None:
    """Move a conversation's last activity `days` into the past."""
    with store.engine.begin() as conn:
        conn.execute(update(ConversationRow).where(ConversationRow.id == conversation_id)
                     .values(updated_at=datetime.now(UTC) - timedelta(days=days)))


# -- creating and reading -----------------------------------------------------------------------

def test_a_new_conversation_is_empty_and_answers_in_the_api_shape(
        conversations: Conversations, member: MemberGrant) -> None:
    created = conversations.create(member, title="  Trip plans ", model="gpt-x")
    found = conversations.get(member, created.id)
    assert created.id.startswith("conv_")
    assert found.summary == created
    assert found.messages == [] and found.current_message_id is None
    assert found.branch() == []
    body = found.to_json()
    assert body["object"] == "workspace.conversation"
    assert body["title"] == "Trip plans" and body["model"] == "gpt-x" and body["gpt_id"] is None
    assert body["message_count"] == 0 and body["messages"] == [] and body["branch"] == []
    assert isinstance(body["created_at"], int) and body["current_message_id"] is None
    assert found.summary.created_at.tzinfo is not None


def test_messages_keep_what_was_said_and_the_conversation_counts_them(
        conversations: Conversations, member: MemberGrant) -> None:
    cid = conversations.create(member).id
    asked = conversations.add_message(member, cid, role="user", content="Hello é ✓ \ud800",
                                      parent_id=None, file_ids=("file_a",))
    answered = conversations.add_message(
        member, cid, role="assistant", content="Hi!", parent_id=asked.id, status="stopped",
        model="gpt-y", gpt_id="gpt_1", citations=(Citation("file_b", "notes.md"),))
    found = conversations.get(member, cid)
    assert found.messages == [asked, answered]
    assert found.current_message_id == answered.id
    assert found.summary.message_count == 2
    assert found.summary.model == "gpt-y" and found.summary.gpt_id == "gpt_1"
    assert found.summary.updated_at >= found.summary.created_at
    reply = found.to_json()["messages"][1]
    assert reply == {
        "id": answered.id, "object": "workspace.message", "conversation_id": cid,
        "parent_id": asked.id, "role": "assistant", "content": "Hi!", "status": "stopped",
        "model": "gpt-y", "gpt_id": "gpt_1", "file_ids": [],
        "citations": [{"file_id": "file_b", "name": "notes.md"}],
        "created_at": int(answered.created_at.timestamp()), "html": None,
    }
    assert found.messages[0].content == "Hello é ✓ \ud800"
    assert found.messages[0].file_ids == ("file_a",)


@pytest.mark.parametrize(("changes", "param"), [
    ({"role": "system"}, "role"),
    ({"status": "pending"}, "status"),
    ({"role": "assistant", "parent_id": None}, "parent_id"),
    ({"model": "m" * 201}, "model"),
])
def test_a_malformed_message_is_refused_and_nothing_is_stored(
        conversations: Conversations, member: MemberGrant, eu_store: RegionalStore,
        changes: dict[str, Any], param: str) -> None:
    cid = conversations.create(member).id
    arguments: dict[str, Any] = {"role": "user", "content": "hi", "parent_id": None, **changes}
    with pytest.raises(InvalidInput) as raised:
        conversations.add_message(member, cid, **arguments)
    assert raised.value.param == param
    assert message_count(eu_store, cid) == 0
    assert conversations.get(member, cid).summary.message_count == 0


def test_a_parent_from_another_conversation_is_not_found(
        conversations: Conversations, member: MemberGrant, exchange: Exchange,
        eu_store: RegionalStore) -> None:
    first = conversations.create(member).id
    second = conversations.create(member).id
    asked, _ = exchange(first, "question")
    with pytest.raises(NotFound) as raised:
        conversations.add_message(member, second, role="assistant", content="x",
                                  parent_id=asked.id)
    assert raised.value.param == "parent_id"
    assert message_count(eu_store, second) == 0
    assert conversations.get(member, second).summary.message_count == 0


# -- branches -------------------------------------------------------------------------------------

def test_regenerating_keeps_the_earlier_reply_on_its_own_branch(
        conversations: Conversations, member: MemberGrant, exchange: Exchange) -> None:
    cid = conversations.create(member).id
    asked, first_reply = exchange(cid, "question")
    second_reply = conversations.add_message(member, cid, role="assistant", content="again",
                                             parent_id=asked.id)
    found = conversations.get(member, cid)
    assert [m.id for m in found.messages] == [asked.id, first_reply.id, second_reply.id]
    assert [m.id for m in found.branch()] == [asked.id, second_reply.id]
    assert [m.id for m in found.branch(first_reply.id)] == [asked.id, first_reply.id]
    assert found.to_json()["branch"] == [asked.id, second_reply.id]

    shown = conversations.select(member, cid, first_reply.id)
    assert shown.current_message_id == first_reply.id
    assert conversations.get(member, cid).current_message_id == first_reply.id


def test_selecting_a_message_shows_the_newest_path_below_it(
        conversations: Conversations, member: MemberGrant, exchange: Exchange) -> None:
    cid = conversations.create(member).id
    asked, reply = exchange(cid, "one")
    _, old_leaf = exchange(cid, "two", reply.id)
    edited, new_leaf = exchange(cid, "two, edited", reply.id)
    conversations.select(member, cid, old_leaf.id)

    shown = conversations.select(member, cid, asked.id)
    assert shown.current_message_id == new_leaf.id
    assert [m.id for m in shown.branch()] == [asked.id, reply.id, edited.id, new_leaf.id]


def test_editing_the_first_prompt_starts_a_second_root(
        conversations: Conversations, member: MemberGrant, exchange: Exchange) -> None:
    cid = conversations.create(member).id
    first, _ = exchange(cid, "first")
    edited, reply = exchange(cid, "first, edited")
    found = conversations.get(member, cid)
    assert [m.id for m in found.branch()] == [edited.id, reply.id]
    assert found.branch(first.id) == [found.messages[0]]
    assert found.summary.message_count == 4


def test_selecting_a_message_of_another_conversation_is_not_found(
        conversations: Conversations, member: MemberGrant, exchange: Exchange) -> None:
    first = conversations.create(member).id
    second = conversations.create(member).id
    _, reply = exchange(first, "question")
    with pytest.raises(NotFound) as raised:
        conversations.select(member, second, reply.id)
    assert raised.value.param == "message_id"


def test_a_branch_to_an_unknown_message_is_empty(
        conversations: Conversations, member: MemberGrant, exchange: Exchange) -> None:
    cid = conversations.create(member).id
    exchange(cid, "question")
    assert conversations.get(member, cid).branch("msg_unknown") == []


# -- listing and search ---------------------------------------------------------------------------

def all_pages(conversations: Conversations, member: MemberGrant, **options: Any
              ) -> list[list[ConversationSummary]]:
    pages, cursor = [], None
    while True:
        found, cursor = conversations.list(member, cursor=cursor, **options)
        pages.append(found)
        if cursor is None:
            return pages


def test_the_list_is_newest_activity_first_in_pages(
        conversations: Conversations, member: MemberGrant, exchange: Exchange) -> None:
    made = [conversations.create(member, title=f"chat {n}").id for n in range(7)]
    exchange(made[2], "bring me to the top")
    expected = [made[2], *reversed([cid for cid in made if cid != made[2]])]

    pages = all_pages(conversations, member, limit=3)
    assert [[c.id for c in page] for page in pages] == [
        expected[0:3], expected[3:6], expected[6:7]]
    assert pages[0][0].message_count == 2
    whole, cursor = conversations.list(member, limit=7)
    assert [c.id for c in whole] == expected and cursor is None


@pytest.mark.parametrize(("options", "param"), [
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "WyJ4IiwgMV0"}, "cursor"),  # ["x", 1]: base64 JSON of the wrong shape
    # Deeply nested JSON (the parser's recursion would be a 500)
    ({"cursor": base64.urlsafe_b64encode(b"[" * 3000).decode()}, "cursor"),
    ({"limit": 0}, "limit"),
    ({"limit": 101}, "limit"),
])
def test_a_bad_cursor_or_limit_is_refused(conversations: Conversations, member: MemberGrant,
                                          options: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        conversations.list(member, **options)
    assert raised.value.param == param


def test_search_finds_titles_in_any_case_across_pages(
        conversations: Conversations, member: MemberGrant,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversations_module, "SEARCH_PAGE", 2)  # titles opened 2 at a time
    titles = ["Budget 2024", "holiday", "Team BUDGET review", "lunch", "dinner", "budgeting",
              "notes"]
    made = {title: conversations.create(member, title=title).id for title in titles}

    pages = all_pages(conversations, member, limit=2, query="budget")
    assert [[c.title for c in page] for page in pages] == [
        ["budgeting", "Team BUDGET review"], ["Budget 2024"]]
    found, cursor = conversations.list(member, query="ÄRGER")
    assert found == [] and cursor is None
    assert conversations.list(member, query="Lunch")[0][0].id == made["lunch"]


# -- changing and deleting ----------------------------------------------------------------------

def test_rename_changes_the_title_and_checks_its_length(
        conversations: Conversations, member: MemberGrant) -> None:
    cid = conversations.create(member, title="old").id
    renamed = conversations.rename(member, cid, " new title ")
    assert renamed.title == "new title" and renamed.id == cid
    assert conversations.get(member, cid).summary.title == "new title"
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(InvalidInput) as raised:
            conversations.rename(member, cid, bad)
        assert raised.value.param == "title"
    assert conversations.rename(member, cid, "y" * 200).title == "y" * 200


def test_a_generated_title_fills_only_an_empty_one(
        conversations: Conversations, member: MemberGrant) -> None:
    untitled = conversations.create(member).id
    titled = conversations.create(member, title="Mine").id
    conversations.set_title(member, untitled, "  A   generated\ntitle " + "z" * 300)
    conversations.set_title(member, titled, "Generated")
    generated = conversations.get(member, untitled).summary.title
    assert generated.startswith("A generated title z") and len(generated) == 200
    assert conversations.get(member, titled).summary.title == "Mine"


def test_delete_removes_the_conversation_and_its_messages(
        conversations: Conversations, member: MemberGrant, exchange: Exchange,
        eu_store: RegionalStore) -> None:
    cid = conversations.create(member).id
    kept = conversations.create(member).id
    exchange(cid, "question")
    exchange(kept, "other question")
    conversations.delete(member, cid)
    assert message_count(eu_store, cid) == 0
    assert message_count(eu_store, kept) == 2
    with pytest.raises(NotFound):
        conversations.get(member, cid)
    with pytest.raises(NotFound):
        conversations.delete(member, cid)
    assert [c.id for c in conversations.list(member)[0]] == [kept]


def test_retention_deletes_only_old_conversations_of_that_workspace(
        conversations: Conversations, make_member: MemberFactory, exchange: Exchange,
        eu_store: RegionalStore, member: MemberGrant) -> None:
    elsewhere = make_member()
    old = conversations.create(member).id
    recent = conversations.create(member).id
    old_elsewhere = conversations.create(elsewhere).id
    exchange(old, "old question")
    exchange(old_elsewhere, "old question", who=elsewhere)
    age(eu_store, old, 40)
    age(eu_store, old_elsewhere, 40)

    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert conversations.delete_older_than(member.tenant, cutoff) == 1
    assert [c.id for c in conversations.list(member)[0]] == [recent]
    assert message_count(eu_store, old) == 0
    assert conversations.get(elsewhere, old_elsewhere).summary.message_count == 2
    assert conversations.delete_older_than(member.tenant, cutoff) == 0
    with pytest.raises(ValueError):
        conversations.delete_older_than(member.tenant, cutoff.replace(tzinfo=None))


# -- isolation ------------------------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[Conversations, MemberGrant, str, str], object]] = {
    "get": lambda c, m, cid, _mid: c.get(m, cid),
    "rename": lambda c, m, cid, _mid: c.rename(m, cid, "mine now"),
    "set_title": lambda c, m, cid, _mid: c.set_title(m, cid, "mine now"),
    "delete": lambda c, m, cid, _mid: c.delete(m, cid),
    "select": lambda c, m, cid, mid: c.select(m, cid, mid),
    "add_message": lambda c, m, cid, mid: c.add_message(
        m, cid, role="user", content="hi", parent_id=mid),
}


@pytest.mark.parametrize("where", ["another workspace", "same workspace"])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_conversation_is_not_found_by_anyone_else(
        conversations: Conversations, member: MemberGrant, make_member: MemberFactory,
        exchange: Exchange, where: str, operation: str) -> None:
    cid = conversations.create(member, title="private").id
    _, reply = exchange(cid, "secret question")
    other = make_member() if where == "another workspace" else make_member(member.workspace_id)
    with pytest.raises(NotFound):
        OPERATIONS[operation](conversations, other, cid, reply.id)
    assert conversations.list(other) == ([], None)
    found = conversations.get(member, cid)
    assert found.summary.title == "private" and found.summary.message_count == 2
    assert found.current_message_id == reply.id


# -- sealing ---------------------------------------------------------------------------------------

def test_titles_and_messages_are_stored_only_sealed(
        conversations: Conversations, member: MemberGrant, eu_store: RegionalStore) -> None:
    canary = "CANARY-7f3a9c-conversation"
    cid = conversations.create(member, title=f"title {canary}").id
    asked = conversations.add_message(member, cid, role="user", content=f"prompt {canary}",
                                      parent_id=None)
    conversations.add_message(member, cid, role="assistant", content=f"reply {canary}",
                              parent_id=asked.id, citations=(Citation("file_1", canary),))
    with eu_store.engine.connect() as conn:
        stored = [conn.scalar(select(ConversationRow.title).where(ConversationRow.id == cid)),
                  *conn.scalars(select(MessageRow.body)
                                .where(MessageRow.conversation_id == cid))]
    assert len(stored) == 3
    for raw in stored:
        assert raw is not None
        assert not any(form in bytes(raw) for form in canary_forms(canary))
    assert canary in conversations.get(member, cid).messages[1].citations[0].name
