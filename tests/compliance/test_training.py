"""G7: nothing leaves for training without the org's consent, and then only what was written
while it was given. Consent flows from the directory (as a credential is checked) into every
row written, so these tests go through the directory's grants, not hand-made ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domicile.compliance.training import TrainingExport, TrainingNotConsented
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from domicile.tenancy.grants import MemberGrant
from domicile.workspace.conversations import Conversations


def _member(site: Site, org_id: str, workspace_id: str, email: str) -> MemberGrant:
    user = site.directory.add_user(workspace_id, email, "member", "correct horse battery")
    grant = site.directory.member_grant(user.id)  # as a signed-in member is seen: consent now
    assert grant is not None
    return grant


def _exchange(conversations: Conversations, member: MemberGrant, conversation_id: str,
              parent: str | None, question: str, answer: str) -> str:
    asked = conversations.add_message(member, conversation_id, role="user", content=question,
                                      parent_id=parent)
    return conversations.add_message(member, conversation_id, role="assistant",
                                     content=answer, parent_id=asked.id).id


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_is_refused_without_consent_and_writes_nothing(site: Site,
                                                              tmp_path: Path) -> None:
    org = site.directory.create_org("Acme")
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(TrainingNotConsented, match="has not opted in"):
        TrainingExport(site).export(org.id, folder / "train.jsonl")
    assert not list(folder.iterdir())


def test_only_content_written_while_opted_in_is_exported(site: Site, tmp_path: Path) -> None:
    org = site.directory.create_org("Acme")
    workspace = site.directory.create_workspace(org.id, "ws", "eu")
    conversations = Conversations(site.store("eu"))
    before = _member(site, org.id, workspace.id, "a@example.com")
    early = conversations.create(before).id
    leaf = _exchange(conversations, before, early, None, "secret before consent", "early answer")
    old = conversations.create(before).id
    _exchange(conversations, before, old, None, "another before consent", "old answer")

    site.directory.set_training_opt_in(org.id, True)
    after = site.directory.member_grant(before.user_id)
    assert after is not None and after.training_opt_in
    _exchange(conversations, after, early, leaf, "asked with consent", "answered with consent")
    fresh = conversations.create(after).id
    _exchange(conversations, after, fresh, None, "a new question", "a new answer")

    out = tmp_path / "train.jsonl"
    result = TrainingExport(site).export(org.id, out)
    examples = _lines(out)
    text = out.read_text()
    assert "before consent" not in text and "early answer" not in text
    assert "old answer" not in text
    assert examples == [
        {"messages": [{"role": "user", "content": "asked with consent"},
                      {"role": "assistant", "content": "answered with consent"}]},
        {"messages": [{"role": "user", "content": "a new question"},
                      {"role": "assistant", "content": "a new answer"}]},
    ]
    assert result.examples == 2 and result.rows_without_consent_skipped == 4
    assert [e.action for e in site.store("eu").audit.entries()][-1] == "training.export"


def test_withdrawn_consent_stops_the_export_and_zero_retention_is_never_read(
        site: Site, tmp_path: Path) -> None:
    org = site.directory.create_org("Acme", training_opt_in=True)
    zero = site.directory.create_project(org.id, "zero", "eu", retention="zero")
    kept = site.directory.create_project(org.id, "kept", "eu", retention="regional")
    store = site.store("eu")
    record = {"conversation": [{"role": "user", "content": "q"},
                               {"role": "assistant", "content": "stored answer"}]}
    for project, marker in ((zero, "zero"), (kept, "kept")):
        tenant = TenantRef(project.id, "eu", org.id, training_consent=True)
        record["conversation"][1]["content"] = f"{marker} answer"  # type: ignore[index]
        store.put_record(tenant, "response", f"resp_{marker}", json.dumps(record).encode())
    out = tmp_path / "train.jsonl"
    TrainingExport(site).export(org.id, out)
    assert "kept answer" in out.read_text() and "zero answer" not in out.read_text()

    site.directory.set_training_opt_in(org.id, False)
    with pytest.raises(TrainingNotConsented):
        TrainingExport(site).export(org.id, tmp_path / "again.jsonl")
    assert not (tmp_path / "again.jsonl").exists()


def test_a_response_continued_from_one_written_without_consent_exports_only_its_own_turns(
        site: Site, tmp_path: Path) -> None:
    """A stored response carries the conversation of the one it continues
    (`previous_response_id`): written before the opt-in, that part must not leave."""
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "kept", "eu", retention="regional")
    store = site.store("eu")
    first = [{"role": "user", "content": "private question"},
             {"role": "assistant", "content": "private answer"}]
    store.put_record(TenantRef(project.id, "eu", org.id), "response", "resp_1", json.dumps(
        {"response": {"id": "resp_1", "previous_response_id": None},
         "conversation": first}).encode())
    site.directory.set_training_opt_in(org.id, True)
    second = [*first, {"role": "user", "content": "new question"},
              {"role": "assistant", "content": "new answer"}]
    store.put_record(TenantRef(project.id, "eu", org.id, training_consent=True), "response",
                     "resp_2", json.dumps({"response": {"id": "resp_2",
                                                        "previous_response_id": "resp_1"},
                                           "conversation": second}).encode())
    out = tmp_path / "train.jsonl"
    TrainingExport(site).export(org.id, out)
    assert _lines(out) == [{"messages": [{"role": "user", "content": "new question"},
                                         {"role": "assistant", "content": "new answer"}]}]
