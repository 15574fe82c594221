"""The chat workspace through its JSON API on a real `domicile serve` (the e2e deployment):
the contract's endpoints, isolation between workspaces (404, never 403), the wrong door (G3),
sign-in (cookie flags, a new session id, CSRF, throttling), bad uploads with nothing stored,
streaming with a stop that keeps the partial reply, vision and knowledge (G2: only in-region
providers), and a canary that is nowhere in plain text (G5).

`dev-echo` (a deterministic stand-in, not a model) answers where a test is about the
platform; the loopback upstream `llama-test` where a test needs to see what a provider got.
"""

from __future__ import annotations

import io
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, PngImagePlugin
from sqlalchemy import create_engine, text

from tests.conftest import scan_for_canary
from tests.e2e.conftest import MODEL, Deployment
from tests.e2e.harness import Server, Site, init_site
from tests.pgserver import ThrowawayPostgres
from tests.raw_http import parse_head

pytestmark = pytest.mark.e2e

STAND_IN = "dev-echo"  # deterministic stand-in, not a model
PASSWORD = "correct horse battery staple"


@dataclass
class Member:
    workspace: str
    user: str
    email: str
    token: str
    region: str


@dataclass
class Workspaces:
    first: Member  # eu
    colleague: Member  # eu, same workspace as `first`
    second: Member  # eu, another workspace of the same org
    us: Member  # us


def _member(deployment: Deployment, workspace: str, region: str, role: str = "owner") -> Member:
    email = f"{secrets.token_hex(4)}@example.com"
    site = deployment.site
    user = site.cli("user", "add", "--workspace", workspace, "--email", email, "--role", role,
                    "--password-stdin", stdin=PASSWORD + "\n")["id"]
    token = site.cli("token", "create", "--workspace", workspace, "--user", user)["token"]
    return Member(workspace, user, email, token, region)


@pytest.fixture(scope="module")
def workspaces(deployment: Deployment) -> Workspaces:
    site = deployment.site

    def workspace(region: str) -> str:
        return str(site.cli("workspace", "create", "--org", deployment.org, "--name", "Team",
                            "--region", region)["id"])

    first = workspace("eu")
    return Workspaces(_member(deployment, first, "eu"),
                      _member(deployment, first, "eu", "member"),
                      _member(deployment, workspace("eu"), "eu"),
                      _member(deployment, workspace("us"), "us"))


def api(deployment: Deployment, member: Member | None, region: str = "eu") -> httpx.Client:
    headers = {"authorization": f"Bearer {member.token}"} if member else {}
    return httpx.Client(base_url=deployment.site.url(region) + "/workspace/api",
                        headers=headers, timeout=60)


