"""A chat completions SSE stream, translated into the Responses API's events as it comes.

`ResponseEventStream` is fed the upstream's bytes chunk by chunk and returns, for each, the
Responses events it makes (SSE `event:`/`data:` pairs, each with its `sequence_number`):

    response.created, response.in_progress                      (`opening`)
    response.output_item.added      (a message, or a function_call)
    response.content_part.added     (the message's output_text part)
    response.output_text.delta ...  /  response.function_call_arguments.delta ...
    response.output_text.done, response.content_part.done,
    response.function_call_arguments.done, response.output_item.done
    response.completed | response.incomplete    (`finish`, then `end`)
    response.failed                             (`fail`, then `end`)

Nothing waits for the whole answer: a text delta goes out with the chunk that carried it.
What is kept is what the closing events must repeat (each item's text and arguments so
far). The message item closes when the first function call starts (chat sends a turn's text
before its calls); function calls stay open until the end, so a provider that interleaves the
fragments of parallel calls still yields well-formed events. Token counts come from the
usage chunk the gateway asks for (`stream_options.include_usage`), read with the same
`token_counts` as every other usage.

Pure: no I/O, no clock but `ResponseDraft`'s; the endpoint relays what it returns.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domicile.inference.providers.shapes import new_id
from domicile.inference.usage import token_counts
from domicile.web.jsonbody import dump_json

from .responses_shapes import (
    ResponseDraft,
    assistant_message,
    function_call_item,
    output_text_part,
    usage_object,
)

__all__ = ["ResponseEventStream", "replay"]

# A str as a JSON string, as `dump_json` writes it (ensure_ascii off): the C encoder.
_json_string: Callable[[str], str] = json.encoder.encode_basestring
_MAX_PENDING = 1 << 20  # an SSE event longer than this is not one we can follow
_FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(slots=True)
class _Item:
    kind: str  # "message" | "function_call"
    id: str
    index: int  # output_index
    pieces: list[str] = field(default_factory=list)  # text, or arguments
    call_id: str = ""
    name: str = ""
    done: bool = False

    def value(self) -> str:
        if len(self.pieces) > 1:
            self.pieces[:] = ["".join(self.pieces)]
        return self.pieces[0] if self.pieces else ""

    def as_output(self, status: str) -> dict[str, Any]:
        if self.kind == "message":
            return {"type": "message", "id": self.id, "role": "assistant", "status": status,
                    "content": [output_text_part(self.value())] if self.done else []}
        return function_call_item(self.call_id, self.name, self.value(), item_id=self.id,
                                  status=status)


class ResponseEventStream:
    """One streamed response's events, from its chat stream's bytes."""

    __slots__ = ("_calls", "_draft", "_items", "_message", "_pending", "_seq",
                 "completion_tokens", "finish_reason", "prompt_tokens", "response",
                 "upstream_error")

    def __init__(self, draft: ResponseDraft) -> None:
        self._draft = draft
        self._seq = 0
        self._pending = b""
        self._items: list[_Item] = []
        self._message: _Item | None = None  # the message item being written, if any
        self._calls: dict[int, _Item] = {}  # chat tool_call index -> its item
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.upstream_error = False  # the provider put an error event in its stream
        self.response: dict[str, Any] | None = None  # the final Response, once ended

    # -- events ------------------------------------------------------------------------------

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        payload["type"] = kind
        payload["sequence_number"] = self._seq
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + dump_json(payload) + b"\n\n"

    def _with_response(self, kind: str, response: bytes) -> bytes:
        """An event holding a Response already encoded (encoded once for two events)."""
        data = b"".join((b'{"type":"', kind.encode(), b'","sequence_number":%d' % self._seq,
                         b',"response":', response, b"}"))
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def opening(self) -> bytes:
        snapshot = dump_json(self._draft.snapshot("in_progress"))
        return (self._with_response("response.created", snapshot)
                + self._with_response("response.in_progress", snapshot))

    def feed(self, chunk: bytes) -> bytes:
        """The events `chunk` (upstream SSE bytes, whole events or not) makes."""
        data = self._pending + chunk if self._pending else chunk
        data = data.replace(b"\r\n", b"\n")
        *events, rest = data.split(b"\n\n")
        self._pending = rest if len(rest) < _MAX_PENDING else b""
        out = [self._chat_event(event) for event in events]
        return b"".join(out)

    def _chat_event(self, event: bytes) -> bytes:
        payload = b"".join(line[5:].lstrip() for line in event.split(b"\n")
                           if line.startswith(b"data:"))
        if not payload or payload == b"[DONE]":
            return b""
        try:
            chunk = json.loads(payload)
        except ValueError:
            return b""
        if not isinstance(chunk, dict):
            return b""
        if chunk.get("error") is not None:
            self.upstream_error = True
            return b""
        if chunk.get("usage"):
            self.prompt_tokens, self.completion_tokens = token_counts(chunk["usage"])
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self._draft.model = chunk["model"]
        choices = chunk.get("choices")
        if choices is None or choices == []:
            return b""  # the usage chunk, or a provider's own kind of chunk
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            self.upstream_error = True  # not a chat chunk: the answer cannot be trusted
            return b""
        choice = choices[0]
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if delta is None:
            return b""
        if not isinstance(delta, dict) or not isinstance(delta.get("tool_calls") or [], list):
            self.upstream_error = True
            return b""
        out: list[bytes] = []
        text = delta.get("content")
        if isinstance(text, str) and text:
            out.append(self._text(text))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    out.append(self._call(call))
        return b"".join(out)

    def _open_message(self) -> tuple[_Item, bytes]:
        item = self._message = _Item("message", new_id("msg_"), len(self._items))
        self._items.append(item)
        return item, (self._event("response.output_item.added", {
                          "output_index": item.index, "item": item.as_output("in_progress")})
                      + self._event("response.content_part.added", {
                          "item_id": item.id, "output_index": item.index,
                          "content_index": 0, "part": output_text_part("")}))

    def _text(self, text: str) -> bytes:
        out = b""
        item = self._message
        if item is None:
            item, out = self._open_message()
        item.pieces.append(text)
        # The event of every chunk, so put together directly rather than through a dict.
        data = b"".join((
            b'{"type":"response.output_text.delta","sequence_number":%d' % self._seq,
            b',"item_id":"', item.id.encode(), b'","output_index":%d' % item.index,
            b',"content_index":0,"delta":', _json_string(text).encode(), b',"logprobs":[]}'))
        self._seq += 1
        return out + b"event: response.output_text.delta\ndata: " + data + b"\n\n"

    def _call(self, call: dict[str, Any]) -> bytes:
        index: int = call["index"] if type(call.get("index")) is int else len(self._calls)
        function: dict[str, Any] = (call["function"] if isinstance(call.get("function"), dict)
                                    else {})
        out = b""
        item = self._calls.get(index)
        if item is None:
            if self._message is not None:  # the text before the calls is complete
                out = self._close(self._message, "completed")
                self._message = None
            call_id: str = call["id"] if isinstance(call.get("id"), str) else new_id("call_")
            name: str = function["name"] if isinstance(function.get("name"), str) else ""
            item = _Item("function_call", new_id("fc_"), len(self._items), call_id=call_id,
                         name=name)
            self._calls[index] = item
            self._items.append(item)
            out += self._event("response.output_item.added", {
                "output_index": item.index, "item": item.as_output("in_progress")})
        elif isinstance(function.get("name"), str) and not item.name:
            item.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.pieces.append(arguments)
            out += self._event("response.function_call_arguments.delta", {
                "item_id": item.id, "output_index": item.index, "delta": arguments})
        return out

    def _close(self, item: _Item, status: str) -> bytes:
        item.done = True
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            text = item.value()
            out = (self._event("response.output_text.done", {
                        **where, "content_index": 0, "text": text, "logprobs": []})
                   + self._event("response.content_part.done", {
                        **where, "content_index": 0, "part": output_text_part(text)}))
        else:
            out = self._event("response.function_call_arguments.done", {
                **where, "name": item.name, "arguments": item.value()})
        return out + self._event("response.output_item.done", {
            "output_index": item.index, "item": item.as_output(status)})

    def _close_all(self, status: str) -> bytes:
        return b"".join(self._close(item, status) for item in self._items if not item.done)

    def _output(self, status: str) -> list[dict[str, Any]]:
        return [item.as_output(status) for item in self._items]

    # -- the end -----------------------------------------------------------------------------

    def finish(self) -> bytes:
        """The events closing the items of a stream that ended as it should; the Response
        (`self.response`) is `completed`, or `incomplete` when the model stopped at the token
        limit or a filter. `end()` gives its last event."""
        if self.upstream_error:
            return self.fail("The provider reported an error in the middle of the stream, "
                             "or sent a chunk that is not a chat chunk; the answer is "
                             "incomplete.")
        incomplete = _FINISH.get(self.finish_reason or "")
        status = "incomplete" if incomplete else "completed"
        out = b""
        if not self._items:  # no text, no call: an empty message, as a non-streamed answer
            out = self._open_message()[1]
        out += self._close_all(status)
        self.response = self._draft.snapshot(
            status, self._output(status), incomplete=incomplete,
            usage=usage_object(self.prompt_tokens, self.completion_tokens))
        return out

    def fail(self, message: str) -> bytes:
        """The events closing the items of a stream that broke off (what was written stays,
        marked incomplete); the Response is `failed`, saying why. Also after `finish`, when
        what finished could not be kept."""
        out = self._close_all("incomplete")
        self.response = self._draft.snapshot(
            "failed", self._output("incomplete"), error=message,
            usage=usage_object(self.prompt_tokens, self.completion_tokens))
        return out

    def end(self) -> bytes:
        """The last event: `response.completed`, `.incomplete` or `.failed`, with the whole
        Response."""
        assert self.response is not None, "finish() or fail() first"
        return self._event(f"response.{self.response['status']}", {"response": self.response})

    def assistant(self) -> dict[str, Any]:
        """The chat assistant message of what was streamed (the conversation to keep)."""
        text = "".join(item.value() for item in self._items if item.kind == "message")
        calls = [{"id": item.call_id, "type": "function",
                  "function": {"name": item.name, "arguments": item.value()}}
                 for item in self._items if item.kind == "function_call"]
        return assistant_message(text or (None if calls else ""), calls)


def replay(response: dict[str, Any]) -> list[bytes]:
    """The events of a finished Response (`completed`, `incomplete` or `failed`), in the
    order and shapes a live stream sends them, one SSE event per entry (entry n has
    `sequence_number` n): what `GET /v1/responses/{id}?stream=true` sends again. Each text
    and each call's arguments come as one delta."""
    events: list[bytes] = []

    def event(kind: str, payload: dict[str, Any]) -> None:
        data = dump_json({"type": kind, "sequence_number": len(events), **payload})
        events.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")

    opening = {**response, "status": "in_progress", "output": [], "usage": None,
               "error": None, "incomplete_details": None}
    opening.pop("completed_at", None)
    event("response.created", {"response": opening})
    event("response.in_progress", {"response": opening})
    for index, item in enumerate(response["output"]):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            event("response.output_item.added", {"output_index": index, "item": {
                **item, "status": "in_progress", "content": []}})
            for number, part in enumerate(item["content"]):
                at = {**where, "content_index": number}
                text = part.get("text", "")
                event("response.content_part.added", {**at, "part": {**part, "text": ""}})
                if text:
                    event("response.output_text.delta", {**at, "delta": text, "logprobs": []})
                event("response.output_text.done", {**at, "text": text, "logprobs": []})
                event("response.content_part.done", {**at, "part": part})
        elif item["type"] == "function_call":
            event("response.output_item.added", {"output_index": index, "item": {
                **item, "status": "in_progress", "arguments": ""}})
            if item["arguments"]:
                event("response.function_call_arguments.delta",
                      {**where, "delta": item["arguments"]})
            event("response.function_call_arguments.done",
                  {**where, "name": item["name"], "arguments": item["arguments"]})
        else:  # not an item this gateway writes; sent whole
            event("response.output_item.added", {"output_index": index, "item": item})
        event("response.output_item.done", {"output_index": index, "item": item})
    event(f"response.{response['status']}", {"response": response})
    return events
