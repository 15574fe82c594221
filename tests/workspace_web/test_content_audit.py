"""G8: reading content through the workspace API (a conversation, a file's bytes) appends a
`content.read` entry to the workspace region's audit chain: who, which object, what kind;
never the content nor its title. Driven through the region's workspace app, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from domicile.compliance.audit import CONTENT_READ
from domicile.inference.routing import ModelRouter
from domicile.site import Site
from domicile.tenancy.grants import MemberGrant
from domicile.workspace_web.app import create_workspace_app
from domicile.workspace_web.services import WorkspaceServices, build_workspace_services

CANARY = "canary-7d1f-title-and-text"


@dataclass
class Signed:
    services: WorkspaceServices
    member: MemberGrant
    http: httpx.AsyncClient


@pytest.fixture
async def signed(site: Site) -> AsyncIterator[Signed]:
    """A member of an eu workspace, with a `dw-` token, in front of eu's workspace app."""
    directory = site.directory
    org = directory.create_org("Acme").id
    workspace = directory.create_workspace(org, "Team", "eu")
    user = directory.add_user(workspace.id, "ada@example.com", "member",
                              "correct horse battery staple")
    token = directory.create_token(workspace.id, user.id).secret
    services = build_workspace_services(site, "eu", ModelRouter("eu", []))
    member = MemberGrant(workspace.id, org, user.id, "eu", "member")
    transport = httpx.ASGITransport(create_workspace_app(services))
    async with httpx.AsyncClient(transport=transport,
                                 base_url=site.settings.region("eu").public_url,
                                 headers={"authorization": f"Bearer {token}"}) as http:
        yield Signed(services, member, http)


def content_reads(services: WorkspaceServices) -> list[tuple[str, str, dict[str, object]]]:
    return [(entry.actor, entry.target, dict(entry.details))
            for entry in services.store.audit.entries() if entry.action == CONTENT_READ]


async def test_reading_a_conversation_is_audited_without_its_content(signed: Signed) -> None:
    conversations = signed.services.conversations
    conversation = conversations.create(signed.member, title=f"Plans {CANARY}")
    conversations.add_message(signed.member, conversation.id, role="user",
                              content=f"hello {CANARY}", parent_id=None)
    assert content_reads(signed.services) == []
    for _ in range(2):
        answer = await signed.http.get(f"/workspace/api/conversations/{conversation.id}")
        assert answer.status_code == 200, answer.text
    reads = [(signed.member.user_id, conversation.id, {"kind": "conversation"})] * 2
    assert content_reads(signed.services) == reads
    assert signed.services.store.audit.verify() is None
    entries = [repr(entry) for entry in signed.services.store.audit.entries()]
    assert not any(CANARY in entry for entry in entries)


async def test_downloading_a_file_is_audited_and_a_refused_read_is_not(signed: Signed) -> None:
    added = signed.services.files.add(signed.member, "notes.txt", f"text {CANARY}".encode())
    answer = await signed.http.get(f"/workspace/api/files/{added.id}/content")
    assert answer.status_code == 200 and CANARY in answer.text
    missing = await signed.http.get("/workspace/api/files/file_absent/content")
    assert missing.status_code == 404
    assert content_reads(signed.services) == [
        (signed.member.user_id, added.id, {"kind": "file"})]
