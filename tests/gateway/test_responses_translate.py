"""The Responses API's translation onto chat, as plain functions: request items and tools to
chat, chat answers and chat stream chunks to Response objects and events, each validated
strictly against the official `openai` SDK's own types."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai._models import validate_type
from openai.types.responses import Response, ResponseStreamEvent

from domicile.errors import InvalidInput
from domicile.gateway.responses_shapes import ResponseDraft, output_from_chat, to_chat_request
from domicile.gateway.responses_stream import ResponseEventStream, replay

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
          "strict": True}]


def chat_sse(delta: dict[str, Any] | None = None, finish: str | None = None,
             usage: dict[str, int] | None = None, model: str = "m") -> bytes:
    event: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                             "model": model, "choices": [] if delta is None else [
                                 {"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        event["usage"] = usage
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """The SSE events a client gets, each checked: `event:` names its `type`, and the SDK's
    strict validation accepts it."""
    found = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == "event: " + event["type"]
        validate_type(type_=ResponseStreamEvent, value=event)  # type: ignore[arg-type]
        found.append(event)
    return found


def stream(draft: ResponseDraft, *chunks: bytes, fail: str | None = None
           ) -> tuple[ResponseEventStream, list[dict[str, Any]]]:
    events = ResponseEventStream(draft)
    raw = events.opening() + b"".join(events.feed(chunk) for chunk in chunks)
    raw += (events.finish() if fail is None else events.fail(fail)) + events.end()
    return events, events_of(raw)


def draft(**parsed: Any) -> ResponseDraft:
    return ResponseDraft({"model": "m", "input": "x", **parsed}, stored=False)


def test_a_text_stream_becomes_openais_event_sequence() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    events, found = stream(draft(), chat_sse({"role": "assistant", "content": "Hel"}),
                           chat_sse({"content": "lo"}), chat_sse({}, "stop"),
                           chat_sse(None, usage=usage), b"data: [DONE]\n\n")
    assert [e["type"] for e in found] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in found] == list(range(len(found)))
    assert [e["delta"] for e in found if e["type"] == "response.output_text.delta"] == [
        "Hel", "lo"]
    final = validate_type(type_=Response, value=found[-1]["response"])
    assert final.output_text == "Hello"
    assert final.status == "completed"
    assert final.usage is not None and final.usage.total_tokens == 8
    assert (events.prompt_tokens, events.completion_tokens) == (5, 3)
    assert found[0]["response"]["status"] == "in_progress"
    # OpenAI's schema requires these, though the SDK would take them missing
    assert found[-1]["response"]["output"][0]["content"][0]["logprobs"] == []
    assert all(e["logprobs"] == [] for e in found if e["type"].startswith("response.output_text"))


def test_each_delta_goes_out_with_the_chunk_that_carried_it() -> None:
    events = ResponseEventStream(draft())
    events.opening()
    first = chat_sse({"role": "assistant", "content": "first words"})
    assert b'"delta":"first words"' in events.feed(first)  # not held for the rest
    half = len(first) // 2
    assert events.feed(first[:half]) == b""  # an event cut in two waits for its end
    assert b'"delta":"first words"' in events.feed(first[half:])


def test_a_streamed_tool_call_becomes_a_function_call_item() -> None:
    events, found = stream(
        draft(tools=TOOLS),
        chat_sse({"role": "assistant", "content": "Let me look."}),
        chat_sse({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": ""}}]}),
        chat_sse({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chat_sse({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chat_sse({}, "tool_calls"))
    kinds = [e["type"] for e in found]
    # the text closes before the call opens
    assert kinds.index("response.output_item.done") < kinds.index(
        "response.function_call_arguments.delta")
    deltas = [e["delta"] for e in found if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ['{"city":', '"Paris"}']
    done = next(e for e in found if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == '{"city":"Paris"}'
    final = validate_type(type_=Response, value=found[-1]["response"])
    assert [item.type for item in final.output] == ["message", "function_call"]
    call = final.output[1]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_1", "get_weather",
                                                         '{"city":"Paris"}')
    assert events.assistant() == {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}


def test_interleaved_parallel_calls_each_keep_their_arguments() -> None:
    def part(index: int, arguments: str, **first: str) -> bytes:
        call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if first:
            call.update(id=first["id"], type="function")
            call["function"]["name"] = first["name"]
        return chat_sse({"tool_calls": [call]})

    _, found = stream(draft(tools=TOOLS), part(0, '{"a":', id="c0", name="f"),
                      part(1, '{"b":', id="c1", name="g"), part(0, "1}"), part(1, "2}"),
                      chat_sse({}, "tool_calls"))
    done = {e["item_id"]: e["arguments"] for e in found
            if e["type"] == "response.function_call_arguments.done"}
    assert sorted(done.values()) == ['{"a":1}', '{"b":2}']
    final = found[-1]["response"]
    assert [(i["name"], i["arguments"]) for i in final["output"]] == [
        ("f", '{"a":1}'), ("g", '{"b":2}')]


def test_a_stream_cut_at_the_token_limit_ends_incomplete() -> None:
    _, found = stream(draft(max_output_tokens=2), chat_sse({"content": "so"}),
                      chat_sse({}, "length"))
    assert found[-1]["type"] == "response.incomplete"
    final = validate_type(type_=Response, value=found[-1]["response"])
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output[0].status == "incomplete"


def test_a_broken_stream_ends_failed_keeping_what_came() -> None:
    _, found = stream(draft(), chat_sse({"content": "half an ans"}), fail="it broke off")
    assert found[-1]["type"] == "response.failed"
    final = validate_type(type_=Response, value=found[-1]["response"])
    assert final.status == "failed"
    assert final.error is not None and final.error.message == "it broke off"
    assert final.output_text == "half an ans"
    assert final.output[0].status == "incomplete"


def test_a_providers_error_event_fails_the_response() -> None:
    error = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    _, found = stream(draft(), chat_sse({"content": "a"}), error)
    assert found[-1]["type"] == "response.failed"
    assert "provider reported an error" in found[-1]["response"]["error"]["message"]


def test_an_empty_answer_is_one_empty_message() -> None:
    _, found = stream(draft(), chat_sse({}, "stop"))
    final = validate_type(type_=Response, value=found[-1]["response"])
    assert final.output_text == ""
    assert [e["type"] for e in found][2:4] == ["response.output_item.added",
                                               "response.content_part.added"]


def test_function_items_become_tool_calls_and_tool_messages() -> None:
    request = to_chat_request({"model": "m", "tools": TOOLS, "tool_choice": {
        "type": "function", "name": "get_weather"}, "parallel_tool_calls": False, "input": [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "message", "role": "assistant", "id": "msg_1",
         "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]}, history=[])
    assert request.chat["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert request.chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": TOOLS[0]["parameters"], "strict": True}}]
    assert request.chat["tool_choice"] == {"type": "function",
                                           "function": {"name": "get_weather"}}
    assert request.chat["parallel_tool_calls"] is False
    assert [item["type"] for item in request.items] == [
        "message", "message", "function_call", "function_call_output"]
    assert all(item["id"] for item in request.items)


def test_a_tool_choice_without_tools_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no `tools`"):
        to_chat_request({"model": "m", "input": "x", "tool_choice": "required"}, [])
    with pytest.raises(InvalidInput):
        to_chat_request({"model": "m", "input": "x", "tools": TOOLS,
                         "tool_choice": {"type": "file_search"}}, [])


def test_a_chat_answer_with_calls_becomes_function_call_items() -> None:
    output, incomplete, assistant = output_from_chat({"role": "assistant", "content": None,
                                                      "tool_calls": [
        {"id": "call_9", "type": "function",
         "function": {"name": "get_weather", "arguments": "{}"}}]}, "tool_calls")
    assert incomplete is None
    assert [item["type"] for item in output] == ["function_call"]
    assert output[0]["call_id"] == "call_9"
    assert assistant["content"] is None and assistant["tool_calls"][0]["id"] == "call_9"


@pytest.mark.parametrize("status", ["queued", "in_progress", "completed", "incomplete",
                                    "failed", "cancelled"])
def test_every_snapshot_is_a_valid_response(status: str) -> None:
    snapshot = draft(tools=TOOLS, tool_choice="required", metadata={"k": "v"}).snapshot(
        status, incomplete="max_output_tokens" if status == "incomplete" else None,
        error="broke" if status == "failed" else None)
    parsed = validate_type(type_=Response, value=snapshot)
    assert parsed.status == status
    assert "user" not in snapshot  # not given: absent, never null


@pytest.mark.parametrize("chunk", [
    b'data: {"choices": [{"index": 0, "delta": "text"}]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"tool_calls": 5}}]}\n\n',
    b'data: {"choices": ["x"]}\n\n',
    b'data: {"choices": 5}\n\n',
])
def test_a_chunk_that_is_not_a_chat_chunk_fails_the_response(chunk: bytes) -> None:
    events, found = stream(draft(), chat_sse({"content": "a"}), chunk, chat_sse({}, "stop"))
    assert events.upstream_error
    assert found[-1]["type"] == "response.failed"
    assert "not a chat chunk" in found[-1]["response"]["error"]["message"]


@pytest.mark.parametrize("status", ["completed", "incomplete", "failed"])
def test_a_replay_is_a_valid_event_sequence(status: str) -> None:
    output = [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": "hi", "annotations": [],
                            "logprobs": []}]},
              {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f",
               "arguments": "{}", "status": "completed"}]
    response = draft(tools=TOOLS).snapshot(
        status, output, incomplete="max_output_tokens" if status == "incomplete" else None,
        error="broke" if status == "failed" else None)
    events = replay(response)
    found = events_of(b"".join(events))  # each one validated strictly
    assert [e["sequence_number"] for e in found] == list(range(len(found)))
    assert [e["type"] for e in found] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        f"response.{status}"]
    assert found[-1]["response"] == response
