"""LangChain's `ChatOpenAI(use_responses_api=True)` streaming through the gateway's Responses
API, a tool call included. (No token counting: that path needs tiktoken's encodings, which
would be downloaded.)"""

from __future__ import annotations

import json

from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from tests.gateway.conftest import EU_ZERO_KEY, Stack


def chat_model(stack: Stack, model: str = "fo-model") -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=stack.eu.url + "/v1", api_key=EU_ZERO_KEY,
                      use_responses_api=True, streaming=True, max_retries=0, timeout=20)


def test_langchain_streams_a_responses_answer(stack: Stack) -> None:
    chunks = list(chat_model(stack).stream("hello from langchain"))
    assert len([c for c in chunks if c.text]) >= 2  # pieces, not one whole answer
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    assert whole.text == "eu-a says: hello from langchain"
    sent = json.loads(stack.upstreams["eu-a"].received[0].body)
    assert sent["stream"] is True


def test_langchain_streams_a_tool_call_and_takes_its_result(stack: Stack) -> None:
    stack.upstreams["eu-a"].behaviour.tool_calls = [("get_weather", '{"city": "Paris"}')]
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}
    model = chat_model(stack).bind_tools([tool])
    question = HumanMessage("weather in Paris?")
    whole: AIMessageChunk | None = None
    for chunk in model.stream([question]):
        assert isinstance(chunk, AIMessageChunk)
        whole = chunk if whole is None else whole + chunk
    assert whole is not None
    (call,) = whole.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    answer = model.invoke([question, whole, ToolMessage("sunny", tool_call_id=call["id"])])
    assert answer.text == "eu-a says: sunny"
    sent = json.loads(stack.upstreams["eu-a"].received[-1].body)["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
