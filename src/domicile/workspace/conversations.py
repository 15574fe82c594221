"""Conversations: a member's chats, each a tree of messages, kept sealed in the workspace's region.

A conversation's messages form a tree: editing a prompt or regenerating a reply adds a sibling,
and the earlier branch stays. `current_message_id` is the leaf of the branch the member sees.
Titles and message bodies are sealed (G5) under the workspace's data key, bound to their row;
the plain columns are only what queries need (owner, times, order, counts).

Every method takes the acting member and answers `NotFound` for a conversation that is not
theirs (another workspace's or another member's alike), so ids leak nothing. Reads are one
query each and open only what they return.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, delete, insert, or_, select, update

from domicile.errors import InvalidInput, NotFound
from domicile.storage.interfaces import TenantRef
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.secrets import new_id

from .models import ConversationRow, MessageRow

__all__ = [
    "MESSAGE_KIND",
    "MESSAGE_ROLES",
    "MESSAGE_STATUSES",
    "TITLE_KIND",
    "Citation",
    "Conversation",
    "ConversationSummary",
    "Conversations",
    "StoredMessage",
    "as_utc",
]

TITLE_KIND = "ws-conversation-title"
MESSAGE_KIND = "ws-message"
MESSAGE_ROLES = ("user", "assistant")
MESSAGE_STATUSES = ("complete", "stopped", "error")
MAX_TITLE_CHARS = 200
MAX_PAGE = 100
MAX_MODEL_CHARS = 200  # the width of the `model` column
MAX_ID_CHARS = 40  # the width of the id columns
SEARCH_PAGE = 200  # conversations whose titles a search opens at a time
SWEEP_BATCH = 500  # conversations deleted per transaction by retention
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AnyRow = Row[*tuple[Any, ...]]


def as_utc(moment: datetime) -> datetime:
    """A timezone-aware UTC datetime: SQLite gives back the naive UTC value it was given."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


@dataclass(frozen=True, slots=True)
class Citation:
    """A knowledge file a reply drew on."""

    file_id: str
    name: str

    def to_json(self) -> dict[str, str]:
        return {"file_id": self.file_id, "name": self.name}


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    conversation_id: str
    parent_id: str | None
    role: str  # one of MESSAGE_ROLES
    status: str  # one of MESSAGE_STATUSES
    content: str
    created_at: datetime
    model: str | None
    gpt_id: str | None
    file_ids: tuple[str, ...]
    citations: tuple[Citation, ...]
    # A reply rendered from Markdown to sanitised HTML once, when it was stored (for display).
    html: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "workspace.message",
            "conversation_id": self.conversation_id,
            "parent_id": self.parent_id,
            "role": self.role,
            "content": self.content,
            "status": self.status,
            "model": self.model,
            "gpt_id": self.gpt_id,
            "file_ids": list(self.file_ids),
            "citations": [citation.to_json() for citation in self.citations],
            "created_at": _unix(self.created_at),
            "html": self.html,
        }


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    id: str
    title: str
    model: str | None
    gpt_id: str | None
    created_at: datetime
    updated_at: datetime
    message_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "workspace.conversation",
            "title": self.title,
            "model": self.model,
            "gpt_id": self.gpt_id,
            "created_at": _unix(self.created_at),
            "updated_at": _unix(self.updated_at),
            "message_count": self.message_count,
        }


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation with every message of every branch, in the order they were added."""

    summary: ConversationSummary
    messages: list[StoredMessage]
    current_message_id: str | None

    def branch(self, leaf_id: str | None = None) -> list[StoredMessage]:
        """The messages from the root down to `leaf_id` (default: the current leaf); empty
        for an id that is not a message of this conversation."""
        leaf = self.current_message_id if leaf_id is None else leaf_id
        by_id = {message.id: message for message in self.messages}
        path: list[StoredMessage] = []
        node = by_id.get(leaf) if leaf is not None else None
        # A parent is always an earlier message (add_message checks it exists), so no cycles.
        while node is not None:
            path.append(node)
            node = by_id.get(node.parent_id) if node.parent_id is not None else None
        path.reverse()
        return path

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary.to_json(),
            "current_message_id": self.current_message_id,
            "messages": [message.to_json() for message in self.messages],
            "branch": [message.id for message in self.branch()],
        }


# -- cursors: an opaque (updated_at, id) keyset ------------------------------------------------

def _cursor(updated_at: datetime, conversation_id: str) -> str:
    micros = (as_utc(updated_at) - _EPOCH) // timedelta(microseconds=1)
    raw = json.dumps([micros, conversation_id]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


MAX_CURSOR = 200  # ours are under 100 characters; longer is not one of ours


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        micros, conversation_id = json.loads(raw)
        if type(micros) is not int or not isinstance(conversation_id, str):
            raise ValueError("not a cursor")
        return _EPOCH + timedelta(microseconds=micros), conversation_id
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise InvalidInput("The cursor is not valid.", param="cursor") from None


# -- validation ----------------------------------------------------------------------------------

def _title(title: object, *, required: bool) -> str:
    if not isinstance(title, str):
        raise InvalidInput("The title must be a string.", param="title")
    title = title.strip()
    if required and not title:
        raise InvalidInput("The title is empty.", param="title")
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidInput(f"The title is longer than {MAX_TITLE_CHARS} characters.",
                           param="title")
    return title


def _reference(value: object, param: str, limit: int) -> str | None:
    """An optional model name or id: a short string, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInput(f"`{param}` must be a string of 1 to {limit} characters.",
                           param=param)
    return value


