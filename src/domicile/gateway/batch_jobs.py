"""The Batch API's rules, as plain functions: the Batch object, what a create request may
say, what an input file must hold (OpenAI's validation, line by line), the lines of the
output and error files, and the records a batch keeps in the region's store.

Records (kinds below, all sealed under the project's data key like every record, G5):
- `batch` (id `batch_…`): the Batch object as the API shows it, with the grant its lines run
  under and the ids its output files will take.
- `batch-part` (id `batch_….000001`): the results of a run of lines, written as they complete
  (one record per flush): the line's index, whether it succeeded, its tokens and its output
  line. A line is done once it is in a part; finalizing reads the parts, and nothing else.
- `batch-active` (id `batch_…`): present while the batch is unfinished, so the worker finds
  it again after a restart (`ContentStore.records_of_kind`); `batch-lease`: which process
  runs it; `batch-cancel`: a cancel asked for (by any process), until the batch ends.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from domicile.errors import InvalidInput
from domicile.tenancy.grants import ApiKeyGrant
from domicile.web.jsonbody import MAX_JSON_DEPTH, parse_json_object

__all__ = [
    "ACTIVE_KIND",
    "CANCEL_KIND",
    "ENDPOINTS",
    "KIND",
    "KINDS",
    "LEASE_KIND",
    "MAX_ATTEMPTS",
    "MAX_INPUT_BYTES",
    "MAX_LINES",
    "MAX_LINE_BYTES",
    "PART_KIND",
    "TERMINAL",
    "BatchRecord",
    "InputLine",
    "LineResult",
    "batch_object",
    "check_metadata",
    "parse_input",
    "result_line",
    "unfinished_line",
]

KIND = "batch"
PART_KIND = "batch-part"
ACTIVE_KIND = "batch-active"
LEASE_KIND = "batch-lease"
CANCEL_KIND = "batch-cancel"
KINDS = (KIND, PART_KIND, ACTIVE_KIND, LEASE_KIND, CANCEL_KIND)

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")
COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
MAX_LINES = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
MAX_LINE_BYTES = 10 * 1024 * 1024  # one request of a batch; a longer line is a line error
MAX_ERRORS = 100  # errors kept on a failed batch: the first ones, as OpenAI's list shows them
MAX_ATTEMPTS = 3  # a batch that fails this many times at one stage is failed, not retried
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def check_metadata(value: object) -> dict[str, str] | None:
    """OpenAI's metadata rule: at most 16 string pairs, keys ≤ 64 and values ≤ 512 chars."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in value.items()):
        raise InvalidInput("`metadata` must be an object of at most 16 string keys (64 "
                           "characters at most) and string values (512 at most).",
                           param="metadata")
    return dict(value)


def batch_object(batch_id: str, input_file_id: str, endpoint: str,
                 metadata: dict[str, str] | None, now: int | None = None) -> dict[str, Any]:
    """A new batch, as `openai.types.Batch` describes it: validating, nothing counted yet."""
    created = int(time.time()) if now is None else now
    return {
        "id": batch_id, "object": "batch", "endpoint": endpoint, "model": None,
        "errors": None, "input_file_id": input_file_id,
        "completion_window": COMPLETION_WINDOW, "status": "validating",
        "output_file_id": None, "error_file_id": None, "created_at": created,
        "in_progress_at": None, "expires_at": created + WINDOW_S, "finalizing_at": None,
        "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": _usage(0, 0),
        "metadata": metadata,
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


@dataclass
class BatchRecord:
    """What the `batch` record holds: the object shown, the grant, the output files' ids."""

    batch: dict[str, Any]
    grant: ApiKeyGrant
    output_file_id: str | None = None  # chosen when finalizing starts, so a retry reuses them
    error_file_id: str | None = None
    ending: str | None = None  # the status finalizing leads to (completed, cancelled, expired)
    # Unexpected failures so far, by stage (load, run, finalize): bounded by MAX_ATTEMPTS.
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.batch["id"])

    @property
    def status(self) -> str:
        return str(self.batch["status"])

    def dump(self) -> bytes:
        return json.dumps({"batch": self.batch, "grant": dataclasses.asdict(self.grant),
                           "files": [self.output_file_id, self.error_file_id],
                           "ending": self.ending, "failures": self.failures}).encode()

    @classmethod
    def load(cls, raw: bytes) -> BatchRecord:
        data = json.loads(raw)
        output, error = data.get("files") or [None, None]
        return cls(data["batch"], ApiKeyGrant(**data["grant"]), output, error,
                   data.get("ending"), dict(data.get("failures") or {}))

    def move(self, status: str, at: str | None = None) -> None:
        """To `status`, stamping `<at>_at` (or `<status>_at`) with now."""
        self.batch["status"] = status
        self.batch[f"{at or status}_at"] = int(time.time())

    def count(self, total: int, completed: int, failed: int, prompt: int,
              completion: int) -> None:
        self.batch["request_counts"] = {"total": total, "completed": completed,
                                        "failed": failed}
        self.batch["usage"] = _usage(prompt, completion)


@dataclass(frozen=True, slots=True)
class InputLine:
    custom_id: str
    body: bytes  # the request body, re-serialised: what the endpoint's handler reads
    model: str | None


@dataclass
class _Errors:
    found: list[dict[str, Any]] = field(default_factory=list)

    def add(self, code: str, message: str, line: int | None, param: str | None = None
            ) -> None:
        if len(self.found) < MAX_ERRORS:
            self.found.append({"code": code, "message": message, "param": param,
                               "line": line})


