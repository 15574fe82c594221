"""Custom GPTs: validation, who sees and who may change a GPT, audited sharing changes, knowledge
files limited to the member's own, the sealed body; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select

from domicile.errors import Forbidden, InvalidInput, NotFound
from domicile.storage.regional import RegionalStore
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.secrets import new_id
from domicile.workspace.gpts import Gpt, Gpts
from domicile.workspace.models import FileRow, GptRow
from tests.conftest import canary_forms
from tests.workspace.conftest import MemberFactory

FileFactory = Callable[[MemberGrant], str]
GptFactory = Callable[..., Gpt]


@pytest.fixture
def gpts(eu_store: RegionalStore) -> Gpts:
    return Gpts(eu_store)


@pytest.fixture
def make_file(eu_store: RegionalStore) -> FileFactory:
    """`make_file(member)`: the id of a file row of the member's (no bytes: GPTs only look
    the file up)."""

    def make(owner: MemberGrant) -> str:
        file_id = new_id("file")
        meta = eu_store.seal(owner.tenant, "ws-file-meta", file_id, b'{"name": "a.txt"}')
        with eu_store.engine.begin() as conn:
            conn.execute(insert(FileRow).values(
                id=file_id, workspace_id=owner.workspace_id, user_id=owner.user_id,
                region=eu_store.region, media_type="text/plain", size=1, origin="upload",
                created_at=datetime.now(UTC), meta=meta))
        return file_id

    return make


@pytest.fixture
def make_gpt(gpts: Gpts, member: MemberGrant) -> GptFactory:
    """`make_gpt(owner=member, **fields)`: a valid GPT, with `fields` over the defaults."""

    def make(owner: MemberGrant = member, **fields: Any) -> Gpt:
        values: dict[str, Any] = {"name": "Helper", "instructions": "Be brief.",
                                  "model": "gpt-x", **fields}
        return gpts.create(owner, **values)

    return make


def audit_entries(store: RegionalStore, action: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.actor, e.target, dict(e.details)) for e in store.audit.entries()
            if e.action == action]


# -- making and reading ---------------------------------------------------------------------------

def test_a_gpt_keeps_what_it_was_made_with(gpts: Gpts, member: MemberGrant,
                                           make_file: FileFactory) -> None:
    knowledge = make_file(member)
    made = gpts.create(member, name=" Tutor ", instructions="Explain.", model="gpt-x",
                       description="Helps with maths", file_ids=(knowledge, knowledge),
                       starters=("What is a prime? ",))
    found = gpts.get(member, made.id)
    assert found == made
    assert found.to_json() == {
        "id": made.id, "object": "workspace.gpt", "owner_id": member.user_id,
        "name": "Tutor", "description": "Helps with maths", "instructions": "Explain.",
        "model": "gpt-x", "file_ids": [knowledge],
        "conversation_starters": ["What is a prime?"], "sharing": "private",
        "created_at": int(made.created_at.timestamp()),
        "updated_at": int(made.updated_at.timestamp()),
    }
    assert found.id.startswith("gpt_") and found.created_at.tzinfo is not None


@pytest.mark.parametrize(("fields", "param"), [
    ({"name": " "}, "name"),
    ({"name": "n" * 101}, "name"),
    ({"description": "d" * 501}, "description"),
    ({"instructions": "i" * 16_001}, "instructions"),
    ({"model": ""}, "model"),
    ({"starters": ("a", "b", "c", "d", "e")}, "conversation_starters"),
    ({"starters": ("s" * 201,)}, "conversation_starters"),
    ({"starters": ("",)}, "conversation_starters"),
    ({"starters": "one string"}, "conversation_starters"),
    ({"file_ids": [f"file_{n}" for n in range(21)]}, "file_ids"),
    ({"sharing": "public"}, "sharing"),
])
def test_invalid_fields_are_refused_naming_the_field(
        gpts: Gpts, member: MemberGrant, make_gpt: GptFactory, fields: dict[str, Any],
        param: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        make_gpt(**fields)
    assert raised.value.param == param
    assert gpts.list(member) == []


def test_the_limits_themselves_are_allowed(make_gpt: GptFactory) -> None:
    made = make_gpt(name="n" * 100, description="d" * 500, instructions="i" * 16_000,
                    starters=tuple("s" * 200 for _ in range(4)))
    assert len(made.instructions) == 16_000 and len(made.starters) == 4


def test_knowledge_files_must_be_the_members_own(
        gpts: Gpts, member: MemberGrant, make_member: MemberFactory, make_gpt: GptFactory,
        make_file: FileFactory) -> None:
    colleague = make_member(member.workspace_id)
    theirs = make_file(colleague)
    for file_ids in ([theirs], [make_file(member), "file_unknown"]):
        with pytest.raises(NotFound) as raised:
            make_gpt(file_ids=file_ids)
        assert raised.value.param == "file_ids"
    made = make_gpt()
    with pytest.raises(NotFound):
        gpts.update(member, made.id, file_ids=(theirs,))
    assert gpts.get(member, made.id).file_ids == ()
    assert [g.id for g in gpts.list(member)] == [made.id]


def test_retention_is_told_every_knowledge_file_of_the_workspace(
        gpts: Gpts, member: MemberGrant, make_member: MemberFactory, make_gpt: GptFactory,
        make_file: FileFactory) -> None:
    colleague = make_member(member.workspace_id)
    stranger = make_member()
    mine, theirs, unused = make_file(member), make_file(colleague), make_file(member)
    make_gpt(file_ids=[mine])
    make_gpt(colleague, file_ids=[theirs])  # private GPTs count too
    make_gpt(stranger, file_ids=[make_file(stranger)])
    assert unused not in gpts.knowledge_file_ids(member.tenant)
    assert gpts.knowledge_file_ids(member.tenant) == {mine, theirs}


# -- who sees a GPT -------------------------------------------------------------------------------

def test_a_private_gpt_is_seen_only_by_its_owner(
        gpts: Gpts, member: MemberGrant, make_member: MemberFactory,
        make_gpt: GptFactory) -> None:
    private = make_gpt(name="Mine")
    for other in (make_member(member.workspace_id),
                  make_member(member.workspace_id, role="admin"),
                  make_member()):
        with pytest.raises(NotFound):
            gpts.get(other, private.id)
        with pytest.raises(NotFound):
            gpts.update(other, private.id, name="Taken")
        with pytest.raises(NotFound):
            gpts.delete(other, private.id)
        assert gpts.list(other) == []
    assert gpts.get(member, private.id).name == "Mine"


def test_a_shared_gpt_is_seen_by_its_workspace_only(
        gpts: Gpts, member: MemberGrant, make_member: MemberFactory,
        make_gpt: GptFactory) -> None:
    colleague = make_member(member.workspace_id)
    shared = make_gpt(sharing="workspace", name="Shared")
    private = make_gpt(name="Private")
    own = make_gpt(colleague, name="Colleague's own")
    assert gpts.get(colleague, shared.id) == shared
    assert [g.name for g in gpts.list(colleague)] == ["Colleague's own", "Shared"]
    assert {g.id for g in gpts.list(member)} == {shared.id, private.id}
    assert own.owner_id == colleague.user_id
    stranger = make_member()
    with pytest.raises(NotFound):
        gpts.get(stranger, shared.id)
    assert gpts.list(stranger) == []


# -- who may change a GPT -------------------------------------------------------------------------

def test_the_owner_changes_some_fields_and_the_rest_stay(
        gpts: Gpts, member: MemberGrant, make_gpt: GptFactory) -> None:
    made = make_gpt(description="first", starters=("Hi",))
    changed = gpts.update(member, made.id, name="Renamed", instructions="New rules",
                          description=None)
    assert (changed.name, changed.instructions, changed.description, changed.starters) == (
        "Renamed", "New rules", "first", ("Hi",))
    assert changed.updated_at >= made.updated_at and changed.created_at == made.created_at
    assert gpts.get(member, made.id) == changed


def test_a_change_is_validated_like_a_new_gpt(gpts: Gpts, member: MemberGrant,
                                              make_gpt: GptFactory) -> None:
    made = make_gpt()
    for fields, param in (({"name": ""}, "name"), ({"owner_id": "usr_x"}, "owner_id"),
                          ({"sharing": "everyone"}, "sharing")):
        with pytest.raises(InvalidInput) as raised:
            gpts.update(member, made.id, **fields)
        assert raised.value.param == param
    assert gpts.get(member, made.id) == made


def test_a_member_who_only_uses_a_shared_gpt_may_not_change_it(
        gpts: Gpts, member: MemberGrant, make_member: MemberFactory,
        make_gpt: GptFactory) -> None:
    shared = make_gpt(sharing="workspace")
    colleague = make_member(member.workspace_id)
    with pytest.raises(Forbidden):
        gpts.update(colleague, shared.id, name="Hijacked")
    with pytest.raises(Forbidden):
        gpts.delete(colleague, shared.id)
    assert gpts.get(member, shared.id) == shared


def test_a_workspace_admin_may_change_and_delete_a_shared_gpt(
        gpts: Gpts, member: MemberGrant, make_member: MemberFactory,
        make_gpt: GptFactory, eu_store: RegionalStore) -> None:
    shared = make_gpt(sharing="workspace")
    admin = make_member(member.workspace_id, role="admin")
    assert gpts.update(admin, shared.id, name="Tidied").name == "Tidied"
    assert gpts.get(member, shared.id).owner_id == member.user_id
    gpts.delete(admin, shared.id)
    with pytest.raises(NotFound):
        gpts.get(member, shared.id)
    with eu_store.engine.connect() as conn:
        assert conn.scalar(select(GptRow.id).where(GptRow.id == shared.id)) is None


def test_the_owner_deletes_a_gpt(gpts: Gpts, member: MemberGrant,
                                 make_gpt: GptFactory) -> None:
    made = make_gpt()
    gpts.delete(member, made.id)
    assert gpts.list(member) == []
    with pytest.raises(NotFound):
        gpts.delete(member, made.id)


# -- audit and sealing ------------------------------------------------------------------------

def test_sharing_changes_are_audited_with_ids_only(
        gpts: Gpts, member: MemberGrant, make_gpt: GptFactory,
        eu_store: RegionalStore) -> None:
    made = make_gpt(name="Secret name")
    gpts.update(member, made.id, name="Other name")
    assert audit_entries(eu_store, "gpt.sharing") == []
    gpts.update(member, made.id, sharing="workspace")
    gpts.update(member, made.id, sharing="workspace", instructions="x")
    gpts.update(member, made.id, sharing="private")
    shared_at_birth = make_gpt(sharing="workspace")
    assert audit_entries(eu_store, "gpt.sharing") == [
        (member.user_id, made.id, {"sharing": "workspace"}),
        (member.user_id, made.id, {"sharing": "private"}),
        (member.user_id, shared_at_birth.id, {"sharing": "workspace"}),
    ]
    assert eu_store.audit.verify() is None


def test_the_gpt_is_stored_only_sealed(gpts: Gpts, member: MemberGrant,
                                       make_gpt: GptFactory, eu_store: RegionalStore) -> None:
    canary = "CANARY-51be07-gpt"
    made = make_gpt(name=f"n {canary}", instructions=f"i {canary}",
                    description=f"d {canary}", starters=(f"s {canary}",))
    with eu_store.engine.connect() as conn:
        raw = conn.scalar(select(GptRow.body).where(GptRow.id == made.id))
    assert raw is not None
    assert not any(form in bytes(raw) for form in canary_forms(canary))
    opened = json.loads(eu_store.open(member.tenant, "ws-gpt", made.id, bytes(raw)))
    assert opened["instructions"] == f"i {canary}"
