"""A site holding content of every type, through the real services (workspace) and the store
(what the gateway stores), for the residency report and verification tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from domicile.config import WorkspaceSettings
from domicile.site import Site
from domicile.storage.interfaces import TenantRef, UsageRecord
from domicile.tenancy.grants import MemberGrant
from domicile.workspace.conversations import Conversations
from domicile.workspace.files import FileStore
from domicile.workspace.gpts import Gpts

FILE_BYTES = b"Quarterly numbers, kept in the EU.\n" * 40
RESPONSE_BYTES = b'{"output": "a stored response"}'
GATEWAY_FILE_BYTES = b"x" * 5000


@dataclass
class Populated:
    org: str
    eu_project: str
    global_project: str
    eu_workspace: str
    us_workspace: str
    eu_member: MemberGrant
    conversation: str
    messages: tuple[str, str]
    file: str


def member_of(site: Site, org: str, workspace: str, email: str) -> MemberGrant:
    directory = site.directory
    user = directory.add_user(workspace, email, "owner", "correct horse battery staple")
    region = directory.get_workspace(workspace).region
    return MemberGrant(workspace, org, user.id, region, "owner")


def populate(site: Site) -> Populated:
    directory = site.directory
    org = directory.create_org("Acme").id
    project = directory.create_project(org, "api", "eu", retention="regional").id
    global_project = directory.create_project(org, "roaming", "global",
                                              per_request_residency=True).id
    eu_ws = directory.create_workspace(org, "Legal EU", "eu").id
    us_ws = directory.create_workspace(org, "Sales US", "us").id
    eu, us = site.store("eu"), site.store("us")

    member = member_of(site, org, eu_ws, "ada@example.com")
    conversations = Conversations(eu)
    conversation = conversations.create(member, title="Contract review").id
    first = conversations.add_message(member, conversation, role="user", content="Is it valid?",
                                      parent_id=None)
    second = conversations.add_message(member, conversation, role="assistant", content="Yes.",
                                       parent_id=first.id)
    file = FileStore(eu, WorkspaceSettings()).add(member, "numbers.txt", FILE_BYTES)
    Gpts(eu).create(member, name="Reviewer", instructions="Review contracts.", model="dev-echo")

    us_member = member_of(site, org, us_ws, "bob@example.com")
    Conversations(us).create(us_member, title="Pipeline")

    tenant = TenantRef(project, "eu", org)
    eu.put_record(tenant, "response", "resp_1", RESPONSE_BYTES)
    eu.put_blob(tenant, "file", "file_1", "data.jsonl", [GATEWAY_FILE_BYTES])
    now = datetime.now(UTC)
    eu.write_usage([UsageRecord(now, "eu", project, "key_1", "/v1/chat/completions",
                                "dev-echo", "eu-dev", 200, 5, 7)] * 3)
    us.put_record(TenantRef(global_project, "global", org), "response", "resp_g", RESPONSE_BYTES)
    return Populated(org, project, global_project, eu_ws, us_ws, member, conversation,
                     (first.id, second.id), file.id)
