"""Usage metadata: token counts read cheaply from upstream answers, batched off the hot path.

Every `/v1` request past authentication leaves one `UsageRecord` (ids, endpoint, model,
provider, status, token counts, latency): never content. Requests only append a tuple to an
in-memory buffer; a background task hands the buffer to the region's `UsageSink` in a thread
every `interval` seconds, or sooner once `batch_size` records are waiting.

Streamed chat answers carry token counts only when the request says
`stream_options.include_usage`. When a client streams without asking, the gateway asks for it
anyway (`request_usage`: a few bytes spliced into the request, no re-serialising) and takes
the extra usage chunk back out of the stream (`SseUsageStripper`), so the client gets the
stream it asked for and the tokens still count (usage metadata, per-key token limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from domicile.observability.metrics import TokenMetrics
from domicile.storage.interfaces import UsageRecord, UsageSink

__all__ = [
    "SseUsageScanner",
    "SseUsageStripper",
    "UsageRecorder",
    "request_usage",
    "token_counts",
    "usage_counts",
]

log = logging.getLogger("domicile.gateway")

_DECODER = json.JSONDecoder()
# Every usage object (chat's prompt_/completion_tokens, the Responses API's input_/output_
# tokens) has a key ending so; an SSE chunk without it cannot carry one.
_USAGE_MARKER = b'_tokens"'
_MAX_PENDING = 1 << 20
_USAGE_KEY = b'"usage"'
# What OpenAI adds to every other chunk once usage is asked for; taken back out. An unescaped
# quote cannot occur inside a JSON string, so these bytes are always a key and its value.
_NULL_USAGE = (b',"usage":null', b', "usage": null')
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'

_Row = tuple[float, str, str, str, str, str | None, int, int, int, float, str]


def token_counts(usage: object) -> tuple[int, int]:
    """(prompt, completion) tokens of a usage object, chat's or the Responses API's."""
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
        return token_counts(usage)
    except ValueError:
        pass
    try:
        parsed = json.loads(body)
    except ValueError:
        return 0, 0
    return token_counts(parsed.get("usage") if isinstance(parsed, dict) else None)


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
                    prompt, completion = token_counts(event.get("usage"))
                    if prompt or completion:
                        self.prompt_tokens, self.completion_tokens = prompt, completion


def request_usage(body: bytes, parsed: dict[str, Any]
                  ) -> tuple[bytes, dict[str, Any]] | None:
    """The stream request asking for usage, when the client did not: `(body, parsed)` with
    `"stream_options":{"include_usage":true}`, or None to leave the request as it is.

    `body` is known to be one JSON object (it parsed into `parsed`), so the common case (no
    `stream_options`) is a splice right after its opening brace: one copy of the bytes, no
    re-serialising. A client's own `stream_options` without `include_usage: true` (`{}`,
    `false`, `null`) is the rare case where the body is re-serialised: a second key would be
    a duplicate, which strict parsers refuse, and leaving it would let a stream escape
    token counting and limits.
    """
    if not parsed:
        return None
    if "stream_options" in parsed:
        options = parsed["stream_options"]
        if options is None:
            options = {}
        if not isinstance(options, dict) or options.get("include_usage") is True:
            return None  # asked already, or malformed: the upstream answers that
        rewritten = {**parsed, "stream_options": {**options, "include_usage": True}}
        return json.dumps(rewritten, ensure_ascii=False).encode(), rewritten
    at = body.find(b"{")
    # UTF-16/32 bodies (json.loads accepts them) hold NULs; UTF-8 JSON never does.
    if at < 0 or b"\x00" in body[:at + 2]:
        return None
    spliced = b"".join((body[:at + 1], _INCLUDE_USAGE, body[at + 1:]))
    return spliced, {"stream_options": {"include_usage": True}, **parsed}


def _event_start(data: bytes, at: int) -> int:
    """Where the SSE event holding byte `at` begins (events end with a blank line)."""
    lf, crlf = data.rfind(b"\n\n", 0, at), data.rfind(b"\r\n\r\n", 0, at)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _event_end(data: bytes, at: int) -> int:
    """Where the SSE event holding byte `at` ends, its blank line included."""
    lf, crlf = data.find(b"\n\n", at), data.find(b"\r\n\r\n", at)
    ends = [end for end in (lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)
            if end >= 0]
    return min(ends) if ends else len(data)


def _complete(data: bytes) -> int:
    """How many leading bytes of `data` are whole SSE events."""
    if data.endswith((b"\n\n", b"\r\n\r\n")):  # nearly always: a read ends an event
        return len(data)
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _event_json(event: bytes) -> object:
    """The JSON of an SSE event's `data` (its data lines joined), or None."""
    lines = [line[5:] for line in event.splitlines() if line.startswith(b"data:")]
    payload = b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)
    try:
        return json.loads(payload)
    except ValueError:
        return None


