"""G4 and G5 end to end, with canaries.

G4: a zero-retention project's content goes through every endpoint (streaming included,
errors included) and no byte of it reaches the data folder, the server's log or its temp
folder, in plain, hex or base64 form. G5: a regional project's files and stored responses
are kept, readable through the API, and still absent from the disk in plaintext.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from tests.conftest import scan_for_canary
from tests.e2e.conftest import MODEL, Deployment, deployed
from tests.gateway.upstream import FakeUpstream


@pytest.fixture
def fresh(tmp_path: Path,
          upstreams: tuple[dict[str, FakeUpstream], trustme.CA]) -> Iterator[Deployment]:
    with deployed(tmp_path, upstreams) as deployment:
        deployment.reset()
        yield deployment


def send_canary_everywhere(deployed: Deployment, canary: str) -> None:
    client = deployed.client("eu_zero")
    messages = [{"role": "user", "content": f"my secret is {canary}"}]
    for model in (MODEL, "dev-echo"):
        client.chat.completions.create(model=model, messages=messages)
        for _chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
            pass
    # the content did travel: the in-region upstreams saw it
    assert any(canary.encode() in r.body for u in deployed.upstreams.values() for r in u.received)
    client.embeddings.create(model="all-minilm-l6-v2", input=[canary, f"about {canary}"])
    client.embeddings.create(model="dev-echo", input=canary)
    client.images.generate(model="dev-echo", prompt=canary)
    client.responses.create(model="dev-echo", input=canary)
    client.responses.create(model="dev-echo", instructions=canary, input="hello")
    # refusals and failures carry the canary in their requests too
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="dev-echo", messages=messages, store=True)
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=(f"{canary}.txt", canary.encode()), purpose="assistants")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=messages)
    deployed.upstreams["eu-a"].behaviour.mode = "fail"
    deployed.upstreams["eu-b"].behaviour.mode = "drop"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=messages)
    deployed.reset()
    bad_json = httpx.post(deployed.site.url("eu") + "/v1/chat/completions",
                          content=b'{"model": "dev-echo", "messages": [' + canary.encode(),
                          headers={"Authorization": f"Bearer {deployed.keys['eu_zero']}",
                                   "Content-Type": "application/json"})
    assert bad_json.status_code == 400
    wrong_door = httpx.post(deployed.site.url("us") + "/v1/chat/completions",
                            json={"model": MODEL, "messages": messages},
                            headers={"Authorization": f"Bearer {deployed.keys['eu_zero']}"})
    assert wrong_door.status_code == 403


def test_zero_retention_content_reaches_no_disk(fresh: Deployment) -> None:
    canary = f"ZDR-CANARY-{secrets.token_hex(16)}"
    send_canary_everywhere(fresh, canary)
    fresh.server.stop()  # flush usage and logs, close every file
    usage = fresh.site.cli("usage", "--project", fresh.projects["eu_zero"])
    assert usage["totals"]["requests"] >= 10
    assert scan_for_canary(fresh.places(), canary) == []


def test_the_scan_would_catch_a_leak(fresh: Deployment) -> None:
    """Control: the same scan finds a canary planted, hex-encoded, in the server's temp folder."""
    canary = f"ZDR-CANARY-{secrets.token_hex(16)}"
    fresh.server.stop()
    (fresh.server.tmpdir / "leak.bin").write_bytes(b"x" + canary.encode().hex().encode())
    assert scan_for_canary(fresh.places(), canary)


def test_regional_content_is_kept_encrypted_in_region(fresh: Deployment) -> None:
    canary = f"G5-CANARY-{secrets.token_hex(16)}"
    client = fresh.client("eu_regional")
    uploaded = client.files.create(file=("notes.txt", f"file says {canary}".encode() * 1000),
                                   purpose="assistants")
    assert canary in client.files.content(uploaded.id).text
    stored = client.responses.create(model="dev-echo", input=f"remember {canary}", store=True)
    again = client.responses.retrieve(stored.id)
    assert canary in again.output_text
    fresh.server.stop()
    assert scan_for_canary(fresh.places(), canary) == []
    eu_blobs = [p for p in (fresh.site.root / "eu" / "blobs").rglob("*") if p.is_file()]
    us_blobs = [p for p in (fresh.site.root / "us" / "blobs").rglob("*") if p.is_file()]
    assert eu_blobs and not us_blobs  # kept in the project's region only
