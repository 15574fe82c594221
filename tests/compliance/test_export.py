"""Export (G9): every content type of an org, decrypted, checksummed in the manifest; streamed
(memory flat on a large file); atomic (nothing under --out on failure, never overwritten);
audited in each region read."""

from __future__ import annotations

import hashlib
import json
import secrets
import tracemalloc
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from domicile.compliance.export import Exporter, safe_name
from domicile.config import WorkspaceSettings
from domicile.errors import InvalidInput
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from domicile.storage.models import AUDIT_LOG
from domicile.tenancy.grants import MemberGrant
from domicile.workspace.conversations import Conversations
from domicile.workspace.files import FileStore
from domicile.workspace.gpts import Gpts
from tests.conftest import SiteFactory

RESPONSE_KIND = "response"  # gateway.responses.KIND
API_FILE_KIND = "file"  # gateway.files.KIND


@dataclass
class Tenancy:
    """An org with every content type in it, each holding the canary."""

    site: Site
    org_id: str
    workspace_id: str
    alice: MemberGrant
    bob: MemberGrant
    project: TenantRef
    global_project: TenantRef
    canary: str
    file_bytes: bytes
    ids: dict[str, str] = field(default_factory=dict)


def member(site: Site, org_id: str, workspace_id: str, email: str) -> MemberGrant:
    user = site.directory.add_user(workspace_id, email, "owner", "correct horse battery")
    return MemberGrant(workspace_id, org_id, user.id, "eu", "owner")


def fill(site: Site) -> Tenancy:
    """An org with: a workspace (eu) of two members, each with a branched conversation, a
    file and a GPT; a project (eu) with a stored response and an API file; a per-request-
    residency project with a stored response in us."""
    directory = site.directory
    canary = f"canary-{secrets.token_hex(8)}"
    org_id = directory.create_org("Acme").id
    workspace_id = directory.create_workspace(org_id, "ws", "eu").id
    alice = member(site, org_id, workspace_id, "alice@example.com")
    bob = member(site, org_id, workspace_id, "bob@example.com")
    store = site.store("eu")
    conversations, files = Conversations(store), FileStore(store, WorkspaceSettings())
    gpts = Gpts(store)
    file_bytes = f"notes of {canary}\n".encode() * 50
    tenancy = Tenancy(site, org_id, workspace_id, alice, bob,
                      TenantRef(directory.create_project(org_id, "app", "eu").id, "eu", org_id),
                      TenantRef(directory.create_project(org_id, "glob", "global",
                                                         per_request_residency=True).id,
                                "global", org_id), canary, file_bytes)
    for who, grant in (("alice", alice), ("bob", bob)):
        conversation = conversations.create(grant, title=f"{who} chat")
        first = conversations.add_message(grant, conversation.id, role="user",
                                          content=f"{who} asks {canary}", parent_id=None)
        conversations.add_message(grant, conversation.id, role="assistant",
                                  content="first answer", parent_id=first.id)
        # A regenerated answer: a second branch under the same prompt.
        conversations.add_message(grant, conversation.id, role="assistant",
                                  content="second answer", parent_id=first.id)
        upload = files.add(grant, f"{who}-notes.txt", file_bytes)
        gpt = gpts.create(grant, name=f"{who} gpt", instructions=f"be {canary}",
                          model="dev-echo", file_ids=[upload.id])
        tenancy.ids |= {f"{who}_conversation": conversation.id, f"{who}_message": first.id,
                        f"{who}_file": upload.id, f"{who}_gpt": gpt.id}
    response = {"id": "resp_1", "object": "response", "output_text": f"said {canary}"}
    store.put_record(tenancy.project, RESPONSE_KIND, "resp_1", json.dumps(response).encode())
    store.put_blob(tenancy.project, API_FILE_KIND, "file_api1", "data.jsonl",
                   [f'{{"x": "{canary}"}}\n'.encode()])
    site.store("us").put_record(tenancy.global_project, RESPONSE_KIND, "resp_g",
                                json.dumps({"id": "resp_g", "text": canary}).encode())
    return tenancy


