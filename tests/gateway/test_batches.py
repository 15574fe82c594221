"""/v1/batches: refused under zero retention (G4); under regional retention a JSONL file of
requests runs in the region through the gateway's own endpoints (routing, failover, usage,
shapes), its results in output and error files; a bad file fails the batch with OpenAI's
`errors`; a cancel stops it with every line accounted for; a worker stopped half-way and
started again finishes with every line exactly once.

The SDK client validates every Batch object strictly. Most tests run against the session's
stack (in-memory store, loopback upstreams); the worker's restart runs against the stack's
routes with a handler the test holds; the store's two additions run on real stores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion
from sqlalchemy import text

from domicile.compliance.erasure import Erasure
from domicile.compliance.export import Exporter
from domicile.gateway import create_gateway_app
from domicile.gateway.batch_jobs import (
    ACTIVE_KIND,
    CANCEL_KIND,
    KIND,
    LEASE_KIND,
    MAX_ATTEMPTS,
    PART_KIND,
    BatchRecord,
    _split_lines,
    batch_object,
    parse_input,
    result_line,
)
from domicile.gateway.batch_worker import BatchWorker, run_line
from domicile.gateway.http import Exchange
from domicile.gateway.routes import Route, RouteTable
from domicile.inference.providers import build_providers
from domicile.site import Site, init_site
from domicile.storage.interfaces import TenantRef
from domicile.tenancy.grants import ApiKeyGrant
from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, Stack
from tests.gateway.support import (
    MemoryContentStore,
    ServedApp,
    grant,
    jsonl_file,
    make_settings,
    provider,
    wait_for_batch,
)
from tests.gateway.upstream import HOLD_LIMIT_S, FakeUpstream

REGIONAL = grant("key_eu_regional", retention="regional")
TENANT = TenantRef(REGIONAL.project_id, "eu", REGIONAL.org_id)
DEADLINE_S = 30.0


def chat_line(custom_id: str, model: str = "solo-model", content: str = "hello",
              **extra: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}]},
            **extra}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
                    for line in lines)


def upload(client: openai.OpenAI, lines: list[Any], purpose: str = "batch") -> str:
    return client.files.create(file=("batch.jsonl", jsonl(lines)),
                               purpose=purpose).id  # type: ignore[arg-type]


def wait_for(client: openai.OpenAI, batch_id: str,
             done: Callable[[Batch], bool] | None = None) -> Batch:
    batch: Batch = wait_for_batch(client, batch_id, done, deadline_s=DEADLINE_S)
    return batch


file_lines = jsonl_file


@pytest.fixture
def regional(stack: Stack) -> Iterator[openai.OpenAI]:
    client = stack.client(EU_REGIONAL_KEY)
    yield client
    # No batch of this test may still run when the next one clears the store.
    worker = stack.eu_app._batches.worker
    assert worker is not None
    deadline = time.monotonic() + DEADLINE_S
    while worker._jobs and time.monotonic() < deadline:
        time.sleep(0.02)


# -- G4 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/batches"), ("GET", "/v1/batches"), ("GET", "/v1/batches/batch_abc"),
    ("POST", "/v1/batches/batch_abc/cancel"), ("DELETE", "/v1/batches/batch_abc"),
])
def test_zero_retention_refuses_every_batches_path(stack: Stack, method: str, path: str
                                                  ) -> None:
    response = stack.http().request(method, path, json={"input_file_id": "file-abc"},
                                    headers={"Authorization": f"Bearer {EU_ZERO_KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "zero_retention"
    assert stack.store.records == {}


def test_the_sdk_sees_zero_retention_as_a_bad_request(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client(EU_ZERO_KEY).batches.create(
            input_file_id="file-abc", endpoint="/v1/chat/completions", completion_window="24h")
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]


# -- the SDK's round trip -----------------------------------------------------------------------


def test_a_batch_runs_in_the_region_and_its_output_file_holds_every_line(
        stack: Stack, regional: openai.OpenAI) -> None:
    ids = [f"req-{i}" for i in range(25)]
    file_id = upload(regional, [chat_line(i, content=f"line {i}") for i in ids])
    created = regional.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"run": "nightly"})
    assert created.status == "validating" and created.input_file_id == file_id
    assert created.metadata == {"run": "nightly"}

    done = wait_for(regional, created.id)
    assert done.status == "completed", done.errors
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (25, 25, 0)
    assert done.error_file_id is None and done.output_file_id is not None
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.model == "solo-model"
    assert done.usage is not None and done.usage.input_tokens == 25 * 11
    output = regional.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output"
    lines = file_lines(regional, done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)
    for line in lines:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content == (
            f"eu-solo says: line {line['custom_id']}")
    # Through the endpoint itself: its usage metadata, its provider, no content kept.
    stack.loop.run(stack.eu_app.usage.flush())
    usage = [r for r in stack.sink.records if r.endpoint == "/v1/chat/completions"]
    assert len(usage) == 25 and {r.provider for r in usage} == {"eu-solo"}
    assert {r.project_id for r in usage} == {REGIONAL.project_id}
    assert len(stack.upstreams["eu-solo"].received) == 25
    # Ended: its record and files stay, its parts and markers go.
    kinds = {kind for (_, kind, _) in stack.store.records}
    assert kinds == {KIND}


def test_batches_are_listed_newest_first_with_pagination(
        stack: Stack, regional: openai.OpenAI) -> None:
    file_id = upload(regional, [chat_line("a")])
    made = [regional.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                    completion_window="24h").id for _ in range(3)]
    for batch_id in made:
        wait_for(regional, batch_id)
    first = regional.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    rest = regional.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == [made[0]] and not rest.has_more
    assert [b.id for b in regional.batches.list()] == made[::-1]
    assert regional.batches.retrieve(made[1]).id == made[1]
    with pytest.raises(openai.NotFoundError):
        regional.batches.retrieve("batch_unknown0000")
    with pytest.raises(openai.BadRequestError):
        regional.batches.list(limit=1000)


def test_upstream_errors_and_unknown_models_land_in_the_error_file(
        stack: Stack, regional: openai.OpenAI) -> None:
    stack.upstreams["eu-solo"].behaviour.mode = "reject"  # 400 for every solo-model line
    lines = [chat_line("ok-1", "fo-model"), chat_line("bad-1", "solo-model"),
             chat_line("ok-2", "fo-model"), chat_line("missing", "no-such-model"),
             chat_line("bad-2", "solo-model")]
    batch = regional.batches.create(input_file_id=upload(regional, lines),
                                    endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(regional, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 3)
    output = {line["custom_id"]: line for line in file_lines(regional, done.output_file_id)}
    errors = {line["custom_id"]: line for line in file_lines(regional, done.error_file_id)}
    assert set(output) == {"ok-1", "ok-2"} and set(errors) == {"bad-1", "bad-2", "missing"}
    assert errors["bad-1"]["response"]["status_code"] == 400
    assert errors["bad-1"]["response"]["body"]["error"]["code"] == "upstream_says_no"
    assert errors["missing"]["response"]["status_code"] == 404
    assert errors["missing"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert regional.files.retrieve(done.error_file_id or "").purpose == "batch_output"


def test_embeddings_and_responses_batches_run_through_their_endpoints(
        stack: Stack, regional: openai.OpenAI) -> None:
    embed = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "remote-embedder", "input": [f"text {i}"]}} for i in range(3)]
    respond = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
                "body": {"model": "dev-echo", "input": f"say {i}", "store": False}}
               for i in range(3)]
    for endpoint, lines in (("/v1/embeddings", embed), ("/v1/responses", respond)):
        batch = regional.batches.create(input_file_id=upload(regional, lines),
                                        endpoint=endpoint,  # type: ignore[arg-type]
                                        completion_window="24h")
        done = wait_for(regional, batch.id)
        assert done.status == "completed" and done.error_file_id is None, endpoint
        bodies = [line["response"]["body"] for line in file_lines(regional,
                                                                  done.output_file_id)]
        assert len(bodies) == 3
        assert all(body["object"] == ("list" if endpoint == "/v1/embeddings" else "response")
                   for body in bodies)


# -- validation ---------------------------------------------------------------------------------


def test_create_checks_the_file_endpoint_window_and_metadata(
        stack: Stack, regional: openai.OpenAI) -> None:
    good = upload(regional, [chat_line("a")])
    other_purpose = upload(regional, [chat_line("a")], purpose="assistants")
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"input_file_id": other_purpose}, openai.BadRequestError, "input_file_id"),
        ({"input_file_id": "file-doesnotexist"}, openai.NotFoundError, "input_file_id"),
        ({"input_file_id": "../../etc"}, openai.NotFoundError, "input_file_id"),
        ({"endpoint": "/v1/completions"}, openai.BadRequestError, "endpoint"),
        ({"completion_window": "1h"}, openai.BadRequestError, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, openai.BadRequestError,
         "metadata"),
    ]
    for change, error, param in cases:
        arguments: dict[str, Any] = {"input_file_id": good, "endpoint": "/v1/chat/completions",
                                     "completion_window": "24h", **change}
        with pytest.raises(error) as caught:
            regional.batches.create(**arguments)
        assert caught.value.param == param  # type: ignore[attr-defined]
    assert not any(kind == KIND for (_, kind, _) in stack.store.records)


@pytest.mark.parametrize("query", [
    "limit=%C2%B2", "limit=" + "9" * 5000, "limit=0", "limit=101", "limit=2&limit=3",
    "CLIENTTEXT=1", "%FF=1", "after=CLIENTTEXT", "after=batch_CLIENTTEXT0",
])
def test_a_hostile_list_query_is_a_400_that_quotes_nothing(
        stack: Stack, regional: openai.OpenAI, query: str) -> None:
    # The rule of GET /v1/files: unknown parameters and an `after` naming nothing are 400s.
    response = stack.http().get(f"/v1/batches?{query}",
                                headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    assert response.status_code == 400, response.text
    assert "CLIENTTEXT" not in response.text and "999" not in response.text


def test_404s_quote_an_id_only_when_it_has_our_shape(
        stack: Stack, regional: openai.OpenAI) -> None:
    auth = {"Authorization": f"Bearer {EU_REGIONAL_KEY}"}
    for path in ("/v1/batches/CLIENTTEXT", "/v1/batches/CLIENTTEXT/cancel"):
        response = stack.http().request("POST" if path.endswith("cancel") else "GET", path,
                                        headers=auth)
        assert response.status_code == 404 and "CLIENTTEXT" not in response.text
    known_shape = stack.http().get("/v1/batches/batch_unknown0000", headers=auth)
    assert known_shape.status_code == 404 and "batch_unknown0000" in known_shape.text
    for file_id, quoted in (("CLIENTTEXT", False), ("file-doesnotexist", True)):
        with pytest.raises(openai.NotFoundError) as caught:
            regional.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
        assert (file_id in caught.value.message) is quoted


def test_an_expired_input_file_is_a_404_like_an_unknown_one(
        stack: Stack, regional: openai.OpenAI) -> None:
    file_id = upload(regional, [chat_line("a")])
    key = (TENANT.id, "file", file_id)
    blob, data = stack.store.blobs[key]
    stack.store.blobs[key] = (dataclasses.replace(
        blob, created_at=blob.created_at - timedelta(days=31)), data)  # batch files: 30 days
    with pytest.raises(openai.NotFoundError) as caught:
        regional.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                completion_window="24h")
    assert caught.value.param == "input_file_id"  # type: ignore[attr-defined]
    assert not any(kind == KIND for (_, kind, _) in stack.store.records)


def test_a_cancel_landing_after_the_batch_ended_leaves_no_record(
        stack: Stack, regional: openai.OpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    store = stack.store
    record = BatchRecord(batch_object("batch_late0", "file-input0", "/v1/chat/completions",
                                      None), REGIONAL)
    record.move("in_progress")
    store.put_record(TENANT, KIND, "batch_late0", record.dump())
    put = store.put_record

    def finished_first(tenant: TenantRef, kind: str, record_id: str, body: bytes) -> None:
        if kind == CANCEL_KIND:  # the worker finalized and cleaned up just before this write
            record.move("completed")
            put(tenant, KIND, "batch_late0", record.dump())
        put(tenant, kind, record_id, body)

    monkeypatch.setattr(store, "put_record", finished_first)
    with pytest.raises(openai.ConflictError):
        regional.batches.cancel("batch_late0")
    assert (TENANT.id, CANCEL_KIND, "batch_late0") not in store.records
    assert regional.batches.retrieve("batch_late0").status == "completed"


def test_a_bad_input_file_fails_the_batch_with_errors_per_line(
        stack: Stack, regional: openai.OpenAI) -> None:
    lines: list[Any] = [
        chat_line("a"),
        b"{not json",
        chat_line("a"),  # duplicate
        {**chat_line("b"), "method": "GET"},
        {**chat_line("c"), "url": "/v1/embeddings"},
        {"custom_id": "d", "method": "POST", "url": "/v1/chat/completions"},
        chat_line("e") | {"body": {"model": "solo-model", "messages": [], "stream": True}},
        [1, 2],
    ]
    batch = regional.batches.create(input_file_id=upload(regional, lines),
                                    endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(regional, batch.id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.errors is not None and done.errors.data is not None
    found = [(e.line, e.code) for e in done.errors.data]
    assert found == [(2, "invalid_json_line"), (3, "duplicate_custom_id"),
                     (4, "invalid_method"), (5, "mismatched_endpoint"),
                     (6, "missing_required_parameter"), (7, "invalid_request"),
                     (8, "invalid_json_line")]
    assert done.output_file_id is None and done.error_file_id is None
    assert stack.upstreams["eu-solo"].received == []  # nothing of a bad file is run
    empty = regional.batches.create(input_file_id=upload(regional, []),
                                    endpoint="/v1/chat/completions", completion_window="24h")
    failed = wait_for(regional, empty.id)
    assert failed.errors is not None and failed.errors.data is not None
    assert [e.code for e in failed.errors.data] == ["empty_file"]


def test_a_line_the_strict_parser_refuses_fails_the_batch_and_never_loops(
        stack: Stack, regional: openai.OpenAI) -> None:
    deep = (b'{"custom_id": "client-text", "method": "POST", "url": "/v1/chat/completions", '
            b'"body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    lines: list[Any] = [deep, b'{"custom_id": "nan", "x": NaN}', b'{"custom_id": "\xff"}',
                        chat_line("fine")]
    batch = regional.batches.create(input_file_id=upload(regional, lines),
                                    endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(regional, batch.id)
    assert done.status == "failed" and done.errors is not None and done.errors.data
    assert [(e.line, e.code) for e in done.errors.data] == [
        (1, "invalid_json_line"), (2, "invalid_json_line"), (3, "invalid_json_line")]
    assert all("client-text" not in (e.message or "") for e in done.errors.data)
    with pytest.raises(openai.ConflictError):  # ended: a cancel is refused, not left pending
        regional.batches.cancel(batch.id)
    assert stack.upstreams["eu-solo"].received == []


@pytest.mark.parametrize("cancel", [False, True])
def test_a_batch_failing_at_one_stage_is_given_up_after_a_few_attempts(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, cancel: bool) -> None:
    store = MemoryContentStore(region="eu")
    batch_id = make_batch(store, [chat_line("a")])
    if cancel:
        store.put_record(TENANT, CANCEL_KIND, batch_id, b'{"at": 1}')
    attempts: list[int] = []

    def broken(chunks: Any, endpoint: str) -> Any:
        attempts.append(1)
        raise RuntimeError("a parser bug")

    monkeypatch.setattr("domicile.gateway.batch_jobs.parse_input", broken)
    held = HeldChat()
    worker = BatchWorker(store, "eu", held.routes, flush_s=0.05, rescan_s=0.01)

    async def run() -> None:
        await worker.start()  # every scan takes the batch up again, until it is given up
        deadline = time.monotonic() + DEADLINE_S
        while stored_batch(store, batch_id)["status"] not in ("failed", "cancelled"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        while worker._jobs:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await worker.aclose()

    stack.loop.run(run())
    batch = stored_batch(store, batch_id)
    assert len(attempts) == MAX_ATTEMPTS and held.calls == {}
    if cancel:
        assert batch["status"] == "cancelled" and batch["cancelled_at"]
    else:
        assert batch["status"] == "failed" and batch["failed_at"]
        assert [e["code"] for e in batch["errors"]["data"]] == ["batch_failed"]
        assert "reading its input file" in batch["errors"]["data"][0]["message"]
    assert {kind for (_, kind, _) in store.records} == {KIND}  # markers and lease gone


def test_parse_input_counts_lines_from_one_and_skips_blank_ones() -> None:
    raw = jsonl([chat_line("a")]) + b"\n\n" + jsonl([chat_line("b")]) + b"{"
    chunks = [raw[i:i + 7] for i in range(0, len(raw), 7)]  # lines split across chunks
    lines, errors = parse_input(chunks, "/v1/chat/completions")
    assert [line.custom_id for line in lines] == ["a", "b"]
    assert json.loads(lines[0].body)["model"] == "solo-model"
    assert [(e["line"], e["code"]) for e in errors] == [(5, "invalid_json_line")]


@pytest.mark.parametrize("body", [
    b'{"object": "list", "data": [1, "two"]}',  # one line: kept as it is
    b'{\n  "pretty": "printed"\n}',  # several lines: re-encoded on one
    "{\"caf\u00e9\": 1}".encode("utf-16"),  # JSON, not UTF-8
    b"not json at all",  # kept as a string
])
def test_every_result_is_one_line_of_json(body: bytes) -> None:
    line = result_line("batch_req_1", 'id "quoted"', 200, "req_1", body)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["custom_id"] == 'id "quoted"' and parsed["error"] is None
    assert parsed["response"]["status_code"] == 200
    expected = body.decode() if body.startswith(b"not") else json.loads(body)
    assert parsed["response"]["body"] == expected


class Scanned(bytes):
    """A chunk that counts the bytes searched for a newline in it."""

    searched = 0

    def find(self, sub: Any, start: Any = 0, *rest: Any) -> int:
        found = super().find(sub, start, *rest)
        Scanned.searched += (found + 1 if found >= 0 else len(self)) - int(start)
        return found


def test_lines_are_split_in_one_pass_and_an_overlong_line_is_a_line_error() -> None:
    long = b'{"custom_id": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    data = long + b"\n" + b"y" * (16 * 1024 * 1024) + b"\n\n" + jsonl([chat_line("ok")])
    Scanned.searched = 0
    split = list(_split_lines(Scanned(data[i:i + 65536])
                              for i in range(0, len(data), 65536)))
    assert Scanned.searched == len(data)  # every byte looked at once, not once per chunk
    assert [(number, None if line is None else len(line)) for number, line in split] == [
        (1, len(long)), (2, None), (4, len(jsonl([chat_line("ok")])) - 1)]
    lines, errors = parse_input([data], "/v1/chat/completions")
    assert [(e["line"], e["code"]) for e in errors][:2] == [
        (1, "invalid_method"), (2, "line_too_large")]
    assert [line.custom_id for line in lines] == ["ok"]


def test_parse_input_refuses_more_than_the_line_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("domicile.gateway.batch_jobs.MAX_LINES", 3)
    lines, errors = parse_input([jsonl([chat_line(str(i)) for i in range(5)])],
                                "/v1/chat/completions")
    assert len(lines) == 3 and [e["code"] for e in errors] == ["too_many_tasks"]


# -- cancel -------------------------------------------------------------------------------------


def test_a_cancelled_batch_accounts_for_every_line_once(
        stack: Stack, regional: openai.OpenAI) -> None:
    hold = threading.Event()
    upstream = stack.upstreams["eu-solo"]
    upstream.behaviour.hold = hold
    ids = [f"c{i}" for i in range(40)]
    lines = [chat_line(i, "dev-echo") for i in ids[:5]] + [chat_line(i) for i in ids[5:]]
    batch = regional.batches.create(input_file_id=upload(regional, lines),
                                    endpoint="/v1/chat/completions", completion_window="24h")
    try:
        wait_for(regional, batch.id, lambda b: b.request_counts is not None
                 and b.request_counts.completed >= 5 and upstream.holding > 0)
        cancelling = regional.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        done = wait_for(regional, batch.id)
    finally:
        hold.set()
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    output = file_lines(regional, done.output_file_id)
    errors = file_lines(regional, done.error_file_id)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(ids)
    assert {line["custom_id"] for line in output} >= set(ids[:5])
    assert any(line["error"] and line["error"]["code"] == "batch_cancelled" for line in errors)
    assert done.request_counts is not None
    assert done.request_counts.completed + done.request_counts.failed == 40
    assert regional.batches.cancel(batch.id).status == "cancelled"  # idempotent
    finished = regional.batches.create(input_file_id=upload(regional, [chat_line("z")]),
                                       endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(regional, finished.id)
    with pytest.raises(openai.ConflictError):
        regional.batches.cancel(finished.id)


# -- the line runner ----------------------------------------------------------------------------


def test_run_line_answers_as_the_endpoint_would(stack: Stack) -> None:
    route = stack.eu_app.routes.exact("POST", "/v1/chat/completions")
    assert route is not None
    body = json.dumps({"model": "solo-model",
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    answer = stack.loop.run(run_line(route, REGIONAL, body, b"eu"))
    assert answer.status == 200 and answer.provider == "eu-solo"
    assert ChatCompletion.model_validate_json(answer.body).choices[0].message.content == (
        "eu-solo says: hi")
    assert (answer.prompt_tokens, answer.completion_tokens) == (11, 7)
    assert answer.request_id.startswith("req_")
    # Errors are rendered in OpenAI's shape, never raised.
    broken = stack.loop.run(run_line(route, REGIONAL, b'{"model": ', b"eu"))
    assert broken.status == 400 and json.loads(broken.body)["error"]["type"]
    unknown = stack.loop.run(run_line(route, REGIONAL, body.replace(b"solo-model", b"nope"),
                                      b"eu"))
    assert unknown.status == 404
    assert json.loads(unknown.body)["error"]["code"] == "model_not_found"


def test_run_line_catches_what_a_handler_raises(stack: Stack) -> None:
    async def explodes(call: Exchange, grant: ApiKeyGrant) -> None:
        raise RuntimeError("CANARY content in an exception")

    answer = stack.loop.run(run_line(Route("POST", "/v1/x", explodes, "x"), REGIONAL, b"{}",
                                     b"eu"))
    assert answer.status == 500 and b"CANARY" not in answer.body


# -- a worker stopped half-way ------------------------------------------------------------------


class HeldChat:
    """A chat route whose lines saying "hold" wait until the test lets go; counts calls."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.gate = asyncio.Event()
        self.holding = 0

    async def handle(self, call: Exchange, grant: ApiKeyGrant) -> None:
        body = json.loads(await call.read_body())
        said = body["messages"][0]["content"]
        self.calls[said] = self.calls.get(said, 0) + 1
        if said.startswith("hold"):
            self.holding += 1
            await self.gate.wait()
        await call.respond_json({"said": said})

    def routes(self) -> RouteTable:
        return RouteTable([Route("POST", "/v1/chat/completions", self.handle, "chat")])


