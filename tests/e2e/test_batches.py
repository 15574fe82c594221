"""The Batch API end to end: the official `openai` SDK against a real `domicile serve`.

A batch of 1,000 chat requests completes with its output file; a batch interrupted by a
server restart (stopped while lines wait at the upstream's gate) finishes after the next start
with every line exactly once in its files; batch input and output files of a regional project
are kept sealed (a canary is nowhere on disk, in logs or temp folders), and a zero-retention
project is refused (G4) without its canary landing anywhere either.

One served site for the module (the restart replaces its server); tests run in file order,
the canary scan last.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme
from openai.types import Batch

from tests.conftest import scan_for_canary
from tests.e2e.conftest import MODEL, Deployment, deployed
from tests.e2e.harness import Server
from tests.gateway.support import jsonl_file, wait_for_batch
from tests.gateway.upstream import FakeUpstream

DEADLINE_S = 180.0
CANARY = f"BATCH-CANARY-{secrets.token_hex(16)}"


class Served:
    """The module's deployment, and every server it ran (their logs and temp folders are
    scanned for canaries too)."""

    def __init__(self, deployment: Deployment, root: Path) -> None:
        self.deployment = deployment
        self.root = root
        self.servers = [deployment.server]

    def restart(self) -> None:
        self.deployment.server.stop()
        server = Server(self.deployment.site, self.root / f"server-{len(self.servers)}")
        self.servers.append(server)
        self.deployment.server = server
        server.wait_ready()

    def places(self) -> list[Path]:
        return [self.deployment.site.root, *(p for s in self.servers
                                             for p in (s.log_path, s.tmpdir))]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           upstreams: tuple[dict[str, FakeUpstream], trustme.CA]) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("batches")
    with deployed(root, upstreams) as deployment:
        yield Served(deployment, root)


@pytest.fixture
def live(served: Served) -> Served:
    served.deployment.reset()
    return served


def chat_line(custom_id: str, model: str = MODEL, content: str = "hello") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}]}}


def submit(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Batch:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")


def wait_for(client: openai.OpenAI, batch_id: str,
             done: Callable[[Batch], bool] | None = None) -> Batch:
    batch: Batch = wait_for_batch(client, batch_id, done, deadline_s=DEADLINE_S)
    return batch


lines_of = jsonl_file


def test_a_batch_of_1000_chat_requests_completes_with_its_output_file(live: Served) -> None:
    client = live.deployment.client("eu_regional")
    ids = [f"request-{i:04d}" for i in range(1000)]
    batch = submit(client, [chat_line(i, content=f"question {i}") for i in ids])
    done = wait_for(client, batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (1000, 1000)
    output = lines_of(client, done.output_file_id)
    assert Counter(line["custom_id"] for line in output) == Counter(ids)  # each once
    for line in output:
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"].endswith(
            f"question {line['custom_id']}")
    received = [r for u in live.deployment.upstreams.values() for r in u.received]
    assert len(received) == 1000 and not live.deployment.upstreams["us-a"].received


def test_a_batch_interrupted_by_a_restart_finishes_with_no_line_lost_or_repeated(
        live: Served) -> None:
    client = live.deployment.client("eu_regional")
    gate = threading.Event()
    for name in ("eu-a", "eu-b"):  # every upstream line waits at the gate until we let go
        live.deployment.upstreams[name].behaviour.hold = gate
    instant = [chat_line(f"echo-{i}", "dev-echo", f"echo {i}") for i in range(30)]
    held = [chat_line(f"held-{i}", MODEL, f"held {i}") for i in range(30)]
    try:
        batch = submit(client, instant + held)
        before = wait_for(client, batch.id, lambda b: b.request_counts is not None
                          and b.request_counts.completed >= 30
                          and live.deployment.upstreams["eu-a"].holding > 0)
        assert before.status == "in_progress"
        assert before.request_counts is not None and before.request_counts.completed < 60
        live.deployment.server.stop()  # mid-batch: lines wait upstream, others never began
    finally:
        gate.set()
    live.deployment.reset()  # the gate open, what the upstreams saw forgotten
    live.restart()
    client = live.deployment.client("eu_regional")
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (60, 0)
    assert done.error_file_id is None
    results = lines_of(client, done.output_file_id)
    assert Counter(line["custom_id"] for line in results) == Counter(
        line["custom_id"] for line in instant + held)
    assert all(line["response"]["status_code"] == 200 for line in results)
    # After the restart only what was not done ran, each line once.
    resent = Counter(json.loads(r.body)["messages"][0]["content"]
                     for u in live.deployment.upstreams.values() for r in u.received)
    assert resent and set(resent) <= {f"held {i}" for i in range(30)}
    assert max(resent.values()) == 1


def test_zero_retention_is_refused(live: Served) -> None:
    client = live.deployment.client("eu_zero")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id="file-abc", endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"note": CANARY})
    assert refused.value.code == "zero_retention"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", json.dumps(chat_line(CANARY)).encode()),
                            purpose="batch")
    listing = httpx.get(live.deployment.site.url("eu") + "/v1/batches",
                        headers={"Authorization": f"Bearer {live.deployment.keys['eu_zero']}"})
    assert listing.status_code == 400 and listing.json()["error"]["code"] == "zero_retention"


def test_batch_files_are_kept_sealed_in_region(live: Served) -> None:
    """Last in the module: it stops the server to scan every file the site wrote."""
    client = live.deployment.client("eu_regional")
    batch = submit(client, [chat_line(f"c{i}", content=f"{CANARY} {i}") for i in range(20)])
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    output = client.files.content(done.output_file_id or "").text
    assert output.count(CANARY) == 20  # the answers echo it: output holds content
    assert CANARY in client.files.content(batch.input_file_id).text
    live.deployment.server.stop()
    assert scan_for_canary(live.places(), CANARY) == []
    # Every batch row and file of the module (parts, markers, outputs) opens in its region.
    verified = live.deployment.site.cli("residency", "verify")
    assert verified["violations"] == [] and verified["records"] > 0
    us_blobs = [p for p in (live.deployment.site.root / "us" / "blobs").rglob("*")
                if p.is_file()]
    assert us_blobs == []