@pytest.fixture
def tenancy(make_site: SiteFactory) -> Tenancy:
    return fill(make_site("sqlite"))


def exporter(site: Site) -> Exporter:
    return Exporter(site.directory, site.store, list(site.settings.regions))


def read_export(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, every other entry's bytes), each entry checked against its manifest line."""
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        contents = {name: archive.read(name) for name in archive.namelist()
                    if name != "manifest.json"}
    assert sorted(contents) == sorted(entry["path"] for entry in manifest["entries"])
    for entry in manifest["entries"]:
        data = contents[entry["path"]]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
        assert len(data) == entry["size"]
    return manifest, contents


def entry(manifest: dict[str, Any], **match: str) -> dict[str, Any]:
    found = [e for e in manifest["entries"] if all(e.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_an_org_export_holds_every_content_type_decrypted(tenancy: Tenancy,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "acme.zip"
    summary = exporter(tenancy.site).export("org", tenancy.org_id, out)
    manifest, contents = read_export(out)
    ws, ids = tenancy.workspace_id, tenancy.ids

    assert manifest["format"] == "domicile-export" and manifest["scope_id"] == tenancy.org_id
    assert {t["id"] for t in manifest["tenants"]} == {
        ws, tenancy.project.id, tenancy.global_project.id}
    # A conversation with every message of both branches, parents kept.
    conversation = json.loads(contents[
        entry(manifest, id=ids["alice_conversation"])["path"]])
    assert conversation["title"] == "alice chat"
    assert conversation["member"] == tenancy.alice.user_id
    by_content = {m["content"]: m for m in conversation["messages"]}
    assert set(by_content) == {f"alice asks {tenancy.canary}", "first answer", "second answer"}
    root = by_content[f"alice asks {tenancy.canary}"]
    assert root["parent_id"] is None
    assert by_content["first answer"]["parent_id"] == root["id"]
    assert by_content["second answer"]["parent_id"] == root["id"]
    assert conversation["current_message_id"] == by_content["second answer"]["id"]
    # A file: its exact bytes, under its name.
    upload = entry(manifest, id=ids["alice_file"], kind="ws-file")
    assert upload["path"] == f"{ws}/eu/files/{ids['alice_file']}/alice-notes.txt"
    assert contents[upload["path"]] == tenancy.file_bytes
    assert upload["data_class"] == "files" and upload["media_type"] == "text/plain"
    assert upload["member"] == tenancy.alice.user_id
    text = entry(manifest, id=ids["alice_file"], kind="ws-file-text")
    assert text["path"] == f"{ws}/eu/file-texts/{ids['alice_file']}.txt"
    assert tenancy.canary in contents[text["path"]].decode()
    # A GPT: instructions, model, knowledge file ids.
    gpt = json.loads(contents[entry(manifest, id=ids["alice_gpt"], data_class="gpts")["path"]])
    assert (gpt["instructions"], gpt["model"], gpt["file_ids"]) == (
        f"be {tenancy.canary}", "dev-echo", [ids["alice_file"]])
    # Stored responses, in the project's region and in every region of a global project.
    response = entry(manifest, id="resp_1")
    assert response["region"] == "eu" and response["data_class"] == "stored responses"
    assert json.loads(contents[response["path"]])["output_text"] == f"said {tenancy.canary}"
    assert entry(manifest, id="resp_g")["region"] == "us"
    # An API file's original bytes.
    api_file = entry(manifest, id="file_api1")
    assert contents[api_file["path"]] == f'{{"x": "{tenancy.canary}"}}\n'.encode()
    assert api_file["path"].endswith("/api-files/file_api1/data.jsonl")

    assert summary.entries == len(manifest["entries"])
    assert summary.counts["conversations"] == 2 and summary.counts["gpts"] == 2
    assert summary.regions == ["eu", "us"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "a\\b", "\x00\n", ""])
def test_a_chosen_name_stays_one_path_segment(name: str) -> None:
    cleaned = safe_name(name)
    assert cleaned and "/" not in cleaned and "\\" not in cleaned
    assert not cleaned.startswith(".") and cleaned.isprintable()


def test_a_workspace_export_holds_only_that_workspace(tenancy: Tenancy, tmp_path: Path) -> None:
    out = tmp_path / "ws.zip"
    exporter(tenancy.site).export("workspace", tenancy.workspace_id, out)
    manifest, _ = read_export(out)
    assert {e["tenant"] for e in manifest["entries"]} == {tenancy.workspace_id}
    assert {e["data_class"] for e in manifest["entries"]} == {"conversations", "gpts", "files"}


def test_the_export_is_audited_in_each_region_read_with_counts_only(tenancy: Tenancy,
                                                                   tmp_path: Path) -> None:
    exporter(tenancy.site).export("org", tenancy.org_id, tmp_path / "acme.zip")
    for region in ("eu", "us"):
        with tenancy.site.store(region).engine.connect() as conn:
            rows = conn.execute(select(AUDIT_LOG).where(AUDIT_LOG.c.action == "export")).all()
        assert [(row.target, row.chain) for row in rows] == [(tenancy.org_id, region)]
        assert tenancy.canary not in rows[0].details
        assert json.loads(rows[0].details)["entries"] > 0


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    """An empty folder for exports (the site lives in tmp_path too)."""
    folder = tmp_path / "exports"
    folder.mkdir()
    return folder


def test_an_existing_file_is_never_overwritten(tenancy: Tenancy, exports: Path) -> None:
    out = exports / "taken.zip"
    out.write_bytes(b"mine")
    with pytest.raises(InvalidInput):
        exporter(tenancy.site).export("org", tenancy.org_id, out)
    assert out.read_bytes() == b"mine"
    assert list(exports.iterdir()) == [out]


def test_a_file_made_during_the_export_is_kept(tenancy: Tenancy, exports: Path) -> None:
    out = exports / "acme.zip"

    def someone_writes(done: int, _total: int) -> None:
        if done == 1:
            out.write_bytes(b"theirs")

    with pytest.raises(InvalidInput):
        exporter(tenancy.site).export("org", tenancy.org_id, out, progress=someone_writes)
    assert out.read_bytes() == b"theirs"
    assert list(exports.iterdir()) == [out]


def test_a_failed_export_leaves_nothing(tenancy: Tenancy, exports: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = tenancy.site.store("eu")
    tenancy.site.store("eu").blobs.delete

    def broken(*_args: object) -> Iterator[bytes]:
        yield b"a first chunk"
        raise OSError("disk read error")

    monkeypatch.setattr(store, "open_blob", broken)
    with pytest.raises(OSError, match="disk read error"):
        exporter(tenancy.site).export("org", tenancy.org_id, exports / "acme.zip")
    assert list(exports.iterdir()) == []


def test_a_large_file_is_streamed_with_flat_memory(make_site: SiteFactory,
                                                   tmp_path: Path) -> None:
    site = make_site("sqlite")
    org_id = site.directory.create_org("Big").id
    project = TenantRef(site.directory.create_project(org_id, "big", "eu").id, "eu", org_id)
    piece = bytes(range(256)) * 256  # 64 KiB
    size = 64 << 20

    def chunks() -> Iterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    site.store("eu").put_blob(project, API_FILE_KIND, "file_big", "big.bin", chunks())
    out = tmp_path / "big.zip"
    tracemalloc.start()
    try:
        exporter(site).export("org", org_id, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak:,} bytes for a {size:,}-byte file"
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        big = entry(manifest, id="file_big")
        digest = hashlib.sha256()
        with archive.open(big["path"]) as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    expected = hashlib.sha256()
    for block in chunks():
        expected.update(block)
    assert big["size"] == size and digest.hexdigest() == expected.hexdigest() == big["sha256"]
