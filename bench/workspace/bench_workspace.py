"""Workspace benchmark: the chat workspace's read paths, its streamed replies and GPT retrieval,
on SQLite and on PostgreSQL.

    .venv/bin/python bench/workspace/bench_workspace.py [--backends sqlite,postgresql]
        [--iterations 400] [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--no-write] [--json]

For each backend, on a fresh site made with `domicile init` (its directory and eu store moved
to a new PostgreSQL database for `postgresql`):

1. **open**: `Conversations.get` of one conversation of 1,000 messages (target < 30 ms);
2. **list**: `Conversations.list(limit=50)` of a member with 10,000 conversations (< 10 ms);
3. **TTFB**: a real `domicile serve --region eu` in front of one loopback fake upstream
   (`tests/gateway/upstream.py`, in its own process): time to the first streamed byte of a
   workspace reply vs of the gateway's own `/v1/chat/completions` stream, interleaved
   request by request on keep-alive raw sockets; the difference is what the workspace adds
   (target: < 2 ms);
4. **retrieval**: `Knowledge.search` over a GPT of 2,000 knowledge passages with the real
   `local-embeddings` model (< 20 ms), split into query embedding and the search itself.

Data is seeded in bulk: rows sealed with `RegionalStore.seal` exactly as the services seal
them, inserted in one transaction; knowledge through `FileStore.add` and `Knowledge.index`
(the passages are embedded once and reused for the second backend).

PostgreSQL: `--postgres-url` or DOMICILE_TEST_POSTGRES_URL (an admin URL; a database is
created and dropped), else a throwaway server (`tests/pgserver.py`; it runs without fsync).
Writes a "Workspace" section into `bench/RESULTS.md` (the rest of the file is kept) and raw
data to `bench/out/workspace.json`. Only 127.0.0.1 is contacted; every process started here
is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
OUT = BENCH / "out"
DOMICILE = ROOT / ".venv" / "bin" / "domicile"
sys.path.insert(0, str(ROOT))  # bench.sections, tests.e2e.harness, tests.pgserver, ...

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from bench.sections import RESULTS_MD, write_section  # noqa: E402
from sqlalchemy import insert, select, text  # noqa: E402
from tests.e2e.harness import free_port_pair  # noqa: E402
from tests.pgserver import PostgresDatabases, ThrowawayPostgres  # noqa: E402

from domicile.config import load_settings  # noqa: E402
from domicile.inference.embeddings import Embedder  # noqa: E402
from domicile.inference.providers import build_providers  # noqa: E402
from domicile.inference.routing import ModelRouter  # noqa: E402
from domicile.site import Site, init_site  # noqa: E402
from domicile.storage.regional import RegionalStore  # noqa: E402
from domicile.tenancy.grants import MemberGrant  # noqa: E402
from domicile.tenancy.secrets import new_id  # noqa: E402
from domicile.workspace.conversations import (  # noqa: E402
    MESSAGE_COLUMNS,
    MESSAGE_KIND,
    SUMMARY_COLUMNS,
    TITLE_KIND,
    Conversations,
)
from domicile.workspace.files import FileStore  # noqa: E402
from domicile.workspace.gpts import Gpts  # noqa: E402
from domicile.workspace.knowledge import Knowledge  # noqa: E402
from domicile.workspace.models import ConversationRow, MessageRow  # noqa: E402

MODEL = "bench-model"
TARGETS_MS = {"open": 30.0, "list": 10.0, "ttfb_added": 2.0, "retrieval": 20.0}
MESSAGES = 1_000
CONVERSATIONS = 10_000
PASSAGES = 2_000
KNOWLEDGE_FILES = 20  # 100 passages each
PROMPT_CHARS, REPLY_CHARS = 300, 2_000
CORE_LOAD, CORE_SERVER = 0, 1  # as bench/gateway: the server alone on core 1
UPSTREAM_NAME = "bench"

WORDS = ("water", "soil", "tomato", "sun", "harvest", "invoice", "tax", "filing", "penalty",
         "refund", "engine", "piston", "torque", "gearbox", "valve", "patient", "dose", "clinic",
         "symptom", "therapy", "contract", "clause", "liability", "tenant", "lease", "network",
         "router", "packet", "latency", "server", "river", "bridge", "concrete", "steel", "beam",
         "recipe", "flour", "oven", "yeast", "dough", "budget", "forecast", "revenue", "margin",
         "audit")
QUESTIONS = [
    "How often should tomatoes be watered?", "When is the income tax return due?",
    "What torque does the gearbox bolt need?", "Which dose is safe for a child?",
    "Who is liable when the tenant breaks the lease?", "Why is the network latency high?",
    "How thick must the concrete beam be?", "How long should bread dough rise?",
    "What margin does the forecast assume?", "What happens after a late filing?",
    "How do I replace a leaking valve?", "What does the audit check first?",
]


def log(msg: str) -> None:
    print(f"[bench-workspace {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def summary(samples_s: Sequence[float]) -> dict[str, float]:
    """Median, p95 (nearest rank), min and max in milliseconds."""
    ms = sorted(v * 1e3 for v in samples_s)
    rank = max(1, math.ceil(0.95 * len(ms)))
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p95_ms": ms[rank - 1],
            "min_ms": ms[0], "max_ms": ms[-1]}


def timed(call: Callable[[], Any], count: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def prose(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        out.append(sentence(rng, rng.randint(6, 16)))
        size += len(out[-1]) + 1
    return " ".join(out)[:chars]


# -------------------------------------------------------------------------------- sites


@dataclass
class Backend:
    name: str  # sqlite | postgresql
    config: Path
    note: str  # what the database is, for the report


class Postgres(PostgresDatabases):
    """Databases on an admin URL's server (given, or a throwaway server's), dropped at the
    end, and what the report says of the server."""

    def __init__(self, admin_url: str | None) -> None:
        self._server: ThrowawayPostgres | None = None
        if admin_url is None:
            self._server = ThrowawayPostgres()
            self._server.start()
            admin_url = str(self._server.url())
            self.where = "throwaway server (tests/pgserver.py, fsync off)"
        else:
            self.where = "server at " + admin_url.split("@")[-1]
        super().__init__(admin_url, prefix="bench_ws")
        with self._admin.connect() as conn:
            self.version = str(conn.scalar(text("SHOW server_version")))
            self.fsync = str(conn.scalar(text("SHOW fsync")))
            self.synchronous_commit = str(conn.scalar(text("SHOW synchronous_commit")))

    def close(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()


def make_site(root: Path, backend: str, postgres: Postgres | None, port: int) -> Backend:
    settings = init_site(root, port_base=port)
    config = settings.config_path
    body = config.read_text()
    note = "SQLite file (the default `domicile init` site)"
    if backend == "postgresql":
        assert postgres is not None
        body = body.replace('"sqlite:///directory.db"', f'"{postgres.create("dir")}"')
        body = body.replace('"sqlite:///eu/store.db"', f'"{postgres.create("eu")}"')
        note = (f"PostgreSQL {postgres.version}, {postgres.where}; fsync={postgres.fsync}, "
                f"synchronous_commit={postgres.synchronous_commit}")
    upstream_port = int(os.environ["BENCH_WS_UPSTREAM_PORT"])
    provider = (f'\n[[regions.eu.providers]]\nname = "{UPSTREAM_NAME}"\n'
                f'kind = "openai-compatible"\nbase_url = "http://127.0.0.1:{upstream_port}/v1"\n'
                f'models = ["{MODEL}"]\ntimeout_s = 10\n')
    body = body.replace("\n[regions.us]", provider + "\n[regions.us]", 1)
    # Thousands of messages a minute from one member: the limiter must not answer 429.
    body += "\n[workspace]\nmessages_per_minute = 100000\n"
    config.write_text(body)
    return Backend(backend, config, note)


def member_of(site: Site, org_id: str, name: str) -> MemberGrant:
    directory = site.directory
    workspace = directory.create_workspace(org_id, name, "eu")
    user = directory.add_user(workspace.id, f"{name}@example.com", "owner",
                              "correct horse battery staple")
    return MemberGrant(workspace.id, org_id, user.id, workspace.region, "owner")


# -------------------------------------------------------------------------------- seeding


def seed_long_conversation(store: RegionalStore, member: MemberGrant, rng: random.Random
                           ) -> str:
    """One conversation of 1,000 messages (user/assistant turns, one branch), sealed as
    `Conversations.add_message` seals them, inserted in one transaction."""
    tenant = member.tenant
    conversation_id = new_id("conv")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    rows: list[dict[str, Any]] = []
    parent: str | None = None
    for seq in range(1, MESSAGES + 1):
        role = "user" if seq % 2 else "assistant"
        message_id = new_id("msg")
        body = json.dumps({
            "content": prose(rng, PROMPT_CHARS if role == "user" else REPLY_CHARS),
            "model": MODEL, "gpt_id": None, "file_ids": [], "citations": [],
        }).encode()
        rows.append({
            "id": message_id, "conversation_id": conversation_id,
            "workspace_id": member.workspace_id, "user_id": member.user_id, "region": "eu",
            "parent_id": parent, "seq": seq, "role": role, "status": "complete",
            "created_at": start + dt.timedelta(seconds=seq),
            "body": store.seal(tenant, MESSAGE_KIND, message_id, body)})
        parent = message_id
    with store.engine.begin() as conn:
        conn.execute(insert(ConversationRow).values(
            id=conversation_id, workspace_id=member.workspace_id, user_id=member.user_id,
            region="eu", model=MODEL, gpt_id=None, current_message_id=parent,
            message_count=MESSAGES, created_at=start,
            updated_at=start + dt.timedelta(seconds=MESSAGES),
            title=store.seal(tenant, TITLE_KIND, conversation_id, b"A long conversation")))
        conn.execute(insert(MessageRow), rows)
    return conversation_id


def seed_many_conversations(store: RegionalStore, member: MemberGrant, rng: random.Random
                            ) -> None:
    """10,000 conversations of one member (titles sealed; no messages: the list never reads
    them), one a minute back from now."""
    tenant = member.tenant
    now = dt.datetime.now(dt.UTC)
    rows = []
    for index in range(CONVERSATIONS):
        conversation_id = new_id("conv")
        moment = now - dt.timedelta(minutes=index)
        title = sentence(rng, rng.randint(3, 8))[:60].encode()
        rows.append({
            "id": conversation_id, "workspace_id": member.workspace_id,
            "user_id": member.user_id, "region": "eu", "model": MODEL, "gpt_id": None,
            "current_message_id": None, "message_count": rng.randint(2, 40),
            "created_at": moment, "updated_at": moment,
            "title": store.seal(tenant, TITLE_KIND, conversation_id, title)})
    with store.engine.begin() as conn:
        for first in range(0, len(rows), 2_000):
            conn.execute(insert(ConversationRow), rows[first:first + 2_000])


def knowledge_text(rng: random.Random, paragraphs: int) -> str:
    """Paragraphs of about 1,100 characters: `chunk_text` makes one passage of each."""
    return "\n\n".join(prose(rng, 1_100) for _ in range(paragraphs))


class TimedEmbedder(Embedder):
    """The region's embedder, noting how long its last call took; while `memo` is on, it
    reuses vectors it made before (the passages are the same on both backends)."""

    def __init__(self, router: ModelRouter) -> None:
        super().__init__(router)
        self.last_s = 0.0
        self.memo = False
        self._known: dict[str, Any] = {}

    async def embed(self, texts: Sequence[str], *, owner: str) -> Any:
        start = time.perf_counter()
        if self.memo and all(t in self._known for t in texts):
            found = np.stack([self._known[t] for t in texts])
        else:
            found = await super().embed(texts, owner=owner)
            if self.memo:
                self._known.update(zip(texts, found, strict=True))
        self.last_s = time.perf_counter() - start
        return found


# -------------------------------------------------------------------------------- in process


def bench_conversations(site: Site, org_id: str, iterations: int) -> dict[str, Any]:
    store = site.store("eu")
    conversations = Conversations(store)
    rng = random.Random(6)
    reader, lister = member_of(site, org_id, "reader"), member_of(site, org_id, "lister")
    t0 = time.perf_counter()
    long_id = seed_long_conversation(store, reader, rng)
    seed_many_conversations(store, lister, rng)
    seeded_s = time.perf_counter() - t0
    if store.engine.dialect.name == "postgresql":
        with store.engine.begin() as conn:  # as autovacuum would have by now
            conn.execute(text("ANALYZE ws_conversations"))
            conn.execute(text("ANALYZE ws_messages"))
    log(f"seeded 1 x {MESSAGES} messages and {CONVERSATIONS} conversations in {seeded_s:.1f} s")

    opened = conversations.get(reader, long_id)
    assert len(opened.messages) == MESSAGES and len(opened.branch()) == MESSAGES
    page, cursor = conversations.list(lister)
    assert len(page) == 50 and cursor is not None
    assert page[0].updated_at >= page[-1].updated_at

    open_s = timed(lambda: conversations.get(reader, long_id), iterations, 20)
    list_s = timed(lambda: conversations.list(lister, limit=50), iterations * 2, 20)

    # Where the time of an open goes: the two queries alone, then opening the sealed bodies.
    tenant = reader.tenant

    def queries() -> list[Any]:
        with store.engine.connect() as conn:
            conn.execute(select(*SUMMARY_COLUMNS, ConversationRow.current_message_id).where(
                ConversationRow.id == long_id,
                ConversationRow.workspace_id == reader.workspace_id,
                ConversationRow.user_id == reader.user_id)).first()
            return list(conn.execute(select(*MESSAGE_COLUMNS).where(
                MessageRow.conversation_id == long_id,
                MessageRow.workspace_id == reader.workspace_id,
                MessageRow.user_id == reader.user_id).order_by(MessageRow.seq)).all())

    rows = queries()
    query_s = timed(queries, iterations, 5)
    open_only_s = timed(lambda: [json.loads(store.open(tenant, MESSAGE_KIND, r.id, r.body))
                                 for r in rows], iterations, 5)

    def list_query() -> list[Any]:
        with store.engine.connect() as conn:
            return list(conn.execute(
                select(*SUMMARY_COLUMNS).where(
                    ConversationRow.workspace_id == lister.workspace_id,
                    ConversationRow.user_id == lister.user_id)
                .order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
                .limit(51)).all())

    list_rows = list_query()
    list_query_s = timed(list_query, iterations * 2, 5)
    titles_s = timed(lambda: [store.open(lister.tenant, TITLE_KIND, r.id, r.title)
                              for r in list_rows[:50]], iterations * 2, 5)
    # The blocking work of a streamed reply (ChatService.send): before its first byte, read the
    # conversation; while it streams, store the member's message (with a new chat's title).
    turn: dict[str, list[float]] = {k: [] for k in (
        "get_empty", "add_first", "get_two", "add_follow_up")}
    for number in range(-10, iterations):
        noted = turn if number >= 0 else {k: [] for k in turn}

        def clock(name: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            done = call(*args, **kwargs)
            noted[name].append(time.perf_counter() - start)  # noqa: B023 - called at once
            return done

        made = conversations.create(reader).id
        clock("get_empty", conversations.get, reader, made)
        first = clock("add_first", conversations.add_message, reader, made, role="user",
                      content="hello there", parent_id=None, model=MODEL,
                      title="hello there")
        reply = conversations.add_message(reader, made, role="assistant", content="hi",
                                          parent_id=first.id, model=MODEL)
        clock("get_two", conversations.get, reader, made)
        clock("add_follow_up", conversations.add_message, reader, made, role="user",
              content="and then?", parent_id=reply.id, model=MODEL)
    return {
        **{f"turn_{k}": summary(v) for k, v in turn.items()},
        "seed_s": seeded_s,
        "open": summary(open_s), "open_queries": summary(query_s),
        "open_decrypt_parse": summary(open_only_s),
        "list": summary(list_s), "list_query": summary(list_query_s),
        "list_decrypt": summary(titles_s),
    }


async def bench_knowledge(site: Site, org_id: str, embedder_holder: dict[str, Any],
                          iterations: int) -> dict[str, Any]:
    store = site.store("eu")
    settings = site.settings
    providers = build_providers(settings.region("eu"))
    for provider in providers:
        await provider.start()
    try:
        embedder = TimedEmbedder(ModelRouter("eu", providers))
        embedder._known = embedder_holder.setdefault("known", {})
        files = FileStore(store, settings.workspace)
        knowledge = Knowledge(store, files, embedder)
        owner = member_of(site, org_id, "gptowner")
        rng = random.Random(2000)
        file_ids = []
        for number in range(KNOWLEDGE_FILES):
            data = knowledge_text(rng, PASSAGES // KNOWLEDGE_FILES).encode()
            file_ids.append(files.add(owner, f"manual-{number:02d}.txt", data).id)
        gpt = Gpts(store).create(owner, name="Manuals", instructions="Answer from the manuals.",
                                 model=MODEL, file_ids=file_ids)
        embedder.memo = True
        t0 = time.perf_counter()
        count = await knowledge.index(owner.tenant, gpt.id, file_ids)
        index_s = time.perf_counter() - t0
        embedder.memo = False
        assert count == PASSAGES, count
        log(f"indexed {count} passages in {index_s:.1f} s")

        # Cold: a fresh Knowledge (empty cache) loads and opens the sealed index first.
        cold_s = []
        for question in QUESTIONS[:5]:
            fresh = Knowledge(store, files, embedder)
            start = time.perf_counter()
            await fresh.search(owner.tenant, gpt.id, question, 4)
            cold_s.append(time.perf_counter() - start - embedder.last_s)

        for question in QUESTIONS * 2:  # warm the encoder and the cache
            await knowledge.search(owner.tenant, gpt.id, question, 4)
        import torch

        from domicile.inference.providers.local_embeddings import load_model

        model = load_model()
        default_threads = torch.get_num_threads()
        found_results: dict[str, Any] = {"index_s": index_s, "passages": count,
                                         "cold_index_load": summary(cold_s),
                                         "torch_threads": default_threads}
        # As the server runs (torch's default intra-op threads), then with one thread: on a
        # busy 2-core machine two threads wait for each other behind the other work.
        for suffix, threads in (("", default_threads), ("_1thread", 1)):
            torch.set_num_threads(threads)
            total_s, embed_s, search_s, forward_s = [], [], [], []
            for number in range(iterations):
                question = QUESTIONS[number % len(QUESTIONS)]
                start = time.perf_counter()
                found = await knowledge.search(owner.tenant, gpt.id, question, 4)
                total = time.perf_counter() - start
                assert len(found) == 4
                total_s.append(total)
                embed_s.append(embedder.last_s)
                search_s.append(total - embedder.last_s)
                start = time.perf_counter()
                model.encode([question], normalize_embeddings=True)
                forward_s.append(time.perf_counter() - start)
            found_results.update({
                f"retrieval{suffix}": summary(total_s),
                f"query_embedding{suffix}": summary(embed_s),
                f"search{suffix}": summary(search_s),
                f"model_forward{suffix}": summary(forward_s)})
        torch.set_num_threads(default_threads)
        return found_results
    finally:
        for provider in providers:
            await provider.aclose()


# -------------------------------------------------------------------------------- over HTTP


class Http:
    """One keep-alive HTTP/1.1 connection on a raw socket: send a request, time the first
    response bytes and the first bytes holding a marker, read the body to its end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes,
                marker: bytes = b"") -> tuple[int, bytes, float, float]:
        """(status, body, seconds to the first byte, seconds to the first `marker`)."""
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + f"content-length: {len(body)}\r\n\r\n"
        data = bytearray()
        first = at_marker = 0.0
        start = time.perf_counter()
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in data:
            data += self._recv()
            if not first:
                first = time.perf_counter() - start
        raw_head, _, rest = bytes(data).partition(b"\r\n\r\n")
        status = int(raw_head.split(b" ", 2)[1])
        fields = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
                  for line in raw_head.split(b"\r\n")[1:] if b":" in line}
        buffer = bytearray(rest)
        if marker and marker in buffer:
            at_marker = time.perf_counter() - start
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            payload = bytearray()
            while True:
                while b"\r\n" not in buffer:
                    buffer += self._recv()
                line, _, remainder = bytes(buffer).partition(b"\r\n")
                size = int(line.split(b";", 1)[0], 16)
                buffer = bytearray(remainder)
                while len(buffer) < size + 2:
                    buffer += self._recv()
                    if marker and not at_marker and marker in buffer:
                        at_marker = time.perf_counter() - start
                payload += buffer[:size]
                if marker and not at_marker and marker in payload:
                    at_marker = time.perf_counter() - start
                buffer = buffer[size + 2:]
                if size == 0:
                    break
        else:
            length = int(fields.get(b"content-length", b"0"))
            while len(buffer) < length:
                buffer += self._recv()
            payload = buffer[:length]
        if marker and not at_marker:
            raise RuntimeError(f"no {marker!r} in the answer ({status}): {bytes(payload[:300])!r}")
        return status, bytes(payload), first, at_marker

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        return chunk


