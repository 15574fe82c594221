"""Usage metadata: token counts read cheaply from upstream answers, batched off the hot path.

Every `/v1` request past authentication leaves one `UsageRecord` (ids, endpoint, model,
provider, status, token counts, latency): never content. Requests only append a tuple to an
in-memory buffer; a background task hands the buffer to the region's `UsageSink` in a thread
every `interval` seconds, or sooner once `batch_size` records are waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from domicile.storage.interfaces import UsageRecord, UsageSink

__all__ = ["SseUsageScanner", "UsageRecorder", "usage_counts"]

log = logging.getLogger("domicile.gateway")

_DECODER = json.JSONDecoder()
# Every usage object (chat's prompt_/completion_tokens, the Responses API's input_/output_
# tokens) has a key ending so; an SSE chunk without it cannot carry one.
_USAGE_MARKER = b'_tokens"'
_MAX_PENDING = 1 << 20

_Row = tuple[float, str, str, str, str, str | None, int, int, int, float, str]


def _counts(usage: object) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (
        prompt if type(prompt) is int else 0,
        completion if type(completion) is int else 0,
    )


def usage_counts(body: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens from an OpenAI-shaped JSON answer; (0, 0) when absent.

    Decodes only the `usage` object (found from the end, where OpenAI puts it) instead of
    the whole answer; falls back to a full parse if that does not work out.
    """
    at = body.rfind(b'"usage"')
    if at < 0:
        return 0, 0
    colon = body.find(b":", at + 7)
    try:
        usage, _ = _DECODER.raw_decode(body[colon + 1 :].decode().lstrip())
        return _counts(usage)
    except ValueError:
        pass
    try:
        parsed = json.loads(body)
    except ValueError:
        return 0, 0
    return _counts(parsed.get("usage") if isinstance(parsed, dict) else None)


class SseUsageScanner:
    """Finds the usage object in a relayed SSE stream without parsing every chunk.

    Only whole lines are looked at (the unfinished last line waits for the next read; SSE
    chunks almost always end a line, so this rarely copies), and a line is only parsed
    when it holds the usage marker.
    """

    __slots__ = ("_tail", "completion_tokens", "prompt_tokens")

    def __init__(self) -> None:
        self._tail = b""
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._tail = data if len(data) < _MAX_PENDING else b""
            return
        self._tail = data[cut + 1:]
        if _USAGE_MARKER in data:
            self._scan(data[:cut])

    def _scan(self, lines: bytes) -> None:
        for line in lines.split(b"\n"):
            if _USAGE_MARKER in line and line.startswith(b"data:"):
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue
                if isinstance(event, dict):
                    prompt, completion = _counts(event.get("usage"))
                    if prompt or completion:
                        self.prompt_tokens, self.completion_tokens = prompt, completion


class UsageRecorder:
    """Buffers usage rows in memory; a background task writes them through the sink."""

    def __init__(
        self,
        sink: UsageSink,
        region: str,
        *,
        interval: float = 0.5,
        batch_size: int = 256,
        max_buffered: int = 100_000,
    ) -> None:
        self._sink = sink
        self._region = region
        self._interval = interval
        self._batch_size = batch_size
        self._max_buffered = max_buffered
        self._buffer: list[_Row] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.dropped = 0

    def add(
        self,
        project_id: str,
        key_id: str,
        endpoint: str,
        model: str,
        provider: str | None,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: float,
        request_id: str,
    ) -> None:
        buffer = self._buffer
        if len(buffer) >= self._max_buffered:
            self.dropped += 1  # the sink is down for long: bound memory rather than grow
            return
        buffer.append((time.time(), project_id, key_id, endpoint, model, provider, status,
                       prompt_tokens, completion_tokens, latency_ms, request_id))
        if len(buffer) >= self._batch_size:
            self._wake.set()

    async def start(self) -> None:
        if self._executor is None:
            # One thread: batches reach the sink in order, never two at once.
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="domicile-usage")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="domicile-usage-flush")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._write, rows)
        except Exception as exc:
            # The type only: a sink's message might quote values.
            log.warning("usage flush failed (%s); keeping %d records for the next try",
                        type(exc).__name__, len(rows))
            room = self._max_buffered - len(self._buffer)
            self.dropped += max(0, len(rows) - room)
            self._buffer[:0] = rows[:room]

    def _write(self, rows: list[_Row]) -> None:
        region = self._region
        self._sink.write_usage([
            UsageRecord(
                at=datetime.fromtimestamp(at, UTC), region=region, project_id=project_id,
                key_id=key_id, endpoint=endpoint, model=model, provider=provider,
                status=status, prompt_tokens=prompt, completion_tokens=completion,
                latency_ms=latency_ms, request_id=request_id,
            )
            for (at, project_id, key_id, endpoint, model, provider, status, prompt, completion,
                 latency_ms, request_id) in rows
        ])