def make_batch(store: MemoryContentStore, lines: list[Any], created: int | None = None) -> str:
    store.put_blob(TENANT, "file", "file-input0", "in.jsonl", [jsonl(lines)],
                   {"purpose": "batch"})
    record = BatchRecord(batch_object("batch_resume0", "file-input0", "/v1/chat/completions",
                                      None, created), REGIONAL)
    store.put_record(TENANT, ACTIVE_KIND, "batch_resume0", b"{}")
    store.put_record(TENANT, KIND, "batch_resume0", record.dump())
    return "batch_resume0"


def stored_batch(store: MemoryContentStore, batch_id: str) -> dict[str, Any]:
    raw = store.get_record(TENANT, KIND, batch_id)
    assert raw is not None
    return BatchRecord.load(raw).batch


def test_a_worker_stopped_half_way_resumes_with_every_line_once(stack: Stack) -> None:
    store = MemoryContentStore(region="eu")
    lines = ([chat_line(f"fast-{i}", content=f"fast {i}") for i in range(30)]
             + [chat_line(f"held-{i}", content=f"hold {i}") for i in range(10)])
    batch_id = make_batch(store, lines)
    first = HeldChat()
    worker = BatchWorker(store, "eu", first.routes, lines_per_project=12, flush_lines=4,
                         flush_s=0.05)

    async def until(check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not check():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    async def first_run() -> None:
        await worker.start()
        await until(lambda: stored_batch(store, batch_id)["request_counts"]["completed"] == 30
                    and first.holding == 10)
        await worker.aclose()  # a server stop: the held lines are cut off

    stack.loop.run(first_run())
    interrupted = stored_batch(store, batch_id)
    assert interrupted["status"] == "in_progress"
    assert interrupted["request_counts"] == {"total": 40, "completed": 30, "failed": 0}
    # Released on stop: free for the next start at once.
    assert json.loads(store.records[(TENANT.id, LEASE_KIND, batch_id)]) == {"owner": None}
    assert any(kind == PART_KIND for (_, kind, _) in store.records)

    second = HeldChat()
    second.gate.set()
    again = BatchWorker(store, "eu", second.routes, flush_s=0.05)

    async def second_run() -> None:
        await again.start()  # finds the batch by itself, as at a server's start
        await until(lambda: stored_batch(store, batch_id)["status"] == "completed")
        await again.aclose()

    stack.loop.run(second_run())
    done = stored_batch(store, batch_id)
    assert done["request_counts"] == {"total": 40, "completed": 40, "failed": 0}
    assert set(second.calls) == {f"hold {i}" for i in range(10)}  # only what was not done
    output = [json.loads(line) for line in
              b"".join(store.open_blob(TENANT, "file", done["output_file_id"])).splitlines()]
    assert sorted(line["custom_id"] for line in output) == sorted(
        line["custom_id"] for line in lines)
    assert {kind for (_, kind, _) in store.records} == {KIND}


def test_a_projects_batches_share_its_bound_on_lines_at_once(stack: Stack) -> None:
    store = MemoryContentStore(region="eu")
    for batch_id in ("batch_one0", "batch_two0"):
        store.put_blob(TENANT, "file", f"file-{batch_id[6:]}", "in.jsonl",
                       [jsonl([chat_line(f"{batch_id}-{i}", content=f"hold {batch_id} {i}")
                               for i in range(5)])], {"purpose": "batch"})
        record = BatchRecord(batch_object(batch_id, f"file-{batch_id[6:]}",
                                          "/v1/chat/completions", None), REGIONAL)
        store.put_record(TENANT, ACTIVE_KIND, batch_id, b"{}")
        store.put_record(TENANT, KIND, batch_id, record.dump())
    held = HeldChat()
    worker = BatchWorker(store, "eu", held.routes, lines_per_project=3, flush_s=0.05)

    async def run() -> int:
        await worker.start()
        deadline = time.monotonic() + DEADLINE_S
        while not (len(worker._running) == 2 and held.holding >= 3
                   and all(job.runners for job in worker._running.values())):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        for _ in range(100):  # every runner of both batches gets its turns
            await asyncio.sleep(0)
        holding = held.holding
        held.gate.set()
        while stored_batch(store, "batch_one0")["status"] != "completed" or stored_batch(
                store, "batch_two0")["status"] != "completed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await worker.aclose()
        return holding

    assert stack.loop.run(run()) == 3
    assert len(held.calls) == 10


def test_batches_beyond_the_bound_wait_their_turn_unread(stack: Stack) -> None:
    store = MemoryContentStore(region="eu")
    names = ("batch_one0", "batch_two0", "batch_three0")
    for batch_id in names:
        store.put_blob(TENANT, "file", f"file-{batch_id[6:]}", "in.jsonl",
                       [jsonl([chat_line(f"{batch_id}-{i}", content=f"hold {batch_id} {i}")
                               for i in range(3)])], {"purpose": "batch"})
        record = BatchRecord(batch_object(batch_id, f"file-{batch_id[6:]}",
                                          "/v1/chat/completions", None), REGIONAL)
        store.put_record(TENANT, ACTIVE_KIND, batch_id, b"{}")
        store.put_record(TENANT, KIND, batch_id, record.dump())
    held = HeldChat()
    worker = BatchWorker(store, "eu", held.routes, flush_s=0.05, batches_at_once=1)
    running: list[int] = []
    handle = held.handle

    async def noting(call: Exchange, grant: ApiKeyGrant) -> None:
        running.append(len(worker._running))
        await handle(call, grant)

    held.handle = noting  # type: ignore[method-assign]

    async def run() -> None:
        deadline = time.monotonic() + DEADLINE_S
        await worker.start()
        # One batch runs (its lines wait upstream), the two others wait for its slot.
        while not (held.holding == 3 and worker.queued == 2):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert len(worker._running) == 1
        waiting = [b for b in names if b not in worker._running]
        assert all(stored_batch(store, b)["status"] == "validating" for b in waiting)
        assert all((TENANT.id, LEASE_KIND, b) not in store.records for b in waiting)
        held.gate.set()
        while any(stored_batch(store, b)["status"] != "completed" for b in names):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await worker.aclose()

    stack.loop.run(run())
    assert len(held.calls) == 9 and max(running) == 1


def test_a_batch_past_its_window_expires_with_every_line_in_the_error_file(
        stack: Stack) -> None:
    store = MemoryContentStore(region="eu")
    batch_id = make_batch(store, [chat_line(f"late-{i}") for i in range(5)],
                          created=int(time.time()) - 25 * 3600)  # a server down for a day
    held = HeldChat()
    worker = BatchWorker(store, "eu", held.routes, flush_s=0.05)

    async def run() -> None:
        worker.submit(TENANT.id, batch_id)
        await worker._jobs[batch_id]

    stack.loop.run(run())
    done = stored_batch(store, batch_id)
    assert done["status"] == "expired" and done["expired_at"] and held.calls == {}
    assert done["request_counts"] == {"total": 5, "completed": 0, "failed": 5}
    assert done["output_file_id"] is None
    errors = [json.loads(line) for line in
              b"".join(store.open_blob(TENANT, "file", done["error_file_id"])).splitlines()]
    assert sorted(e["custom_id"] for e in errors) == [f"late-{i}" for i in range(5)]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_a_batch_another_worker_holds_is_left_alone(stack: Stack) -> None:
    store = MemoryContentStore(region="eu")
    batch_id = make_batch(store, [chat_line("a")])
    store.put_record(TENANT, LEASE_KIND, batch_id, b'{"owner": "elsewhere"}')
    held = HeldChat()
    worker = BatchWorker(store, "eu", held.routes, flush_s=0.05, lease_s=60)

    async def run() -> None:
        worker.submit(TENANT.id, batch_id)
        await worker._jobs[batch_id]  # given up at once (or, were the lease ignored, run)
        await worker.aclose()

    stack.loop.run(run())
    assert held.calls == {} and stored_batch(store, batch_id)["status"] == "validating"


def test_two_workers_on_one_batch_end_it_once_with_every_line_once(stack: Stack) -> None:
    """A worker that stalls past another's idea of staleness loses the batch: its renewal (a
    compare-and-swap on the owner) fails and it stops without writing; the taker runs every
    line no part holds, and the batch ends completed with each custom_id once."""
    store = MemoryContentStore(region="eu")
    ids = [f"two-{i}" for i in range(40)]
    batch_id = make_batch(store, [chat_line(i, content=f"hold {i}") for i in ids])
    held = HeldChat()
    first = BatchWorker(store, "eu", held.routes, flush_s=0.05, lines_per_project=8)
    taker = BatchWorker(store, "eu", held.routes, flush_s=0.05, lease_s=0.3, rescan_s=0.05)
    lease = (TENANT.id, LEASE_KIND, batch_id)

    async def until(check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not check():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    async def run() -> None:
        first.submit(TENANT.id, batch_id)
        await until(lambda: held.holding >= 8)  # the first worker's lines wait upstream
        await taker.start()  # judges the first one's lease stale after 0.3 s, takes it
        await until(lambda: json.loads(store.records[lease])["owner"] == taker._owner)
        held.gate.set()
        await until(lambda: stored_batch(store, batch_id)["status"] == "completed"
                    and not first._jobs and not taker._jobs)
        await first.aclose()
        await taker.aclose()

    stack.loop.run(run())
    done = stored_batch(store, batch_id)
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 40, "completed": 40, "failed": 0}
    output = [json.loads(line) for line in
              b"".join(store.open_blob(TENANT, "file", done["output_file_id"])).splitlines()]
    assert sorted(line["custom_id"] for line in output) == sorted(ids)
    # Nothing left behind: no part, marker or lease; no file but the input and the output.
    assert {kind for (_, kind, _) in store.records} == {KIND}
    assert sorted(blob_id for (_, _, blob_id) in store.blobs) == sorted(
        ["file-input0", done["output_file_id"]])


def test_the_lease_is_renewed_while_the_input_is_read(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryContentStore(region="eu")
    batch_id = make_batch(store, [chat_line("a")])
    reading = threading.Event()
    go_on = threading.Event()
    parse = parse_input

    def slow_parse(chunks: Any, endpoint: str) -> Any:
        reading.set()
        assert go_on.wait(DEADLINE_S)  # a long read of a big input file
        return parse(chunks, endpoint)

    monkeypatch.setattr("domicile.gateway.batch_jobs.parse_input", slow_parse)
    held = HeldChat()
    held.gate.set()
    worker = BatchWorker(store, "eu", held.routes, flush_s=0.05, lease_s=0.3)
    lease = (TENANT.id, LEASE_KIND, batch_id)

    async def run() -> None:
        deadline = time.monotonic() + DEADLINE_S
        worker.submit(TENANT.id, batch_id)
        while not reading.is_set():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        claimed = store.written[lease]
        # Renewed (every 0.1 s) while the read goes on: another process never sees it stale.
        while store.written[lease] < claimed + 0.25:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert json.loads(store.records[lease])["owner"] == worker._owner
        go_on.set()
        await worker._jobs[batch_id]
        await worker.aclose()

    try:
        stack.loop.run(run())
    finally:
        go_on.set()
    assert stored_batch(store, batch_id)["status"] == "completed"


# -- the store's additions, on real stores ------------------------------------------------------


def test_a_claim_is_taken_once_until_it_goes_stale(site: Site) -> None:
    store = site.store("eu")
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu", retention="regional")
    tenant = TenantRef(project.id, "eu", org.id)
    assert store.claim_record(tenant, LEASE_KIND, "batch_x", b"one", stale_after=60)
    assert not store.claim_record(tenant, LEASE_KIND, "batch_x", b"two", stale_after=60)
    assert store.get_record(tenant, LEASE_KIND, "batch_x") == b"one"
    assert store.claim_record(tenant, LEASE_KIND, "batch_x", b"three", stale_after=0)
    assert store.get_record(tenant, LEASE_KIND, "batch_x") == b"three"
    # With `expect`: a compare-and-swap on what the record holds, whatever its age.
    assert not store.claim_record(tenant, LEASE_KIND, "batch_x", b"four", stale_after=0,
                                  expect=b"one")
    assert store.claim_record(tenant, LEASE_KIND, "batch_x", b"four", stale_after=60,
                              expect=b"three")
    assert store.get_record(tenant, LEASE_KIND, "batch_x") == b"four"
    assert not store.claim_record(tenant, LEASE_KIND, "batch_w", b"x", stale_after=0,
                                  expect=b"x")
    assert store.get_record(tenant, LEASE_KIND, "batch_w") is None
    other = site.directory.create_project(org.id, "other", "eu", retention="regional")
    store.put_record(TenantRef(other.id, "eu", org.id), ACTIVE_KIND, "batch_y", b"{}")
    store.put_record(tenant, ACTIVE_KIND, "batch_z", b"{}")
    assert sorted(store.records_of_kind(ACTIVE_KIND)) == sorted(
        [(other.id, "batch_y"), (project.id, "batch_z")])
    assert store.records_of_kind(LEASE_KIND) == [(project.id, "batch_x")]


def test_http_shapes_of_list_and_errors(stack: Stack, regional: openai.OpenAI) -> None:
    listing = stack.http().get("/v1/batches",
                               headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    assert listing.json() == {"object": "list", "data": [], "has_more": False,
                              "first_id": None, "last_id": None}
    bad = stack.http().post("/v1/batches", content=b"[]",
                            headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    assert bad.status_code == 400 and set(bad.json()["error"]) >= {"message", "code"}
    assert isinstance(bad, httpx.Response)


# -- on a real site: export covers a batch, erasure stops one -----------------------------------


@dataclass
class RealSite:
    site: Site
    served: ServedApp
    project: str
    client: openai.OpenAI
    upstream: FakeUpstream

    def erasure(self) -> Erasure:
        return Erasure(self.site.directory, self.site.store, list(self.site.settings.regions),
                       self.site.directory_engine)


@pytest.fixture
def real(served: Stack, tmp_path: Path) -> Iterator[RealSite]:
    """A site's `RegionalStore` (SQLite, sealed blobs) behind its own gateway, whose one chat
    provider is the stack's eu-solo upstream."""
    site = Site(init_site(tmp_path / "site", port_base=18650))
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu", retention="regional")
    key = site.directory.create_api_key(project.id).secret
    store = site.store("eu")
    upstream = served.upstreams["eu-solo"]
    upstream.reset()
    providers = build_providers(make_settings(tmp_path, eu=[provider(
        "eu-solo", "openai-compatible", ["solo-model"], base_url=upstream.base_url)],
        us=[]).region("eu"))
    app = create_gateway_app(site.settings, "eu", authenticator=site.directory,
                             usage_sink=store, content_store=store, providers=providers)
    serving = ServedApp(served.loop, app)
    client = openai.OpenAI(base_url=serving.url + "/v1", api_key=key, max_retries=0,
                           timeout=20, _strict_response_validation=True)
    yield RealSite(site, serving, project.id, client, upstream)
    upstream.reset()
    serving.stop()
    site.close()


def test_an_export_holds_a_batch_and_its_files(real: RealSite, tmp_path: Path) -> None:
    batch = real.client.batches.create(
        input_file_id=upload(real.client, [chat_line(f"x{i}") for i in range(3)]),
        endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(real.client, batch.id)
    assert done.status == "completed"
    summary = Exporter(real.site.directory, real.site.store,
                       list(real.site.settings.regions)).export(
        "project", real.project, tmp_path / "export.zip")
    with zipfile.ZipFile(summary.path) as archive:
        names = archive.namelist()
        kept = json.loads(archive.read(next(n for n in names if n.endswith(f"{batch.id}.json")
                                            and "/records/batch/" in n)))
        output = [n for n in names if f"/{done.output_file_id}/" in n]
    assert kept["batch"]["status"] == "completed" and kept["batch"]["id"] == batch.id
    assert len(output) == 1 and any(f"/{batch.input_file_id}/" in n for n in names)


def test_erasing_the_project_stops_its_running_batch(real: RealSite) -> None:
    worker = real.served.app._batches.worker
    assert worker is not None
    hold = threading.Event()
    real.upstream.behaviour.hold = hold
    try:
        batch = real.client.batches.create(
            input_file_id=upload(real.client, [chat_line(f"e{i}") for i in range(100)]),
            endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(real.client, batch.id, lambda b: real.upstream.holding == 32)  # the bound
        real.erasure().erase("project", real.project)
        # The worker sees its rows gone and stops, while its lines still wait upstream (the
        # upstream lets a held request go after HOLD_LIMIT_S: well past this deadline).
        deadline = time.monotonic() + HOLD_LIMIT_S / 3
        while batch.id in worker._jobs:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        hold.set()
    assert len(real.upstream.received) == 32  # nothing sent after the erasure
    with real.site.store("eu").engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM records WHERE tenant_id = :t"),
                            {"t": real.project}).scalar()
    assert left == 0