def cli(config: Path, *args: str, stdin: str | None = None) -> Any:
    done = subprocess.run([str(DOMICILE), *args, "--config", str(config), "--json"],
                          input=stdin, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"domicile {' '.join(args)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() != 1 \
        else []


@contextlib.contextmanager
def process(name: str, argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    OUT.mkdir(exist_ok=True)
    with open(OUT / f"workspace-{name}.log", "wb") as log_file:
        child = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                 stdin=subprocess.PIPE, env=env, start_new_session=True)
        try:
            yield child
        finally:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()


def wait_http(port: int, path: str, child: subprocess.Popen[bytes], timeout: float = 90
              ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the process on port {port} exited ({child.returncode})")
        try:
            conn = Http(port)
            try:
                if conn.request("GET", path, {}, b"")[0] == 200:
                    return
            finally:
                conn.close()
        except (OSError, RuntimeError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} in {timeout} s")


def bench_ttfb(backend: Backend, iterations: int) -> dict[str, Any]:
    """Gateway stream and workspace reply, interleaved on two keep-alive connections."""
    config = backend.config
    org = cli(config, "org", "create", "--name", "Bench")["id"]
    project = cli(config, "project", "create", "--org", org, "--name", "app", "--region", "eu",
                  "--retention", "zero")["id"]
    api_key = cli(config, "key", "create", "--project", project)["key"]
    workspace = cli(config, "workspace", "create", "--org", org, "--name", "Team",
                    "--region", "eu")["id"]
    user = cli(config, "user", "add", "--workspace", workspace, "--email", "b@example.com",
               "--role", "owner", "--password-stdin", stdin="correct horse battery staple\n")["id"]
    token = cli(config, "token", "create", "--workspace", workspace, "--user", user)["token"]
    port = load_settings(config).region("eu").port
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [*pinned(CORE_SERVER), str(DOMICILE), "serve", "--config", str(config),
            "--region", "eu", "--log-level", "warning"]
    with process(f"serve-{backend.name}", argv, env) as server:
        wait_http(port, "/healthz", server)
        gateway, workspace_conn = Http(port), Http(port)
        json_type = {"content-type": "application/json"}
        gateway_headers = {**json_type, "authorization": f"Bearer {api_key}",
                           "accept": "text/event-stream"}
        workspace_headers = {**json_type, "authorization": f"Bearer {token}",
                             "accept": "text/event-stream"}
        prompt = "hello there, how are you today"
        gateway_body = json.dumps({"model": MODEL, "stream": True, "messages": [
            {"role": "user", "content": prompt}]}).encode()
        message_body = json.dumps({"content": prompt, "model": MODEL, "stream": True}).encode()
        samples: dict[str, list[float]] = {k: [] for k in (
            "gateway_first_byte", "gateway_first_data", "new_first_byte", "new_first_delta",
            "follow_first_byte", "follow_first_delta", "create_conversation")}
        previous = os.sched_getaffinity(0)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {CORE_LOAD})
        try:
            for number in range(-50, iterations):  # 50 rounds of warm-up first
                status, _, g_first, g_data = gateway.request(
                    "POST", "/v1/chat/completions", gateway_headers, gateway_body, b"data:")
                assert status == 200, status
                status, made, created_s, _ = workspace_conn.request(
                    "POST", "/workspace/api/conversations", workspace_headers, b"{}")
                assert status == 201, made
                path = f"/workspace/api/conversations/{json.loads(made)['id']}/messages"
                status, reply, n_first, n_delta = workspace_conn.request(
                    "POST", path, workspace_headers, message_body, b"reply.delta")
                assert status == 200 and b"reply.completed" in reply, reply[-300:]
                status, reply, f_first, f_delta = workspace_conn.request(
                    "POST", path, workspace_headers, message_body, b"reply.delta")
                assert status == 200 and b"reply.completed" in reply, reply[-300:]
                if number >= 0:
                    for key, value in (("gateway_first_byte", g_first),
                                       ("gateway_first_data", g_data),
                                       ("new_first_byte", n_first),
                                       ("new_first_delta", n_delta),
                                       ("follow_first_byte", f_first),
                                       ("follow_first_delta", f_delta),
                                       ("create_conversation", created_s)):
                        samples[key].append(value)
        finally:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, previous)
            gateway.close()
            workspace_conn.close()
    result: dict[str, Any] = {key: summary(values) for key, values in samples.items()}
    gateway_data = samples["gateway_first_data"]
    for kind in ("new", "follow"):
        # Paired by round: each workspace reply against the gateway stream just before it.
        added = [w - g for w, g in zip(samples[f"{kind}_first_delta"], gateway_data,
                                       strict=True)]
        result[f"{kind}_added_paired"] = summary(added)
        result[f"{kind}_added_p50_ms"] = (result[f"{kind}_first_delta"]["p50_ms"]
                                          - result["gateway_first_data"]["p50_ms"])
        result[f"{kind}_added_p95_ms"] = (result[f"{kind}_first_delta"]["p95_ms"]
                                          - result["gateway_first_data"]["p95_ms"])
    return result


