"""The Responses API through the official `openai` SDK (strict validation, sync and async):
streaming, function tools, `previous_response_id` chaining, `input_items`, background runs,
against real loopback upstreams."""

from __future__ import annotations

import asyncio
import errno
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from domicile.gateway import responses as responses_module
from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, Stack

TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "strict": True,
                     "description": "The weather of a city",
                     "parameters": {"type": "object", "additionalProperties": False,
                                    "required": ["city"],
                                    "properties": {"city": {"type": "string"}}}}]
CALL = ("get_weather", '{"city":"Paris"}')


def until(check: Callable[[], Any], what: str, deadline_s: float = 20.0) -> Any:
    """Poll `check` until it returns something truthy (a generous deadline, no fixed sleep)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def sent_messages(stack: Stack, upstream: str = "eu-a", index: int = -1) -> list[Any]:
    return json.loads(stack.upstreams[upstream].received[index].body)["messages"]  # type: ignore[no-any-return]


# -- streaming -----------------------------------------------------------------------------


def test_the_sdks_stream_helper_gets_text_as_it_comes(stack: Stack) -> None:
    client = stack.client()
    with client.responses.stream(model="fo-model", input="hello there world") as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds.count("response.output_text.delta") == 5  # one per upstream chunk (word)
    assert kinds[-1] == "response.completed"
    assert final.output_text == "eu-a says: hello there world"
    assert final.usage is not None and final.usage.input_tokens == 11
    sent = json.loads(stack.upstreams["eu-a"].received[0].body)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert stack.store.records == {}  # zero retention: nothing kept


def test_a_streamed_response_is_counted_in_usage(stack: Stack) -> None:
    for _ in stack.client().responses.create(model="fo-model", input="count me", stream=True):
        pass
    stack.loop.run(stack.eu_app.usage.flush())
    record = until(lambda: [r for r in stack.sink.records if r.endpoint == "/v1/responses"],
                   "the usage record")[0]
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (11, 7, 200)
    assert record.provider == "eu-a"


def test_a_streamed_function_call_round_trip_without_storing(stack: Stack) -> None:
    stack.upstreams["eu-a"].behaviour.tool_calls = [CALL]
    client = stack.client(EU_ZERO_KEY)
    events = list(client.responses.create(model="fo-model", input="weather in Paris?",
                                          tools=TOOLS, tool_choice="auto", stream=True))
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == CALL[1]
    final = events[-1].response  # type: ignore[union-attr]
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    sent = json.loads(stack.upstreams["eu-a"].received[0].body)
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "auto"
    # the client runs the function and sends its output back with the call (stateless)
    answer = list(client.responses.create(model="fo-model", tools=TOOLS, stream=True, input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]))
    assert answer[-1].response.output_text == "eu-a says: sunny, 21 C"  # type: ignore[union-attr]
    assert sent_messages(stack)[-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": CALL[1]}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}]
    assert stack.store.records == {}


def test_a_function_call_round_trip_chained_by_previous_response_id(stack: Stack) -> None:
    stack.upstreams["eu-a"].behaviour.tool_calls = [CALL]
    client = stack.client(EU_REGIONAL_KEY)
    first = client.responses.create(model="fo-model", input="weather in Paris?", tools=TOOLS,
                                    tool_choice={"type": "function", "name": "get_weather"})
    call = first.output[0]
    assert call.type == "function_call" and call.arguments == CALL[1]
    assert first.tool_choice.type == "function"  # type: ignore[union-attr]
    assert json.loads(stack.upstreams["eu-a"].received[0].body)["tool_choice"] == {
        "type": "function", "function": {"name": "get_weather"}}
    with client.responses.stream(model="fo-model", previous_response_id=first.id, tools=TOOLS,
                                 input=[{"type": "function_call_output",
                                         "call_id": call.call_id, "output": "sunny"}]) as s:
        second = s.get_final_response()
    assert second.output_text == "eu-a says: sunny"
    assert second.previous_response_id == first.id
    assert sent_messages(stack) == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": CALL[1]}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}]
    (output_item,) = client.responses.input_items.list(second.id).data
    assert output_item.type == "function_call_output"
    assert (output_item.call_id, output_item.output) == (call.call_id, "sunny")
    stateless = client.responses.create(model="fo-model", tools=TOOLS, input=[
        {"type": "function_call", "call_id": "call_x", "name": "get_weather",
         "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_x", "output": "rain"}])
    listed = client.responses.input_items.list(stateless.id, order="asc").data
    assert [item.type for item in listed] == ["function_call", "function_call_output"]
    # the streamed response was kept too, and reads back as it ended
    kept = client.responses.retrieve(second.id)
    assert kept.output_text == second.output_text and kept.status == "completed"
    third = client.responses.create(model="fo-model", previous_response_id=second.id,
                                    input="thanks")
    assert len(sent_messages(stack)) == 5
    assert sent_messages(stack)[3]["content"] == "eu-a says: sunny"
    assert third.output_text == "eu-a says: thanks"


def test_input_items_are_listed_in_openais_shape_and_pages(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    response = client.responses.create(model="dev-echo", input=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "input_text", "text": "three"}]},
    ])
    newest_first = client.responses.input_items.list(response.id)
    texts = [item.content[0].text for item in newest_first.data]  # type: ignore[union-attr]
    assert texts == ["three", "two", "one", "be brief"]
    oldest = client.responses.input_items.list(response.id, order="asc", limit=1)
    assert oldest.has_more is True
    assert oldest.data[0].role == "developer"  # type: ignore[union-attr]
    rest = client.responses.input_items.list(response.id, order="asc", limit=2,
                                             after=oldest.data[0].id)  # type: ignore[union-attr]
    assert [i.content[0].text for i in rest.data] == ["one", "two"]  # type: ignore[union-attr]
    assert rest.has_more is True
    every = list(client.responses.input_items.list(response.id, order="asc", limit=1))
    assert len(every) == 4  # the SDK's auto-pagination follows `after` to the end
    with pytest.raises(openai.BadRequestError):
        client.responses.input_items.list(response.id, limit=0)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_nothere")
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client(EU_ZERO_KEY).responses.input_items.list(response.id)
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]


def test_a_stream_that_breaks_off_upstream_ends_failed_not_hanging(stack: Stack) -> None:
    stack.upstreams["eu-solo"].behaviour.then = "reset"
    events = list(stack.client().responses.create(model="solo-model", input="a b c",
                                                  stream=True))
    assert events[-1].type == "response.failed"
    assert "broke off" in events[-1].response.error.message  # type: ignore[union-attr]
    # what came before the break (the first chunk) is kept
    assert events[-1].response.output_text == "eu-solo"  # type: ignore[union-attr]


def test_a_client_that_leaves_closes_the_upstream(stack: Stack) -> None:
    upstream = stack.upstreams["eu-solo"]
    upstream.behaviour.endless = True
    with stack.client().responses.create(model="solo-model", input="go", stream=True) as events:
        for event in events:
            if event.type == "response.output_text.delta":
                break
    until(upstream.stream_cancelled.is_set, "the upstream stream to be cancelled")


def test_an_upstream_refusal_before_any_event_is_an_http_error(stack: Stack) -> None:
    stack.upstreams["eu-solo"].behaviour.mode = "reject"
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().responses.create(model="solo-model", input="x", stream=True)
    assert caught.value.code == "upstream_says_no"  # type: ignore[attr-defined]


def test_events_carry_their_names_as_openai_sends_them(stack: Stack) -> None:
    with stack.http().stream("POST", "/v1/responses", json={
            "model": "dev-echo", "input": "named events", "stream": True},
            headers={"Authorization": f"Bearer {EU_ZERO_KEY}"}) as answer:
        assert answer.headers["content-type"] == "text/event-stream"
        body = answer.read().decode()
    blocks = [block for block in body.split("\n\n") if block]
    for number, block in enumerate(blocks):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        assert event["sequence_number"] == number


def test_the_async_sdk_streams_and_chains(stack: Stack) -> None:
    async def talk() -> tuple[str, str, list[str]]:
        async with openai.AsyncOpenAI(base_url=stack.eu.url + "/v1", api_key=EU_REGIONAL_KEY,
                                      max_retries=0, timeout=20,
                                      _strict_response_validation=True) as client:
            async with client.responses.stream(model="fo-model", input="async hi") as s:
                kinds = [event.type async for event in s]
                first = await s.get_final_response()
            second = await client.responses.create(model="fo-model", input="again",
                                                   previous_response_id=first.id, stream=True)
            final = ""
            async for event in second:
                if event.type == "response.completed":
                    final = event.response.output_text
            return first.output_text, final, kinds

    first, second, kinds = asyncio.run(talk())
    assert first == "eu-a says: async hi"
    assert second == "eu-a says: again"
    assert kinds[-1] == "response.completed"
    assert len(sent_messages(stack)) == 3


# -- background ----------------------------------------------------------------------------


def hold(stack: Stack, upstream: str = "eu-a") -> threading.Event:
    gate = threading.Event()
    stack.upstreams[upstream].behaviour.hold = gate
    return gate


def test_a_background_response_is_queued_then_polled_to_completion(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    gate = hold(stack)
    queued = client.responses.create(model="fo-model", input="slow work", background=True)
    assert queued.status == "queued" and queued.background is True
    until(lambda: stack.upstreams["eu-a"].holding, "the run to reach the upstream")
    assert client.responses.retrieve(queued.id).status == "in_progress"
    gate.set()
    done = until(lambda: (r := client.responses.retrieve(queued.id)).status == "completed"
                 and r, "the background response to complete")
    assert done.output_text == "eu-a says: slow work"
    assert done.usage is not None and done.usage.output_tokens == 7
    follow = client.responses.create(model="fo-model", input="more",
                                     previous_response_id=queued.id)
    assert len(sent_messages(stack)) == 3
    assert follow.status == "completed"


def test_a_background_response_can_be_cancelled(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    gate = hold(stack)
    queued = client.responses.create(model="fo-model", input="never mind", background=True)
    until(lambda: stack.upstreams["eu-a"].holding, "the run to reach the upstream")
    cancelled = client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    gate.set()
    endpoint = stack.eu_app._responses
    until(lambda: not endpoint._tasks, "the run to end")
    assert client.responses.retrieve(queued.id).status == "cancelled"
    assert client.responses.cancel(queued.id).status == "cancelled"  # idempotent
    finished = client.responses.create(model="dev-echo", input="x", background=True)
    until(lambda: client.responses.retrieve(finished.id).status == "completed", "completion")
    with pytest.raises(openai.BadRequestError, match="is completed"):
        client.responses.cancel(finished.id)
    plain = client.responses.create(model="dev-echo", input="x")
    with pytest.raises(openai.BadRequestError, match="Only background"):
        client.responses.cancel(plain.id)


def test_background_is_refused_under_zero_retention_and_without_store(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client(EU_ZERO_KEY).responses.create(model="dev-echo", input="x",
                                                   background=True)
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="needs `store`"):
        stack.client(EU_REGIONAL_KEY).responses.create(model="dev-echo", input="x",
                                                       background=True, store=False)
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client(EU_ZERO_KEY).responses.cancel("resp_abc")
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]
    assert stack.store.records == {}


def _rewrite_run(stack: Stack, response_id: str, **run: Any) -> None:
    """What another process would have left: the record's run owned by someone else."""
    key = ("proj_key_eu_regional", "response", response_id)
    record = json.loads(stack.store.records[key])
    record["run"] = run
    stack.store.records[key] = json.dumps(record).encode()