class SseUsageStripper:
    """Relays an SSE stream whose usage the gateway asked for, minus what that added.

    `feed` takes the upstream's bytes and returns the bytes for the client; `close` returns
    what is left at the end. Removed: the usage-only event (`"choices": []` with a `usage`
    object), whose counts become `prompt_tokens`/`completion_tokens`, and the
    `"usage": null` OpenAI puts in every other chunk.

    Only whole events are passed on: the bytes after a read's last blank line wait for the
    next read, since the usage event (or just its `"usage"` key) may be split across reads.
    That costs the client nothing (an SSE client acts on an event only at its blank line) and
    rarely copies (an upstream's read nearly always ends an event). Only events holding
    `"usage"` are looked at, and only those that also carry token counts are parsed. An
    event that never ends (over 1 MiB) is passed on as it is, and so is the rest of the
    stream; its tokens are still counted.
    """

    __slots__ = ("_held", "_scanner", "completion_tokens", "prompt_tokens")

    def __init__(self) -> None:
        self._held = b""
        self._scanner: SseUsageScanner | None = None  # set once past an endless event
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._scanner is not None:
            self._count(chunk)
            return chunk
        data = self._held + chunk if self._held else chunk
        cut = _complete(data)
        if cut == len(data):
            self._held = b""
        else:
            if len(data) - cut > _MAX_PENDING:  # not an SSE stream we can follow: let it be
                self._scanner = SseUsageScanner()
                self._held = b""
                self._count(data[cut:])
                return self._strip(data[:cut]) + data[cut:] if cut else data
            self._held = data[cut:]
            data = data[:cut]
        return self._strip(data) if data else data

    def close(self) -> bytes:
        """The bytes still held at the end of the stream (an event without its blank line)."""
        held, self._held = self._held, b""
        return self._strip(held) if held else held

    def _count(self, data: bytes) -> None:
        scanner = self._scanner
        assert scanner is not None
        scanner.feed(data)
        if scanner.prompt_tokens or scanner.completion_tokens:
            self.prompt_tokens = scanner.prompt_tokens
            self.completion_tokens = scanner.completion_tokens

    def _strip(self, data: bytes) -> bytes:
        if _USAGE_KEY not in data:  # the usual chunk: passed on untouched
            return data
        for null in _NULL_USAGE:
            if null in data:
                data = data.replace(null, b"")
        at = data.find(_USAGE_KEY)
        if at < 0:
            return data
        kept: list[bytes] = []
        done = 0
        while at >= 0:
            start, end = _event_start(data, at), _event_end(data, at)
            if _USAGE_MARKER in data[start:end] and self._usage_only(data[start:end]):
                kept.append(data[done:start])
                done = end
            at = data.find(_USAGE_KEY, end)
        if not done:
            return data
        kept.append(data[done:])
        return b"".join(kept)

    def _usage_only(self, event: bytes) -> bool:
        """Notes the event's token counts; True when it is the usage-only event."""
        parsed = _event_json(event)
        if not isinstance(parsed, dict):
            return False
        usage = parsed.get("usage")
        prompt, completion = token_counts(usage)
        if prompt or completion:
            self.prompt_tokens, self.completion_tokens = prompt, completion
        return isinstance(usage, dict) and parsed.get("choices") == []


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
        self._tokens = TokenMetrics(region)  # `domicile_tokens_total`, by provider

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
        if prompt_tokens or completion_tokens:
            self._tokens.add(provider, prompt_tokens, completion_tokens)
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