def serve_upstream() -> None:
    """`--serve-upstream`: the tests' fake OpenAI upstream, until stdin closes."""
    import uvloop
    from tests.gateway.upstream import FakeUpstream

    async def run() -> None:
        upstream = FakeUpstream(UPSTREAM_NAME)
        await upstream.start()
        print(upstream.port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent goes
        await upstream.stop()

    uvloop.run(run())


# -------------------------------------------------------------------------------- report


def write_results(results: dict[str, Any]) -> None:
    lines = [
        "# Workspace benchmark",
        "",
        f"Written by `bench/workspace/bench_workspace.py` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC (run took "
        f"{results.get('elapsed_s', 0):.0f} s). Re-run with `make bench-workspace`.",
        "",
        "**Machine: 2 cores, busy** (other work ran during the run: load average "
        f"{results['load'][0]:.2f} at start, {results['load'][1]:.2f} at the end); "
        "absolute numbers are noisy, medians are steadier than p95.",
        "",
        "- **open**: `Conversations.get` of one conversation of 1,000 messages (one branch, "
        f"prompts of {PROMPT_CHARS} and replies of {REPLY_CHARS:,} characters, each sealed), "
        "in process; its two queries alone and opening + parsing the 1,000 sealed bodies "
        "alone show where the time goes.",
        "- **list**: `Conversations.list(limit=50)` of a member with 10,000 conversations; "
        "the query alone and opening 50 titles alone.",
        "- **TTFB**: a real `domicile serve --region eu` (core 1) in front of the tests' fake "
        "upstream (`tests/gateway/upstream.py`, own process, core 0 with the client). Each "
        "round sends, on two keep-alive raw-socket connections: a gateway "
        "`/v1/chat/completions` stream, then (untimed) `POST /workspace/api/conversations`, "
        "the first message of that new chat and a follow-up in it (both `\"stream\": true`). "
        "*First byte* = send to the first response bytes; *first reply* = send to the first "
        "bytes holding the reply's text (gateway: an SSE `data:` line; workspace: a "
        "`reply.delta` event). *Added* = workspace first reply minus gateway first reply "
        "(percentile minus percentile; *paired* = percentiles of the per-round differences).",
        "- **retrieval**: `Knowledge.search(k=4)` over a GPT of 2,000 passages (20 text files "
        "added with `FileStore.add`, indexed with `Knowledge.index`), with the real "
        "`local-embeddings` model (all-MiniLM-L6-v2, in process); *query embedding* is the "
        "`Embedder.embed` call inside it, *search* the rest (numpy over the cached matrix). "
        "*Cold* = the first search of a fresh `Knowledge` (loading and opening the sealed "
        "index), embedding excluded.",
        "",
    ]
    targets = []
    for backend, r in results["backends"].items():
        conv, ttfb, know = r["conversations"], r["ttfb"], r["knowledge"]
        lines += [f"## {backend}", "", f"Database: {r['note']}.", "",
                  "| measure | median ms | p95 ms | n |", "|---|---:|---:|---:|"]

        def row(label: str, s: dict[str, float], out: list[str] = lines) -> None:
            out.append(f"| {label} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['n']} |")

        row("**open a 1,000-message conversation**", conv["open"])
        row("  of which: its two queries", conv["open_queries"])
        row("  of which: open + parse 1,000 sealed bodies", conv["open_decrypt_parse"])
        row("**list newest 50 of 10,000**", conv["list"])
        row("  of which: the query", conv["list_query"])
        row("  of which: open 50 titles", conv["list_decrypt"])
        row("gateway stream: first byte", ttfb["gateway_first_byte"])
        row("gateway stream: first reply", ttfb["gateway_first_data"])
        row("workspace, new chat: first byte", ttfb["new_first_byte"])
        row("workspace, new chat: first reply", ttfb["new_first_delta"])
        row("workspace, follow-up: first byte", ttfb["follow_first_byte"])
        row("workspace, follow-up: first reply", ttfb["follow_first_delta"])
        for kind, label in (("new", "new chat"), ("follow", "follow-up")):
            lines.append(f"| **added, {label}** (percentile minus percentile) | "
                         f"{ttfb[f'{kind}_added_p50_ms']:.2f} | "
                         f"{ttfb[f'{kind}_added_p95_ms']:.2f} | "
                         f"{ttfb['gateway_first_data']['n']} |")
            row(f"added, {label} (paired)", ttfb[f"{kind}_added_paired"])
        row("(untimed in the above) create a conversation", ttfb["create_conversation"])
        lines.append("| blocking work before a reply's first byte, in process: | | | |")
        row("  get an empty conversation (new chat)", conv["turn_get_empty"])
        row("  get a 2-message conversation (follow-up)", conv["turn_get_two"])
        lines.append("| blocking work while the reply streams, in process: | | | |")
        row("  store the first message and the title", conv["turn_add_first"])
        row("  store a follow-up message", conv["turn_add_follow_up"])
        threads = know["torch_threads"]
        row(f"**retrieval over 2,000 passages** (torch {threads} threads, as served)",
            know["retrieval"])
        row("  of which: query embedding (`Embedder.embed`)", know["query_embedding"])
        row("  of which: search", know["search"])
        row("  for scale: the model's forward pass alone (`encode`)", know["model_forward"])
        row("retrieval, torch 1 thread", know["retrieval_1thread"])
        row("  of which: query embedding", know["query_embedding_1thread"])
        row("  of which: search", know["search_1thread"])
        row("  for scale: the model's forward pass alone", know["model_forward_1thread"])
        row("cold first search (index load), no embedding", know["cold_index_load"])
        new_work = conv["turn_get_empty"]["p50_ms"]
        follow_work = conv["turn_get_two"]["p50_ms"]
        lines += ["", "Where the added TTFB goes: before its first byte a workspace reply reads "
                  "the conversation (one query, in a thread), which the gateway's "
                  "zero-retention stream does not; the member's message (and a new chat's "
                  "title, in the same transaction) is stored while the reply streams, once a "
                  "provider has answered. In process that read takes "
                  f"{new_work:.2f} ms (new chat) and {follow_work:.2f} ms (follow-up) of the "
                  f"{ttfb['new_added_p50_ms']:.2f} / {ttfb['follow_added_p50_ms']:.2f} ms "
                  "added; the rest is the thread hops, the token check, the request body made "
                  "in a thread and the `message.created` event."]
        lines += ["", f"Seeding: conversations {conv['seed_s']:.1f} s; knowledge index of "
                  f"{know['passages']:,} passages {know['index_s']:.1f} s"
                  + (" (vectors reused from the first backend)" if know["index_s"] < 5 else "")
                  + ".", ""]
        for name, measured, target in (
            ("open a 1,000-message conversation", conv["open"]["p50_ms"], "open"),
            ("list newest 50 of 10,000", conv["list"]["p50_ms"], "list"),
            ("reply TTFB added, new chat", ttfb["new_added_p50_ms"], "ttfb_added"),
            ("reply TTFB added, follow-up", ttfb["follow_added_p50_ms"], "ttfb_added"),
            ("retrieval over 2,000 passages", know["retrieval"]["p50_ms"], "retrieval"),
            ("retrieval, torch 1 thread", know["retrieval_1thread"]["p50_ms"], "retrieval"),
        ):
            limit = TARGETS_MS[target]
            targets.append(f"| {backend} | {name} < {limit:g} ms | {measured:.2f} ms | "
                           f"{'**PASS**' if measured < limit else '**MISS**'} |")
    lines += ["## Targets (medians; TTFB: workspace p50 minus gateway p50)", "",
              "| backend | target | measured | result |", "|---|---|---:|---|", *targets, ""]
    env = results["environment"]
    lines += ["## Environment", "", "| | |", "|---|---|",
              *(f"| {k} | {v} |" for k, v in env.items()), "",
              "Raw data: `bench/out/workspace.json`; server logs `bench/out/workspace-*.log`.",
              ""]
    write_section("bench-workspace", "\n".join(lines))


def environment(postgres: Postgres | None) -> dict[str, str]:
    import sqlalchemy

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1) if found else cpu
    env = {"cpu": cpu, "cores": str(os.cpu_count()), "kernel": platform.release(),
           "python": sys.version.split()[0], "numpy": np.__version__,
           "sqlalchemy": sqlalchemy.__version__, "domicile commit": commit or "?"}
    if postgres is not None:
        env["postgresql"] = f"{postgres.version} ({postgres.where})"
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--postgres-url", default=os.environ.get("DOMICILE_TEST_POSTGRES_URL"))
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the section of RESULTS.md from bench/out/workspace.json")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream()
        return 0
    if args.report_only:
        write_results(json.loads((OUT / "workspace.json").read_text()))
        return 0
    started = time.time()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: dict[str, Any] = {"backends": {}, "load": [os.getloadavg()[0], 0.0]}
    postgres = Postgres(args.postgres_url) if "postgresql" in backends else None
    memo: dict[str, Any] = {}
    upstream_argv = [*pinned(CORE_LOAD), sys.executable, __file__, "--serve-upstream"]
    try:
        with process("upstream", upstream_argv, dict(os.environ)) as upstream, \
                tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
            # The upstream prints its port first; its log file gets the rest.
            port_file = OUT / "workspace-upstream.log"
            deadline = time.monotonic() + 30
            while not port_file.read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.environ["BENCH_WS_UPSTREAM_PORT"] = port_file.read_text().split()[0]
            assert upstream.poll() is None
            for name in backends:
                log(f"--- {name}")
                backend = make_site(Path(tmp) / name, name, postgres, free_port_pair())
                site = Site(load_settings(backend.config))
                try:
                    site.migrate()
                    org = site.directory.create_org("Bench").id
                    conversations = bench_conversations(site, org, args.iterations)
                    log(f"open p50 {conversations['open']['p50_ms']:.2f} ms, list p50 "
                        f"{conversations['list']['p50_ms']:.2f} ms")
                    knowledge = asyncio.run(bench_knowledge(site, org, memo, args.iterations))
                    log(f"retrieval p50 {knowledge['retrieval']['p50_ms']:.2f} ms")
                finally:
                    site.close()
                ttfb = bench_ttfb(backend, args.iterations)
                log(f"TTFB added p50: new chat {ttfb['new_added_p50_ms']:.2f} ms, follow-up "
                    f"{ttfb['follow_added_p50_ms']:.2f} ms")
                results["backends"][name] = {"note": backend.note, "conversations":
                                             conversations, "knowledge": knowledge,
                                             "ttfb": ttfb}
            if upstream.stdin is not None:
                upstream.stdin.close()
    finally:
        results["environment"] = environment(postgres)
        if postgres is not None:
            postgres.close()
    results["load"][1] = os.getloadavg()[0]
    results["elapsed_s"] = time.time() - started
    OUT.mkdir(exist_ok=True)
    (OUT / "workspace.json").write_text(json.dumps(results, indent=2))
    if not args.no_write:
        write_results(results)
        log(f"wrote {RESULTS_MD}")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