def png(text: str = "", side: int = 8) -> bytes:
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("Comment", text)
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def upload(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return client.post("/files", files={"file": (name, data)})


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


def head_only(live: Deployment, member: Member, length: int, *, region: str = "eu",
              path: str = "/files") -> tuple[int, Any]:
    """A POST that declares `length` bytes of body and sends only a few: the answer must come
    from the head alone, or this waits for it in vain (a raw socket: httpx will not send a
    body shorter than its length)."""
    port = int(live.site.url(region).rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            f"POST /workspace/api{path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            f"authorization: Bearer {member.token}\r\n"
            f"content-type: multipart/form-data; boundary=b\r\n"
            f"content-length: {length}\r\n\r\n--b\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < int(
                parse_head(received.partition(b"\r\n\r\n")[0])[1]["content-length"]):
            data = sock.recv(65536)
            assert data, "the server closed without answering"
            received += data
    head, _, body = received.partition(b"\r\n\r\n")
    return parse_head(head)[0], json.loads(body)


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


# -- the contract ------------------------------------------------------------------------------

def test_contract_endpoints_chat_files_gpts(live: Deployment, workspaces: Workspaces) -> None:
    with api(live, workspaces.first) as client:
        me = client.get("/me").json()
        assert me["id"] == workspaces.first.user and me["workspace"]["region"] == "eu"
        assert "European Union" in me["workspace"]["statement"]
        created = client.post("/conversations")
        assert created.status_code == 201
        conversation = created.json()["id"]
        reply = client.post(f"/conversations/{conversation}/messages",
                            json={"content": "hello there", "model": STAND_IN})
        assert reply.status_code == 200, reply.text
        assert reply.json()["role"] == "assistant" and reply.json()["status"] == "complete"
        assert "hello there" in reply.json()["content"]
        shown = client.get(f"/conversations/{conversation}").json()
        assert [m["role"] for m in shown["messages"]] == ["user", "assistant"]
        assert shown["title"] == "hello there"
        stored = upload(client, "notes.md", b"# Notes\nsome text")
        assert stored.status_code == 201, stored.text
        file_id = stored.json()["id"]
        assert stored.json()["media_type"] == "text/markdown"
        assert client.get(f"/files/{file_id}/content").content == b"# Notes\nsome text"
        gpt = client.post("/gpts", json={"name": "Helper", "instructions": "Be brief.",
                                         "model": STAND_IN, "file_ids": [file_id]})
        assert gpt.status_code == 201, gpt.text
        assert client.get(f"/gpts/{gpt.json()['id']}").json()["file_ids"] == [file_id]
        listed = client.get("/conversations").json()["data"]
        assert listed[0]["id"] == conversation


def test_reply_streams_as_server_sent_events(live: Deployment, workspaces: Workspaces) -> None:
    with api(live, workspaces.first) as client:
        conversation = client.post("/conversations").json()["id"]
        with client.stream("POST", f"/conversations/{conversation}/messages",
                           json={"content": "one two three four", "model": STAND_IN,
                                 "stream": True}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = list(sse_events(response))
        kinds = [event["type"] for event in events]
        assert kinds[0] == "message.created" and kinds[-1] == "reply.completed"
        assert kinds.count("reply.delta") >= 2
        text = "".join(e["delta"] for e in events if e["type"] == "reply.delta")
        assert text == events[-1]["message"]["content"] == "one two three four"


def test_a_client_that_leaves_mid_reply_keeps_it_as_stopped(
        live: Deployment, workspaces: Workspaces) -> None:
    live.upstreams["eu-a"].behaviour.then = "stall"
    with api(live, workspaces.first) as client:
        conversation = client.post("/conversations").json()["id"]
        with client.stream("POST", f"/conversations/{conversation}/messages",
                           json={"content": "tell me more", "model": MODEL,
                                 "stream": True}) as response:
            for event in sse_events(response):
                if event["type"] == "reply.delta":
                    break  # leave after the first words
        assert live.upstreams["eu-a"].stream_cancelled.wait(20), "the upstream was not closed"
        for _ in range(200):
            messages = client.get(f"/conversations/{conversation}").json()["messages"]
            if len(messages) == 2:
                break
            live.upstreams["eu-a"].stream_cancelled.wait(0.05)
        assert messages[1]["status"] == "stopped"
        assert messages[1]["content"].startswith("eu-a")


def test_no_in_region_provider_leaves_nothing_and_never_asks_us(
        live: Deployment, workspaces: Workspaces) -> None:
    for name in ("eu-a", "eu-b"):
        live.upstreams[name].behaviour.mode = "fail"
    with api(live, workspaces.first) as client:
        conversation = client.post("/conversations").json()["id"]
        answer = client.post(f"/conversations/{conversation}/messages",
                             json={"content": "hi", "model": MODEL, "stream": True})
        assert answer.status_code == 503 and error_code(answer) == "no_in_region_provider"
        assert client.get(f"/conversations/{conversation}").json()["messages"] == []
    assert live.upstreams["us-a"].received == []


# -- isolation and the wrong door ----------------------------------------------------------------

def test_another_workspace_gets_404_for_every_id(live: Deployment,
                                                 workspaces: Workspaces) -> None:
    with api(live, workspaces.first) as client:
        conversation = client.post("/conversations").json()["id"]
        file_id = upload(client, "a.txt", b"private").json()["id"]
        gpt = client.post("/gpts", json={"name": "G", "instructions": "i", "model": STAND_IN,
                                         "sharing": "workspace"}).json()["id"]
    paths = [f"/conversations/{conversation}", f"/files/{file_id}",
             f"/files/{file_id}/content", f"/gpts/{gpt}"]
    with api(live, workspaces.second) as other:
        for path in paths:
            answer = other.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["error"]["code"] in ("not_found",)
        assert other.delete(f"/conversations/{conversation}").status_code == 404
        assert other.post(f"/conversations/{conversation}/messages",
                          json={"content": "x", "model": STAND_IN}).status_code == 404
    with api(live, workspaces.colleague) as colleague:  # same workspace, not theirs
        assert colleague.get(f"/conversations/{conversation}").status_code == 404
        assert colleague.get(f"/files/{file_id}/content").status_code == 404
        assert colleague.get(f"/gpts/{gpt}").status_code == 200  # shared with the workspace


def test_a_us_token_at_the_eu_url_is_refused_naming_us_before_the_body(
        live: Deployment, workspaces: Workspaces) -> None:
    for path in ("/conversations", "/files", "/gpts"):
        status, answer = head_only(live, workspaces.us, 1024 * 1024, path=path)
        assert status == 403 and answer["error"]["code"] == "wrong_region", path
        assert live.site.url("us") in answer["error"]["message"]


# -- signing in ----------------------------------------------------------------------------------

def sign_in(live: Deployment, member: Member, client: httpx.Client) -> httpx.Response:
    return client.post("/login", json={"email": member.email, "password": PASSWORD,
                                       "workspace_id": member.workspace})


def test_sign_in_sets_safe_cookies_and_a_new_session_id(live: Deployment,
                                                        workspaces: Workspaces) -> None:
    with api(live, None) as browser:
        first = sign_in(live, workspaces.colleague, browser)
        assert first.status_code == 200, first.text
        cookies = first.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("domicile_session_eu="))
        assert "HttpOnly" in session and "SameSite=Lax" in session
        assert "Secure" not in session  # plain http on loopback; TLS adds it
        old = browser.cookies["domicile_session_eu"]
        assert sign_in(live, workspaces.colleague, browser).status_code == 200
        new = browser.cookies["domicile_session_eu"]
        assert new != old
        me = browser.get("/me")
        assert me.status_code == 200 and me.json()["id"] == workspaces.colleague.user
        stale = httpx.get(live.site.url("eu") + "/workspace/api/me",
                          cookies={"domicile_session_eu": old})
        assert stale.status_code == 401  # the session before sign-in ended with it


def test_cookie_requests_that_change_state_need_the_csrf_token(
        live: Deployment, workspaces: Workspaces) -> None:
    with api(live, None) as browser:
        signed = sign_in(live, workspaces.colleague, browser)
        csrf = signed.json()["csrf_token"]
        refused = browser.post("/conversations")
        assert refused.status_code == 403 and error_code(refused) == "csrf_failed"
        accepted = browser.post("/conversations", headers={"x-csrf-token": csrf})
        assert accepted.status_code == 201
        assert browser.get(f"/conversations/{accepted.json()['id']}").status_code == 200


def test_repeated_wrong_passwords_are_throttled(live: Deployment, deployment: Deployment) -> None:
    workspace = deployment.site.cli("workspace", "create", "--org", deployment.org, "--name",
                                    "Throttled", "--region", "eu")["id"]
    member = _member(deployment, workspace, "eu")
    with api(live, None) as browser:
        answers = [browser.post("/login", json={"email": member.email, "password": "wrong!!!1",
                                                "workspace_id": workspace})
                   for _ in range(6)]
        assert [a.status_code for a in answers[:5]] == [401] * 5
        assert answers[5].status_code == 429
        assert int(answers[5].headers["retry-after"]) > 0
        # Even the right password waits now: the throttle comes before the check.
        assert sign_in(live, member, browser).status_code == 429


# -- uploads ------------------------------------------------------------------------------------

def test_bad_uploads_are_refused_with_nothing_stored(live: Deployment,
                                                    workspaces: Workspaces) -> None:
    with api(live, workspaces.second) as client:
        before = client.get("/files").json()["data"]
        disguised = upload(client, "report.pdf", png())
        assert disguised.status_code == 400 and error_code(disguised) == "unsupported_file"
        empty = client.post("/files", content=b"--b--\r\n",
                            headers={"content-type": "multipart/form-data; boundary=b"})
        assert empty.status_code == 400
        status, answer = head_only(live, workspaces.second, 200 * 1024 * 1024)
        assert status == 413 and answer["error"]["param"] == "file"
        two = client.post("/files", files=[("file", ("a.txt", b"a")), ("file", ("b.txt", b"b"))])
        assert two.status_code == 400
        assert client.get("/files").json()["data"] == before


# -- vision, images, knowledge ----------------------------------------------------------------

def test_an_image_for_a_model_without_vision_is_a_400_naming_it(
        live: Deployment, workspaces: Workspaces) -> None:
    with api(live, workspaces.first) as client:
        image = upload(client, "photo.png", png()).json()["id"]
        conversation = client.post("/conversations").json()["id"]
        refused = client.post(f"/conversations/{conversation}/messages",
                              json={"content": "what is this?", "model": MODEL,
                                    "file_ids": [image]})
        assert refused.status_code == 400 and "vision" in refused.json()["error"]["message"]
        assert live.upstreams["eu-a"].received == []
        seen = client.post(f"/conversations/{conversation}/messages",
                           json={"content": "what is this?", "model": STAND_IN,
                                 "file_ids": [image]})
        assert seen.status_code == 200, seen.text


def test_an_image_asked_for_is_stored_as_a_file(live: Deployment,
                                                workspaces: Workspaces) -> None:
    with api(live, workspaces.first) as client:
        conversation = client.post("/conversations").json()["id"]
        reply = client.post(f"/conversations/{conversation}/messages",
                            json={"content": "/image a red boat"}).json()
        [file_id] = reply["file_ids"]
        picture = client.get(f"/files/{file_id}/content")
        assert picture.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert client.get(f"/files/{file_id}").json()["origin"] == "generated"


def test_a_gpt_answers_from_the_passage_only_its_file_holds(
        live: Deployment, workspaces: Workspaces) -> None:
    fact = "The Zephyr reactor in hall 7 is cooled with molten tin at 412 degrees."
    filler = [f"Section {i}: the canteen serves soup on weekday {i}." for i in range(40)]
    live.upstreams["eu-a"].behaviour.echo = "system"
    with api(live, workspaces.first) as client:
        manual = upload(client, "plant-manual.txt", "\n\n".join([*filler, fact]).encode())
        other = upload(client, "menu.txt", "\n\n".join(filler).encode())
        gpt = client.post("/gpts", json={
            "name": "Plant", "instructions": "Answer from the manual.", "model": MODEL,
            "file_ids": [manual.json()["id"], other.json()["id"]]}).json()["id"]
        conversation = client.post("/conversations", json={"gpt_id": gpt}).json()["id"]
        reply = client.post(f"/conversations/{conversation}/messages",
                            json={"content": "How is the reactor in hall 7 cooled?"}).json()
    assert fact in reply["content"]
    assert {"file_id": manual.json()["id"], "name": "plant-manual.txt"} in reply["citations"]
    [asked] = live.upstreams["eu-a"].received
    assert b"molten tin" in asked.body


# -- G5: a canary nowhere in plain text --------------------------------------------------------

def _canary_site(root: Path, backend: str, request: pytest.FixtureRequest) -> tuple[
        Site, list[Path]]:
    """A site whose eu store is on `backend`, and the folders that database writes to."""
    site = init_site(root / "site")
    if backend == "sqlite":
        return site, []
    postgres: ThrowawayPostgres = request.getfixturevalue("postgres_server")
    admin = create_engine(postgres.url().replace("postgresql://", "postgresql+psycopg://"),
                          isolation_level="AUTOCOMMIT")
    database = f"ws_canary_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
        conn.execute(text(f'CREATE DATABASE "{database}_keys"'))
    admin.dispose()
    body = site.config.read_text().replace(
        'database_url = "sqlite:///eu/store.db"',
        f'database_url = "{postgres.url(database)}"\n'
        f'keystore_url = "{postgres.url(database + "_keys")}"')
    site.config.write_text(body)
    return site, [postgres.data]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workspace_content_is_nowhere_in_plain_text(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    canary = "CANARY" + secrets.token_hex(12)
    site, database_files = _canary_site(tmp_path, backend, request)
    server = Server(site, tmp_path)
    try:
        server.wait_ready()
        org = site.cli("org", "create", "--name", "Acme")["id"]
        workspace = site.cli("workspace", "create", "--org", org, "--name", "Canary",
                             "--region", "eu")["id"]
        user = site.cli("user", "add", "--workspace", workspace, "--email", "c@example.com",
                        "--role", "owner", "--password-stdin", stdin=PASSWORD + "\n")["id"]
        token = site.cli("token", "create", "--workspace", workspace, "--user", user)["token"]
        with httpx.Client(base_url=site.url("eu") + "/workspace/api", timeout=60,
                          headers={"authorization": f"Bearer {token}"}) as client:
            conversation = client.post("/conversations",
                                       json={"title": f"title {canary}"}).json()["id"]
            reply = client.post(f"/conversations/{conversation}/messages",
                                json={"content": f"prompt {canary}", "model": STAND_IN})
            assert canary in reply.json()["content"]  # the reply holds it too
            document = upload(client, "doc.txt", f"a file {canary}".encode()).json()["id"]
            assert upload(client, "pic.png", png(canary)).status_code == 201
            knowledge = upload(client, "kb.md", f"knowledge {canary}".encode()).json()["id"]
            gpt = client.post("/gpts", json={
                "name": "Canary GPT", "instructions": f"instructions {canary}",
                "model": STAND_IN, "file_ids": [knowledge]})
            assert gpt.status_code == 201, gpt.text
            assert client.get(f"/files/{document}/content").text == f"a file {canary}"
            shown = client.get(f"/conversations/{conversation}").json()
            assert canary in shown["title"] and canary in shown["messages"][1]["content"]
    finally:
        server.stop()
    places = [site.root, server.log_path, server.tmpdir, *database_files]
    assert not scan_for_canary(places, canary), "the canary is on disk in plain text"
    # Controls: the scan reads the store's own files (the workspace's id, kept in plain text
    # beside the sealed columns, is found there), and finds the canary where it is (a PNG
    # keeps its text chunk as is).
    assert scan_for_canary(database_files or [site.root / "eu"], workspace)
    planted = tmp_path / "planted.png"
    planted.write_bytes(png(canary))
    assert scan_for_canary([planted], canary)


# -- hostile input and HTTP manners ---------------------------------------------------------

HOSTILE_BODIES = {
    "not UTF-8": b'{"content": "\xff\xfe"}',
    "NaN": b'{"content": "x", "stream": NaN}',
    "lone surrogate": b'{"content": "\\ud800"}',
    "too deep": b'{"content": "x", "model": ' + b"[" * 200 + b"]" * 200 + b"}",
    "not an object": b'["content"]',
    "unknown field": b'{"content": "x", "FIELDCANARY": 2}',
    "wrong type": b'{"content": 42}',
    "truncated": b'{"content": "x"',
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_BODIES))
def test_hostile_message_bodies_are_a_400_with_nothing_stored(
        live: Deployment, workspaces: Workspaces, kind: str) -> None:
    with api(live, workspaces.first) as client:
        conversation = client.post("/conversations").json()["id"]
        answer = client.post(f"/conversations/{conversation}/messages",
                             content=HOSTILE_BODIES[kind],
                             headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
        assert "FIELDCANARY" not in answer.text  # a field's name is the client's text
        assert client.get(f"/conversations/{conversation}").json()["messages"] == []
    assert "Traceback" not in live.server.log()


def test_wrong_method_and_unknown_path_answer_in_the_one_error_shape(
        live: Deployment, workspaces: Workspaces) -> None:
    with api(live, workspaces.first) as client:
        wrong = client.put("/conversations")
        assert wrong.status_code == 405 and error_code(wrong) == "method_not_allowed"
        assert set(wrong.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
        for limit in ("%C2%B2", "0", "-1", "1e3"):  # "²" is a digit to str.isdigit
            assert client.get(f"/conversations?limit={limit}").status_code == 400, limit
        missing = client.get("/no-such-thing")
        assert missing.status_code == 404 and error_code(missing) == "not_found"
        document = client.get("/openapi.json").json()
    assert "/workspace/api/conversations/{conversation_id}/messages" in document["paths"]


def test_members_are_managed_by_admins_and_owners_only(live: Deployment,
                                                      deployment: Deployment) -> None:
    workspace = deployment.site.cli("workspace", "create", "--org", deployment.org, "--name",
                                    "Roles", "--region", "eu")["id"]
    owner = _member(deployment, workspace, "eu", "owner")
    admin = _member(deployment, workspace, "eu", "admin")
    plain = _member(deployment, workspace, "eu", "member")
    with api(live, plain) as client:
        assert client.get("/members").status_code == 403
    with api(live, admin) as client:
        assert {m["role"] for m in client.get("/members").json()["data"]} == {
            "owner", "admin", "member"}
        demote = client.patch(f"/members/{owner.user}", json={"role": "member"})
        assert demote.status_code == 403
        assert client.patch(f"/members/{plain.user}", json={"role": "admin"}).status_code == 200
    with api(live, owner) as client:
        roles = {m["id"]: m["role"] for m in client.get("/members").json()["data"]}
        assert roles[owner.user] == "owner" and roles[plain.user] == "admin"
        assert client.delete(f"/members/{plain.user}").status_code == 200
    with api(live, plain) as client:  # removed: their token ends with them, within a second
        assert until(lambda: client.get("/me").status_code == 401), "the token still works"


def until(condition: Callable[[], bool], timeout: float = 15) -> bool:
    """Poll a server's eventual state (a cache's second), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_serve_sweeps_retention_on_its_own(tmp_path: Path) -> None:
    site = init_site(tmp_path / "site")
    with site.config.open("a") as config:
        config.write("\n[workspace]\nretention_sweep_interval_s = 0.2\n")
    org = site.cli("org", "create", "--name", "Acme")["id"]
    workspace = site.cli("workspace", "create", "--org", org, "--name", "Short", "--region",
                         "eu")["id"]
    site.cli("workspace", "retention", workspace, "--days", "30")
    server = Server(site, tmp_path)
    store = create_engine(f"sqlite:///{site.root / 'eu' / 'store.db'}")

    def swept() -> bool:
        with store.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM audit_log WHERE action = 'retention.sweep' "
                "AND target = :ws"), {"ws": workspace}).scalar())

    try:
        server.wait_ready(("eu",))
        assert until(swept), "serve did not sweep"
    finally:
        server.stop()
        store.dispose()


def test_replies_are_counted_per_member_for_admins(live: Deployment,
                                                  workspaces: Workspaces) -> None:
    with api(live, workspaces.colleague) as colleague:
        conversation = colleague.post("/conversations").json()["id"]
        assert colleague.post(f"/conversations/{conversation}/messages",
                              json={"content": "count me", "model": STAND_IN}).status_code == 200
        assert colleague.get("/usage").status_code == 403  # members see no one's usage

    def counted() -> bool:
        with api(live, workspaces.first) as owner:
            rows = {row["user_id"]: row for row in owner.get("/usage").json()["data"]}
        return rows[workspaces.colleague.user]["messages"] >= 1

    assert until(counted), "the reply was not counted"
