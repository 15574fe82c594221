"""Retention: a workspace that keeps content N days loses its older conversations (rows and
messages) and files (rows and sealed blobs, on disk too) at each sweep, and nothing else: not
its newer content, not its GPTs' knowledge files, not a keep-forever workspace's content. Each
sweep of a workspace is audited with counts, never content. The sweeper runs with a fixed
clock; `domicile retention sweep` is the real command, run as a script would. SQLite and
PostgreSQL (the `site` fixture).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from domicile.errors import NotFound
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.workspace.conversations import Conversations
from domicile.workspace.files import FILE_BLOB_KIND, FILE_TEXT_BLOB_KIND, FileStore
from domicile.workspace.gpts import Gpts
from domicile.workspace.models import ConversationRow, FileRow, MessageRow
from domicile.workspace.retention import RetentionSweeper, SweepResult
from tests.cli.conftest import Cli, cli  # noqa: F401  (the `cli` fixture)
from tests.workspace.conftest import MemberFactory

NOW = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)  # the sweeper's clock
DAYS = 30
# Plain texts that must be gone with their conversation or file, and never in the audit.
OLD_PROMPT = "old prompt about the merger"
OLD_FILE_TEXT = "old notes on the merger"


@dataclass
class Content:
    """The services of region eu, and ways to put content there as of a given time."""

    store: RegionalStore
    conversations: Conversations
    files: FileStore
    gpts: Gpts

    def conversation(self, member: MemberGrant, at: datetime, prompt: str) -> str:
        cid = self.conversations.create(member, title=prompt[:40]).id
        asked = self.conversations.add_message(member, cid, role="user", content=prompt,
                                               parent_id=None)
        self.conversations.add_message(member, cid, role="assistant", content="noted",
                                       parent_id=asked.id)
        with self.store.engine.begin() as conn:
            conn.execute(update(ConversationRow).where(ConversationRow.id == cid)
                         .values(created_at=at, updated_at=at))
        return cid

    def file(self, member: MemberGrant, at: datetime, name: str, text: str) -> str:
        file_id = self.files.add(member, name, text.encode()).id
        with self.store.engine.begin() as conn:
            conn.execute(update(FileRow).where(FileRow.id == file_id).values(created_at=at))
        return file_id

    def message_count(self, cid: str) -> int:
        with self.store.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(MessageRow)
                                   .where(MessageRow.conversation_id == cid)) or 0)

    def file_row_exists(self, file_id: str) -> bool:
        with self.store.engine.connect() as conn:
            return conn.scalar(select(FileRow.id).where(FileRow.id == file_id)) is not None

    def blobs_stored(self, member: MemberGrant, file_id: str) -> list[bool]:
        """Whether the blob store (a folder or a bucket) holds the file's sealed bytes and its
        extracted text, asked of the store itself, not through the catalog."""
        return [self.store.blobs.exists(f"{member.workspace_id}/{kind}/{file_id}")
                for kind in (FILE_BLOB_KIND, FILE_TEXT_BLOB_KIND)]

    def is_gone(self, member: MemberGrant, file_id: str) -> bool:
        with pytest.raises(NotFound):
            self.files.get(member, file_id)
        return (not self.file_row_exists(file_id)
                and not any(self.blobs_stored(member, file_id))
                and all(self.store.get_blob(member.tenant, kind, file_id) is None
                        for kind in (FILE_BLOB_KIND, FILE_TEXT_BLOB_KIND)))


@pytest.fixture
def content(site: Site) -> Content:
    store = site.store("eu")
    return Content(store, Conversations(store), FileStore(store, site.settings.workspace),
                   Gpts(store))


@pytest.fixture
def sweeper(site: Site, content: Content) -> RetentionSweeper:
    return RetentionSweeper("eu", site.directory, content.store, content.conversations,
                            content.files, content.gpts, clock=lambda: NOW)


def sweeps(store: RegionalStore) -> list[tuple[str, str, dict[str, object]]]:
    return [(e.actor, e.target, dict(e.details)) for e in store.audit.entries()
            if e.action == "retention.sweep"]


def test_a_sweep_deletes_what_is_older_than_the_retention_and_keeps_the_rest(
        site: Site, content: Content, sweeper: RetentionSweeper,
        make_member: MemberFactory) -> None:
    member = make_member()
    colleague = make_member(member.workspace_id)
    site.directory.set_retention(member.workspace_id, DAYS)
    old, new = NOW - timedelta(days=DAYS + 1), NOW - timedelta(days=DAYS - 1)
    old_chat = content.conversation(member, old, OLD_PROMPT)
    old_chat_of_colleague = content.conversation(colleague, old, "the colleague's old chat")
    new_chat = content.conversation(member, new, "a recent question")
    old_file = content.file(member, old, "merger.txt", OLD_FILE_TEXT)
    new_file = content.file(member, new, "recent.txt", "recent notes")
    # Old, but a GPT's knowledge: it lasts as long as the GPT.
    knowledge = content.file(member, old, "handbook.md", "the handbook")
    content.gpts.create(member, name="Helper", instructions="Help.", model="dev-echo",
                        file_ids=[knowledge])
    assert all(content.blobs_stored(member, old_file))  # the control

    result = sweeper.sweep()

    assert result == SweepResult("eu", workspaces=1, conversations=2, files=1)
    for gone in (old_chat, old_chat_of_colleague):
        with pytest.raises(NotFound):
            content.conversations.get(member, gone)
        assert content.message_count(gone) == 0
    assert content.is_gone(member, old_file)
    kept = content.conversations.get(member, new_chat)
    assert [m.content for m in kept.messages] == ["a recent question", "noted"]
    assert content.files.read(member, new_file) == b"recent notes"
    assert content.files.read(member, knowledge) == b"the handbook"
    listed, _ = content.conversations.list(member)
    assert [c.id for c in listed] == [new_chat]


def test_the_cutoff_is_exactly_the_retention(site: Site, content: Content,
                                             sweeper: RetentionSweeper,
                                             member: MemberGrant) -> None:
    site.directory.set_retention(member.workspace_id, DAYS)
    cutoff = NOW - timedelta(days=DAYS)
    at_cutoff = content.conversation(member, cutoff, "exactly as old as allowed")
    past_it = content.conversation(member, cutoff - timedelta(seconds=1), "a second older")
    file_at_cutoff = content.file(member, cutoff, "edge.txt", "edge")
    file_past_it = content.file(member, cutoff - timedelta(seconds=1), "past.txt", "past")
    assert sweeper.sweep() == SweepResult("eu", 1, 1, 1)
    assert content.conversations.get(member, at_cutoff).summary.id == at_cutoff
    with pytest.raises(NotFound):
        content.conversations.get(member, past_it)
    assert content.files.read(member, file_at_cutoff) == b"edge"
    assert content.is_gone(member, file_past_it)


def test_a_keep_forever_workspace_is_left_alone(site: Site, content: Content,
                                                sweeper: RetentionSweeper,
                                                make_member: MemberFactory) -> None:
    keeper = make_member()  # no retention: keep forever
    limited = make_member()
    site.directory.set_retention(limited.workspace_id, DAYS)
    ancient = NOW - timedelta(days=4000)
    kept_chat = content.conversation(keeper, ancient, "a very old chat")
    kept_file = content.file(keeper, ancient, "old.txt", "very old")
    swept_chat = content.conversation(limited, ancient, "an old chat, elsewhere")

    assert sweeper.sweep() == SweepResult("eu", 1, 1, 0)

    assert content.message_count(kept_chat) == 2
    assert content.conversations.get(keeper, kept_chat).summary.title == "a very old chat"
    assert content.files.read(keeper, kept_file) == b"very old"
    assert content.message_count(swept_chat) == 0
    assert [target for _, target, _ in sweeps(content.store)] == [limited.workspace_id]


def test_each_sweep_is_audited_with_counts_and_no_content(site: Site, content: Content,
                                                          sweeper: RetentionSweeper,
                                                          member: MemberGrant) -> None:
    site.directory.set_retention(member.workspace_id, DAYS)
    old = NOW - timedelta(days=DAYS + 5)
    content.conversation(member, old, OLD_PROMPT)
    old_file = content.file(member, old, "merger-notes.txt", OLD_FILE_TEXT)
    assert sweeps(content.store) == []

    sweeper.sweep()
    sweeper.sweep()  # nothing left to delete: still a sweep, audited as one

    assert sweeps(content.store) == [
        ("retention", member.workspace_id, {"retention_days": DAYS, "conversations_deleted": 1,
                                            "files_deleted": 1}),
        ("retention", member.workspace_id, {"retention_days": DAYS, "conversations_deleted": 0,
                                            "files_deleted": 0}),
    ]
    logged = json.dumps([(e.actor, e.action, e.target, dict(e.details))
                         for e in content.store.audit.entries()])
    for secret in (OLD_PROMPT, OLD_FILE_TEXT, "merger-notes", old_file):
        assert secret not in logged
    assert content.store.audit.verify() is None


NO_API_EXPIRY = {"api_files_expired": 0, "api_uploads_expired": 0, "api_upload_parts_deleted": 0}


def test_the_sweep_command_deletes_the_apis_expired_files_too(site: Site,
                                                              cli: Cli) -> None:  # noqa: F811
    store = site.store("eu")
    org = site.directory.create_org("sweeps").id
    project = site.directory.create_project(org, "api", "eu", retention="regional").id
    tenant = TenantRef(project, "eu", org_id=org)
    # Stored as the gateway stores a file that expired (an expiry already past).
    store.put_blob(tenant, "file", "file-expired", "old.txt", [b"old"],
                   {"purpose": "user_data", "expires_after": "0"})
    store.put_blob(tenant, "file", "file-kept", "new.txt", [b"new"],
                   {"purpose": "user_data", "expires_after": "3600"})

    result = cli("retention", "sweep", "--region", "eu", "--config",
                 str(site.settings.config_path), "--json")

    assert result.code == 0, result.stderr
    assert result.json["regions"][0]["api_files_expired"] == 1
    assert [blob.id for blob in store.list_blobs(tenant, "file")] == ["file-kept"]


def test_the_sweep_command_deletes_and_reports_counts(site: Site, content: Content,
                                                      cli: Cli,  # noqa: F811
                                                      make_member: MemberFactory) -> None:
    member = make_member()
    keeper = make_member()
    site.directory.set_retention(member.workspace_id, DAYS)
    now = datetime.now(UTC)  # the command's clock is the real one
    old, recent = now - timedelta(days=DAYS + 10), now - timedelta(days=DAYS - 10)
    old_chat = content.conversation(member, old, OLD_PROMPT)
    new_chat = content.conversation(member, recent, "a recent question")
    old_file = content.file(member, old, "merger.txt", OLD_FILE_TEXT)
    keepers_chat = content.conversation(keeper, old, "kept forever")

    result = cli("retention", "sweep", "--config", str(site.settings.config_path), "--json")

    assert result.code == 0, result.stderr
    assert result.json == {"regions": [
        {"region": "eu", "workspaces_swept": 1, "conversations_deleted": 1,
         "files_deleted": 1, **NO_API_EXPIRY},
        {"region": "us", "workspaces_swept": 0, "conversations_deleted": 0,
         "files_deleted": 0, **NO_API_EXPIRY},
    ]}
    with pytest.raises(NotFound):
        content.conversations.get(member, old_chat)
    assert content.message_count(old_chat) == 0
    assert content.is_gone(member, old_file)
    assert content.message_count(new_chat) == 2
    assert content.message_count(keepers_chat) == 2
    assert sweeps(content.store) == [("cli", member.workspace_id, {
        "retention_days": DAYS, "conversations_deleted": 1, "files_deleted": 1})]
    assert OLD_PROMPT not in result.stdout + result.stderr
