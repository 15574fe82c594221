"""Usage metadata: token counts, batched writes off the hot path, and never content."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Sequence

import openai
import pytest

from domicile.inference.usage import SseUsageScanner, UsageRecorder, usage_counts
from domicile.storage.interfaces import UsageRecord
from tests.gateway.conftest import EU_REGIONAL_KEY, Stack
from tests.gateway.support import MemoryUsageSink

CANARY = "CANARY-7f3a-do-not-keep"


def _wait_for_records(stack: Stack, count: int, seconds: float = 3.0) -> list[UsageRecord]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(stack.sink.records) < count:
        time.sleep(0.05)
    return list(stack.sink.records)


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}',
     (3, 4)),
    (b'{"usage": {"input_tokens": 5, "output_tokens": 6}}', (5, 6)),
    (b'{"data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}', (9, 0)),
    (b'{"usage":null}', (0, 0)),
    (b'{"choices":[{"message":{"content":"the \\"usage\\" is high"}}]}', (0, 0)),
    (b'{"x":"usage","usage":{"prompt_tokens":1,"completion_tokens":2}}', (1, 2)),
    (b'not json "usage": {', (0, 0)),
    (b'{"usage":{"prompt_tokens":"many"}}', (0, 0)),
])
def test_usage_counts_reads_the_usage_object(body: bytes, expected: tuple[int, int]) -> None:
    assert usage_counts(body) == expected


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_the_scanner_finds_usage_split_across_reads() -> None:
    stream = (_event({"choices": [{"delta": {"content": "hi"}}], "usage": None})
              + _event({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5}})
              + b"data: [DONE]\n\n")
    for size in (1, 3, 7, 64, len(stream)):
        scanner = SseUsageScanner()
        for at in range(0, len(stream), size):
            scanner.feed(stream[at:at + size])
        assert (scanner.prompt_tokens, scanner.completion_tokens) == (12, 5), size


def test_the_scanner_ignores_streams_without_usage() -> None:
    scanner = SseUsageScanner()
    scanner.feed(_event({"choices": [{"delta": {"content": "max_tokens\" is a word"}}]}))
    scanner.feed(b"data: [DONE]\n\n")
    assert (scanner.prompt_tokens, scanner.completion_tokens) == (0, 0)


def _add(recorder: UsageRecorder, n: int) -> None:
    for i in range(n):
        recorder.add("proj", "key", "/v1/x", "m", None, 200, i, 0, 1.0, f"req_{i}")


async def test_the_recorder_flushes_on_a_full_batch_before_the_interval() -> None:
    sink = MemoryUsageSink()
    recorder = UsageRecorder(sink, "eu", interval=30, batch_size=10)
    await recorder.start()
    _add(recorder, 10)
    for _ in range(100):
        if sink.records:
            break
        await asyncio.sleep(0.01)
    assert len(sink.records) == 10
    assert sink.records[0].region == "eu"
    await recorder.aclose()


async def test_the_recorder_flushes_on_its_interval_and_at_close() -> None:
    sink = MemoryUsageSink()
    recorder = UsageRecorder(sink, "eu", interval=0.05, batch_size=1000)
    await recorder.start()
    _add(recorder, 3)
    await asyncio.sleep(0.3)
    assert len(sink.records) == 3
    _add(recorder, 2)
    await recorder.aclose()
    assert len(sink.records) == 5


async def test_a_failing_sink_keeps_records_and_logs_only_the_type(
        caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(MemoryUsageSink):
        fail = True

        def write_usage(self, records: Sequence[UsageRecord]) -> None:
            if self.fail:
                self.fail = False
                raise RuntimeError("secret detail")
            super().write_usage(records)

    sink = Flaky()
    recorder = UsageRecorder(sink, "eu", interval=30)
    _add(recorder, 4)
    with caplog.at_level(logging.WARNING, logger="domicile.gateway"):
        await recorder.flush()
    assert sink.records == []
    assert "RuntimeError" in caplog.text and "secret detail" not in caplog.text
    await recorder.flush()
    assert len(sink.records) == 4


async def test_the_recorder_bounds_its_memory() -> None:
    recorder = UsageRecorder(MemoryUsageSink(), "eu", max_buffered=5)
    _add(recorder, 8)
    assert recorder.dropped == 3


def test_records_carry_tokens_and_ids_but_no_content(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    messages = [{"role": "user", "content": f"tell me about {CANARY}"}]
    client.chat.completions.create(model="solo-model", messages=messages)
    list(client.chat.completions.create(model="dev-echo", messages=messages, stream=True,
                                        stream_options={"include_usage": True}))
    client.embeddings.create(model="dev-echo", input=[CANARY], encoding_format="float")
    client.responses.create(model="dev-echo", input=CANARY, store=False)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"model-{CANARY}"[:20], messages=messages)
    records = _wait_for_records(stack, 5)
    assert [r.endpoint for r in records] == [
        "/v1/chat/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses",
        "/v1/chat/completions"]
    solo, stream, embeddings, responses, missing = records
    assert (solo.provider, solo.prompt_tokens, solo.completion_tokens) == ("eu-solo", 11, 7)
    assert (stream.provider, stream.prompt_tokens, stream.completion_tokens) == (
        "eu-dev", 4, 4)
    assert embeddings.prompt_tokens == 1
    assert responses.provider == "eu-dev" and responses.completion_tokens == 1
    assert (missing.status, missing.provider, missing.model) == (404, None, "")
    assert solo.model == "solo-model"
    for record in records:
        assert record.project_id == "proj_key_eu_regional"
        assert record.key_id == "key_eu_regional"
        assert record.region == "eu"
        assert record.request_id.startswith("req_")
        assert record.latency_ms > 0
        for value in dataclasses.astuple(record):
            assert "CANARY" not in str(value)


def test_auth_failures_leave_no_usage(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        stack.client("dk-eu-unknown-000000000").models.list()
    stack.client().models.list()
    records = _wait_for_records(stack, 1)
    time.sleep(0.6)
    assert [r.endpoint for r in stack.sink.records] == ["/v1/models"] == [
        r.endpoint for r in records]
