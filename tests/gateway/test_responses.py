"""The Responses API on top of chat: stateless under zero retention (G4), stored in the
region's content store under regional retention."""

from __future__ import annotations

import json

import openai
import pytest

from domicile.errors import InvalidInput
from domicile.gateway.responses import to_chat_request
from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, Stack


def test_a_stateless_response_from_a_string_input(stack: Stack) -> None:
    response = stack.client().responses.create(model="dev-echo", input="hello responses",
                                               instructions="answer briefly")
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.output_text == "hello responses"
    assert response.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 2)
    assert response.usage.total_tokens == 6
    assert response.store is False
    assert stack.store.records == {}


def test_instructions_and_message_lists_become_chat_messages(stack: Stack) -> None:
    stack.client().responses.create(model="fo-model", instructions="be terse", input=[
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "next"}]},
    ], max_output_tokens=50, temperature=0.2)
    sent = json.loads(stack.upstreams["eu-a"].received[0].body)
    assert sent["messages"] == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "next"},
    ]
    assert (sent["max_tokens"], sent["temperature"]) == (50, 0.2)


@pytest.mark.parametrize(("extra", "param"), [
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"previous_response_id": "resp_abc"}, None),
])
def test_zero_retention_refuses_what_would_keep_content(stack: Stack, extra: dict[str, object],
                                                        param: str | None) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().responses.create(model="dev-echo", input="x", **extra)  # type: ignore[call-overload]
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]
    assert "zero data retention" in caught.value.message
    assert stack.store.records == {}


def test_zero_retention_cannot_read_stored_responses(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().responses.retrieve("resp_abc")
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]


def test_zero_retention_chat_store_true_is_refused(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(
            model="fo-model", store=True, messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "zero_retention"  # type: ignore[attr-defined]
    assert stack.upstreams["eu-a"].received == []


def test_tools_other_than_functions_are_refused_clearly(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError, match="function tools only"):
        stack.client().responses.create(model="dev-echo", input="x",
                                        tools=[{"type": "web_search"}])


def test_regional_responses_are_stored_and_continue(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    first = client.responses.create(model="fo-model", input="my name is Ada",
                                    instructions="first instructions")
    assert first.store is True
    assert len(stack.store.records) == 1
    (tenant_id, kind, record_id), = stack.store.records
    assert (tenant_id, kind, record_id) == ("proj_key_eu_regional", "response", first.id)
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(model="fo-model", input="what is my name?",
                                     previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = json.loads(stack.upstreams["eu-a"].received[1].body)["messages"]
    assert sent == [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "eu-a says: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_regional_store_false_keeps_nothing(stack: Stack) -> None:
    stack.client(EU_REGIONAL_KEY).responses.create(model="dev-echo", input="x", store=False)
    assert stack.store.records == {}


def test_unknown_previous_response_is_404(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError):
        stack.client(EU_REGIONAL_KEY).responses.create(
            model="dev-echo", input="x", previous_response_id="resp_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        stack.client(EU_REGIONAL_KEY).responses.retrieve("../../etc/passwd")


def test_an_upstream_error_passes_through_responses(stack: Stack) -> None:
    stack.upstreams["eu-solo"].behaviour.mode = "reject"
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client(EU_ZERO_KEY).responses.create(model="solo-model", input="x")
    assert caught.value.code == "upstream_says_no"  # type: ignore[attr-defined]


def test_responses_fail_closed_like_chat(stack: Stack) -> None:
    stack.upstreams["eu-solo"].behaviour.mode = "fail"
    with pytest.raises(openai.InternalServerError) as caught:
        stack.client().responses.create(model="solo-model", input="x")
    assert caught.value.status_code == 503
    assert stack.upstreams["us-solo"].received == []


def test_to_chat_request_maps_images_and_refuses_unknown_items() -> None:
    request = to_chat_request({"model": "m", "input": [
        {"role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}]},
    ], "text": {"format": {"type": "json_object"}}}, history=[])
    chat, conversation = request.chat, request.conversation
    assert request.has_image
    assert chat["messages"][0]["content"][1] == {
        "type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}}
    assert chat["response_format"] == {"type": "json_object"}
    assert conversation == chat["messages"]
    with pytest.raises(InvalidInput):
        to_chat_request({"model": "m", "input": [{"type": "file_search_call"}]}, [])
    with pytest.raises(InvalidInput):
        to_chat_request({"model": "m", "input": [{"type": "function_call_output"}]}, [])
    with pytest.raises(InvalidInput):
        to_chat_request({"model": "m", "input": []}, [])