def _not_found() -> NotFound:
    return NotFound("No such conversation.", param="conversation_id")


SUMMARY_COLUMNS = (
    ConversationRow.id,
    ConversationRow.title,
    ConversationRow.model,
    ConversationRow.gpt_id,
    ConversationRow.created_at,
    ConversationRow.updated_at,
    ConversationRow.message_count,
)
# A conversation's own columns beside its messages' (one query: `Conversations.get`).
HEAD_COLUMNS = (
    ConversationRow.id.label("c_id"),
    ConversationRow.title.label("c_title"),
    ConversationRow.model.label("c_model"),
    ConversationRow.gpt_id.label("c_gpt_id"),
    ConversationRow.created_at.label("c_created_at"),
    ConversationRow.updated_at.label("c_updated_at"),
    ConversationRow.message_count.label("c_message_count"),
    ConversationRow.current_message_id.label("c_current_message_id"),
)
MESSAGE_COLUMNS = (
    MessageRow.id,
    MessageRow.parent_id,
    MessageRow.role,
    MessageRow.status,
    MessageRow.created_at,
    MessageRow.body,
)


class Conversations:
    """A region's conversations (blocking; SQLAlchemy on the store's engine)."""

    def __init__(self, store: RegionalStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"Conversations(region={self.store.region!r})"

    # -- reading -----------------------------------------------------------------------------

    @staticmethod
    def _owned(member: MemberGrant) -> ColumnElement[bool]:
        return and_(ConversationRow.workspace_id == member.workspace_id,
                    ConversationRow.user_id == member.user_id)

    def _summary(self, tenant: TenantRef, row: AnyRow, title: str | None = None
                 ) -> ConversationSummary:
        if title is None:
            title = self.store.open(tenant, TITLE_KIND, row.id, row.title).decode()
        return ConversationSummary(
            id=row.id, title=title, model=row.model, gpt_id=row.gpt_id,
            created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at),
            message_count=row.message_count)

    def _message(self, tenant: TenantRef, conversation_id: str, row: AnyRow
                 ) -> StoredMessage:
        body = json.loads(self.store.open(tenant, MESSAGE_KIND, row.id, row.body))
        return StoredMessage(
            id=row.id, conversation_id=conversation_id, parent_id=row.parent_id,
            role=row.role, status=row.status, content=body["content"],
            created_at=as_utc(row.created_at), model=body["model"], gpt_id=body["gpt_id"],
            file_ids=tuple(body["file_ids"]),
            citations=tuple(Citation(c["file_id"], c["name"]) for c in body["citations"]),
            html=body.get("html"))

    def _page(self, conn: Connection, member: MemberGrant, after: tuple[datetime, str] | None,
              size: int) -> list[AnyRow]:
        """Up to `size` of the member's conversations after `after`, newest first."""
        statement = select(*SUMMARY_COLUMNS).where(self._owned(member))
        if after is not None:
            updated_at, conversation_id = after
            statement = statement.where(or_(
                ConversationRow.updated_at < updated_at,
                and_(ConversationRow.updated_at == updated_at,
                     ConversationRow.id < conversation_id)))
        statement = statement.order_by(ConversationRow.updated_at.desc(),
                                       ConversationRow.id.desc()).limit(size)
        return list(conn.execute(statement).all())

    def list(self, member: MemberGrant, *, limit: int = 50, cursor: str | None = None,
             query: str | None = None) -> tuple[list[ConversationSummary], str | None]:
        """The member's conversations, most recently updated first, and the cursor of the
        next page (None at the end). `query` keeps those whose title holds it, ignoring
        case: titles are sealed, so a search opens them a page at a time until it has
        `limit` matches."""
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"`limit` must be between 1 and {MAX_PAGE}.", param="limit")
        after = _parse_cursor(cursor) if cursor else None
        tenant = member.tenant
        with self.store.engine.connect() as conn:
            if not query:
                rows = self._page(conn, member, after, limit + 1)
                found = [self._summary(tenant, row) for row in rows[:limit]]
                more = len(rows) > limit
                return found, _cursor(rows[limit - 1].updated_at, rows[limit - 1].id) \
                    if more else None
            needle = query.casefold()
            found = []
            while True:
                rows = self._page(conn, member, after, SEARCH_PAGE)
                for index, row in enumerate(rows):
                    title = self.store.open(tenant, TITLE_KIND, row.id, row.title).decode()
                    if needle not in title.casefold():
                        continue
                    found.append(self._summary(tenant, row, title))
                    if len(found) == limit:
                        # More may match past this one only if rows remain to look at.
                        more = index + 1 < len(rows) or len(rows) == SEARCH_PAGE
                        return found, _cursor(row.updated_at, row.id) if more else None
                if len(rows) < SEARCH_PAGE:
                    return found, None
                after = (rows[-1].updated_at, rows[-1].id)

    def get(self, member: MemberGrant, conversation_id: str) -> Conversation:
        """The conversation with every message of every branch, in one query (a reply waits
        for this read: one round trip to the database, not two)."""
        tenant = member.tenant
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(*HEAD_COLUMNS, *MESSAGE_COLUMNS)
                .select_from(ConversationRow)
                .outerjoin(MessageRow, MessageRow.conversation_id == ConversationRow.id)
                .where(ConversationRow.id == conversation_id, self._owned(member))
                .order_by(MessageRow.seq)).all()
        if not rows:
            raise _not_found()
        head = rows[0]
        summary = ConversationSummary(
            id=head.c_id, title=self.store.open(tenant, TITLE_KIND, head.c_id,
                                                head.c_title).decode(),
            model=head.c_model, gpt_id=head.c_gpt_id, created_at=as_utc(head.c_created_at),
            updated_at=as_utc(head.c_updated_at), message_count=head.c_message_count)
        return Conversation(
            summary=summary,
            messages=[self._message(tenant, conversation_id, row) for row in rows
                      if row.id is not None],
            current_message_id=head.c_current_message_id)

    # -- writing -----------------------------------------------------------------------------

    def create(self, member: MemberGrant, *, title: str = "", model: str | None = None,
               gpt_id: str | None = None) -> ConversationSummary:
        title = _title(title, required=False)
        model = _reference(model, "model", MAX_MODEL_CHARS)
        gpt_id = _reference(gpt_id, "gpt_id", MAX_ID_CHARS)
        conversation_id = new_id("conv")
        sealed = self.store.seal(member.tenant, TITLE_KIND, conversation_id, title.encode())
        now = datetime.now(UTC)
        with self.store.engine.begin() as conn:
            conn.execute(insert(ConversationRow).values(
                id=conversation_id, workspace_id=member.workspace_id, user_id=member.user_id,
                region=self.store.region, model=model, gpt_id=gpt_id, current_message_id=None,
                message_count=0, created_at=now, updated_at=now, title=sealed,
                training_consent=member.tenant.training_consent))
        return ConversationSummary(conversation_id, title, model, gpt_id, now, now, 0)

    def rename(self, member: MemberGrant, conversation_id: str, title: str
               ) -> ConversationSummary:
        """The member's own title (1 to 200 characters). The order of the list is by
        activity, so a rename does not move the conversation."""
        title = _title(title, required=True)
        sealed = self.store.seal(member.tenant, TITLE_KIND, conversation_id, title.encode())
        with self.store.engine.begin() as conn:
            row = conn.execute(
                update(ConversationRow)
                .where(ConversationRow.id == conversation_id, self._owned(member))
                .values(title=sealed, training_consent=member.tenant.training_consent)
                .returning(*SUMMARY_COLUMNS)).first()
        if row is None:
            raise _not_found()
        return self._summary(member.tenant, row, title)

    def set_title(self, member: MemberGrant, conversation_id: str, title: str) -> None:
        """A generated title (whitespace folded, cut to 200 characters). It never replaces a
        title the conversation already has (one the member gave, say); an empty one is
        ignored."""
        title = " ".join(title.split())[:MAX_TITLE_CHARS]
        if not title:
            return
        tenant = member.tenant
        sealed = self.store.seal(tenant, TITLE_KIND, conversation_id, title.encode())
        with self.store.engine.begin() as conn:
            current = conn.scalar(select(ConversationRow.title).with_for_update().where(
                ConversationRow.id == conversation_id, self._owned(member)))
            if current is None:
                raise _not_found()
            if self.store.open(tenant, TITLE_KIND, conversation_id, current):
                return
            conn.execute(update(ConversationRow)
                         .where(ConversationRow.id == conversation_id)
                         .values(title=sealed, training_consent=tenant.training_consent))

    def add_message(self, member: MemberGrant, conversation_id: str, *, role: str,
                    content: str, parent_id: str | None, status: str = "complete",
                    model: str | None = None, gpt_id: str | None = None,
                    file_ids: Iterable[str] = (), citations: Iterable[Citation] = (),
                    message_id: str | None = None, created_at: datetime | None = None,
                    title: str | None = None, html: str | None = None) -> StoredMessage:
        """Add a message under `parent_id` (a message of this conversation) and make it the
        current leaf. `parent_id` None starts a root: the first prompt, or an edit of it
        (so it is for a user's message only). A message's model or GPT becomes the
        conversation's. `message_id` and `created_at` when the caller has shown the message
        already; `title` is given to a conversation that has none, in the same transaction
        (as `set_title`)."""
        if role not in MESSAGE_ROLES:
            raise InvalidInput("`role` must be user or assistant.", param="role")
        if status not in MESSAGE_STATUSES:
            raise InvalidInput("`status` must be complete, stopped or error.", param="status")
        if not isinstance(content, str):
            raise InvalidInput("`content` must be a string.", param="content")
        if parent_id is None and role != "user":
            raise InvalidInput("A reply needs the message it answers.", param="parent_id")
        model = _reference(model, "model", MAX_MODEL_CHARS)
        gpt_id = _reference(gpt_id, "gpt_id", MAX_ID_CHARS)
        file_ids = tuple(file_ids)
        citations = tuple(citations)
        message_id = message_id or new_id("msg")
        # ASCII JSON: a lone surrogate in the content cannot break the encoding.
        body = json.dumps({
            "content": content, "model": model, "gpt_id": gpt_id, "file_ids": list(file_ids),
            "citations": [citation.to_json() for citation in citations],
            **({"html": html} if html is not None else {}),
        }).encode()
        sealed = self.store.seal(member.tenant, MESSAGE_KIND, message_id, body)
        now = created_at or datetime.now(UTC)
        title = " ".join(title.split())[:MAX_TITLE_CHARS] if title else None
        changes: dict[str, Any] = {
            "message_count": ConversationRow.message_count + 1, "updated_at": now,
            "current_message_id": message_id}
        if model is not None:
            changes["model"] = model
        if gpt_id is not None:
            changes["gpt_id"] = gpt_id
        with self.store.engine.begin() as conn:
            # The UPDATE locks the conversation's row first: concurrent adds get distinct seqs.
            counted = conn.execute(
                update(ConversationRow)
                .where(ConversationRow.id == conversation_id, self._owned(member))
                .values(**changes)
                .returning(ConversationRow.message_count, ConversationRow.title)).first()
            if counted is None:
                raise _not_found()
            seq, current_title = counted
            if title and not self.store.open(member.tenant, TITLE_KIND, conversation_id,
                                             current_title):
                conn.execute(update(ConversationRow).where(ConversationRow.id == conversation_id)
                             .values(title=self.store.seal(member.tenant, TITLE_KIND,
                                                           conversation_id, title.encode()),
                                     training_consent=member.tenant.training_consent))
            if parent_id is not None and conn.scalar(select(MessageRow.id).where(
                    MessageRow.id == parent_id,
                    MessageRow.conversation_id == conversation_id)) is None:
                raise NotFound("No such message in this conversation.", param="parent_id")
            conn.execute(insert(MessageRow).values(
                id=message_id, conversation_id=conversation_id,
                workspace_id=member.workspace_id, user_id=member.user_id,
                region=self.store.region, parent_id=parent_id, seq=seq, role=role,
                status=status, created_at=now, body=sealed,
                training_consent=member.tenant.training_consent))
        return StoredMessage(message_id, conversation_id, parent_id, role, status, content, now,
                             model, gpt_id, file_ids, citations, html)

    def select(self, member: MemberGrant, conversation_id: str, message_id: str
               ) -> Conversation:
        """Show the branch through `message_id`: the current leaf becomes the one reached
        from it by always taking the newest reply."""
        with self.store.engine.begin() as conn:
            owned = conn.scalar(select(ConversationRow.id).with_for_update().where(
                ConversationRow.id == conversation_id, self._owned(member)))
            if owned is None:
                raise _not_found()
            rows = conn.execute(
                select(MessageRow.id, MessageRow.parent_id)
                .where(MessageRow.conversation_id == conversation_id)
                .order_by(MessageRow.seq)).all()
            if message_id not in {row.id for row in rows}:
                raise NotFound("No such message in this conversation.", param="message_id")
            newest_child: dict[str, str] = {}
            for row in rows:  # by seq: the last child seen is the newest
                if row.parent_id is not None:
                    newest_child[row.parent_id] = row.id
            leaf = message_id
            while leaf in newest_child:
                leaf = newest_child[leaf]
            conn.execute(update(ConversationRow).where(ConversationRow.id == conversation_id)
                         .values(current_message_id=leaf))
        return self.get(member, conversation_id)

    def delete(self, member: MemberGrant, conversation_id: str) -> None:
        """Delete the conversation and its messages."""
        with self.store.engine.begin() as conn:
            # Messages first and explicitly: the foreign key cascades only where enforced.
            conn.execute(delete(MessageRow).where(
                MessageRow.conversation_id == conversation_id,
                MessageRow.workspace_id == member.workspace_id,
                MessageRow.user_id == member.user_id))
            deleted = conn.execute(delete(ConversationRow).where(
                ConversationRow.id == conversation_id, self._owned(member))).rowcount
            if not deleted:
                raise _not_found()  # rolls back: nothing of anyone else's was touched

    def delete_older_than(self, tenant: TenantRef, cutoff: datetime) -> int:
        """Retention: delete the workspace's conversations not updated since `cutoff` (an
        aware datetime), with their messages; how many conversations were deleted."""
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be a timezone-aware datetime")
        cutoff = cutoff.astimezone(UTC)
        deleted = 0
        while True:
            with self.store.engine.begin() as conn:
                # Locked (PostgreSQL): a message being added now waits, then finds no
                # conversation, instead of one left without its earlier messages.
                ids = list(conn.scalars(
                    select(ConversationRow.id)
                    .where(ConversationRow.workspace_id == tenant.id,
                           ConversationRow.updated_at < cutoff)
                    .limit(SWEEP_BATCH).with_for_update()))
                if not ids:
                    return deleted
                conn.execute(delete(MessageRow).where(MessageRow.conversation_id.in_(ids)))
                deleted += conn.execute(
                    delete(ConversationRow).where(ConversationRow.id.in_(ids))).rowcount