def _split_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line) of a JSONL stream; blank lines are skipped, as OpenAI.
    A line longer than `MAX_LINE_BYTES` comes as (number, None), its bytes dropped as they
    arrive. Each byte is searched for a newline once (the new chunk only, never what is
    held), and a line's pieces are joined once: linear in the input, however long a line."""
    pieces: list[bytes] = []
    held = 0  # bytes of the line so far
    number = 0
    too_long = False

    def hold(piece: bytes) -> None:
        nonlocal held, too_long
        held += len(piece)
        if held > MAX_LINE_BYTES:
            too_long = True
            pieces.clear()
        elif piece and not too_long:
            pieces.append(piece)

    def line() -> bytes | None:
        nonlocal held, too_long
        whole = None if too_long else b"".join(pieces)
        pieces.clear()
        held, too_long = 0, False
        return whole

    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            hold(chunk[start:end])
            number += 1
            whole = line()
            if whole is None or whole.strip():
                yield number, whole
            start = end + 1
        hold(chunk[start:])
    whole = line()
    if whole is None or whole.strip():
        yield number + 1, whole


def parse_input(chunks: Iterable[bytes], endpoint: str
                ) -> tuple[list[InputLine], list[dict[str, Any]]]:
    """The requests of an input file, or the errors that fail the batch (OpenAI's shape:
    code, message, param, line). Each line: a JSON object with a unique `custom_id`, `method`
    POST, `url` equal to the batch's endpoint and a `body` object that does not stream; at
    most `MAX_LINES` lines and `MAX_INPUT_BYTES` bytes."""
    lines: list[InputLine] = []
    errors = _Errors()
    seen: set[str] = set()
    size = 0

    def sized() -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_INPUT_BYTES:
                return
            yield chunk

    for number, raw in _split_lines(sized()):
        if len(lines) >= MAX_LINES:
            errors.add("too_many_tasks", f"The input file holds more than {MAX_LINES:,} "
                       "requests.", number)
            break
        if raw is None:
            errors.add("line_too_large", f"This line is longer than {MAX_LINE_BYTES:,} "
                       "bytes.", number)
            continue
        try:
            # The gateway's strict parse, as for a request body: any failure (not UTF-8, not
            # JSON, NaN, nested too deep, not an object) is this line's error, never a crash.
            item = parse_json_object(raw)
        except InvalidInput:
            errors.add("invalid_json_line", "This line is not a JSON object (strict UTF-8 "
                       f"JSON, finite numbers, nested at most {MAX_JSON_DEPTH} deep).", number)
            continue
        custom_id, body = item.get("custom_id"), item.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            errors.add("missing_required_parameter", "`custom_id` must be a non-empty "
                       "string.", number, "custom_id")
            continue
        if custom_id in seen:
            errors.add("duplicate_custom_id", "The custom_id of this line is not unique in "
                       "the batch.", number, "custom_id")
            continue
        seen.add(custom_id)
        if item.get("method") != "POST":
            errors.add("invalid_method", "`method` must be POST.", number, "method")
        elif item.get("url") != endpoint:
            errors.add("mismatched_endpoint", f"`url` must be the batch's endpoint, "
                       f"{endpoint}.", number, "url")
        elif not isinstance(body, dict):
            errors.add("missing_required_parameter", "`body` must be an object.", number,
                       "body")
        elif body.get("stream") is True:
            errors.add("invalid_request", "Streaming is not supported in a batch.", number,
                       "body.stream")
        else:
            model = body.get("model")
            lines.append(InputLine(custom_id, json.dumps(body).encode(),
                                   model if isinstance(model, str) else None))
    if size > MAX_INPUT_BYTES:
        errors.add("file_too_large", f"The input file is larger than {MAX_INPUT_BYTES:,} "
                   "bytes.", None)
    elif not lines and not errors.found:
        errors.add("empty_file", "The input file holds no requests.", None)
    return lines, errors.found


@dataclass(frozen=True, slots=True)
class LineResult:
    """One line done: its index in the input, whether it goes to the output file (a 2xx
    answer), its tokens, and its line of the output or error file."""

    index: int
    ok: bool
    prompt_tokens: int
    completion_tokens: int
    text: str

    def dump(self) -> list[Any]:
        return [self.index, self.ok, self.prompt_tokens, self.completion_tokens, self.text]

    @classmethod
    def load(cls, row: list[Any]) -> LineResult:
        return cls(int(row[0]), bool(row[1]), int(row[2]), int(row[3]), str(row[4]))


def result_line(line_id: str, custom_id: str, status: int, request_id: str,
                body: bytes) -> str:
    """An answered line, as OpenAI writes it (a non-2xx answer goes to the error file in
    the same shape)."""
    try:
        parsed: object = json.loads(body)
    except ValueError:
        parsed = body.decode("utf-8", "replace")
    else:
        if b"\n" not in body and b"\r" not in body and body.isascii():
            # Valid JSON on one line: kept as the endpoint wrote it (no second encoding).
            return (f'{{"id": "{line_id}", "custom_id": {json.dumps(custom_id)}, "response": '
                    f'{{"status_code": {status}, "request_id": "{request_id}", "body": '
                    f'{body.decode("ascii")}}}, "error": null}}')
    return json.dumps({"id": line_id, "custom_id": custom_id,
                       "response": {"status_code": status, "request_id": request_id,
                                    "body": parsed},
                       "error": None})


def unfinished_line(line_id: str, custom_id: str, status: str) -> str:
    """A line a cancelled or expired batch never ran: in the error file, so every custom_id
    is accounted for once."""
    code = "batch_expired" if status == "expired" else "batch_cancelled"
    message = ("This line was not run before the batch expired." if status == "expired"
               else "This line was not run: the batch was cancelled.")
    return json.dumps({"id": line_id, "custom_id": custom_id, "response": None,
                       "error": {"code": code, "message": message}})