def test_a_run_whose_owner_died_is_failed_by_the_next_read(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    gate = hold(stack)
    queued = client.responses.create(model="fo-model", input="orphan", background=True)
    until(lambda: stack.upstreams["eu-a"].holding, "the run to reach the upstream")
    # another replica's run, its lease still good: left alone
    _rewrite_run(stack, queued.id, owner="boot_elsewhere", lease_until=time.time() + 60)
    assert client.responses.retrieve(queued.id).status == "in_progress"
    # its owner stopped renewing: the read fails it, with a clear error, and it stays failed
    _rewrite_run(stack, queued.id, owner="boot_elsewhere", lease_until=time.time() - 1)
    failed = client.responses.retrieve(queued.id)
    assert failed.status == "failed"
    assert failed.error is not None and "stopped before it finished" in failed.error.message
    gate.set()
    until(lambda: not stack.eu_app._responses._tasks, "the local run to end")
    assert client.responses.retrieve(queued.id).status == "failed"


def test_background_runs_are_bounded(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses_module, "MAX_WAITING", 0)
    endpoint = stack.eu_app._responses
    monkeypatch.setattr(endpoint, "_slots", asyncio.Semaphore(1))
    client = stack.client(EU_REGIONAL_KEY)
    gate = hold(stack)
    queued = [client.responses.create(model="fo-model", input=f"job {i}", background=True)
              for i in range(responses_module.MAX_RUNNING)]
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model="fo-model", input="one too many", background=True)
    assert caught.value.status_code == 503
    until(lambda: stack.upstreams["eu-a"].holding == 1, "one run at the upstream")
    # one slot: the others wait, still queued
    statuses = [client.responses.retrieve(r.id).status for r in queued]
    assert statuses.count("in_progress") == 1 and statuses.count("queued") == len(queued) - 1
    gate.set()
    until(lambda: all(client.responses.retrieve(r.id).status == "completed" for r in queued),
          "every run to complete")


def test_the_wrong_method_on_cancel_is_405(stack: Stack) -> None:
    answer = stack.http().get("/v1/responses/resp_abc/cancel",
                              headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    assert answer.status_code == 405
    assert isinstance(answer, httpx.Response)


def test_a_streamed_response_that_cannot_be_kept_ends_failed(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stack.store, "put_record", full)
    events = list(stack.client(EU_REGIONAL_KEY).responses.create(
        model="fo-model", input="keep me", stream=True))
    assert events[-1].type == "response.failed"
    message = events[-1].response.error.message  # type: ignore[union-attr]
    assert message.startswith("The response was not kept") and "storage is full" in message
    assert events[-1].response.output_text == "eu-a says: keep me"  # type: ignore[union-attr]
    assert [e.type for e in events].count("response.output_item.done") == 1
    assert stack.store.records == {}
