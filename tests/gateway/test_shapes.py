"""Exact shapes: every object the gateway answers with validates against the `openai` SDK's own
types under strict validation (`Stack.client` is strict), and every error class of
`domicile.errors` makes the SDK raise its matching exception, with its `code`, `type` and
`param`.

The SDK asks for base64 embeddings unless told otherwise, and under strict validation it
checks the raw base64 string against `List[float]` before decoding it, which fails against
OpenAI's own API too; so float lists are checked strictly, and base64 answers by decoding
them as the SDK does (its default, non-strict client) and checking the decoded object
strictly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from typing import Any

import httpx2
import jsonschema_rs
import openai
import pytest
from openai.types import CreateEmbeddingResponse, ImagesResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from domicile import errors
from domicile.errors import DomicileError
from domicile.gateway.http import Exchange
from domicile.gateway.openapi import openapi_document
from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, US_KEY, Stack
from tests.gateway.support import grant

MESSAGES: list[Any] = [{"role": "user", "content": "the shape of things"}]
EMBEDDING_MODELS = ["dev-echo", "all-minilm-l6-v2"]


def _strict(value: dict[str, Any], type_: type[Any]) -> Any:
    # What `_strict_response_validation` runs on every answer.
    return type_.model_validate(value, strict=False)


def test_a_chat_completion_validates_strictly(stack: Stack) -> None:
    completion = stack.client().chat.completions.create(model="dev-echo", messages=MESSAGES)
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "the shape of things"
    assert completion.usage is not None and completion.usage.total_tokens == 8


@pytest.mark.parametrize("include_usage", [True, False])
def test_every_chunk_of_a_stream_validates_strictly(stack: Stack, include_usage: bool) -> None:
    chunks = list(stack.client().chat.completions.create(
        model="dev-echo", messages=MESSAGES, stream=True,
        stream_options={"include_usage": include_usage}))
    assert chunks and all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the shape of things"
    assert (chunks[-1].usage is not None) == include_usage


@pytest.mark.parametrize("model", EMBEDDING_MODELS)
def test_a_float_embedding_list_validates_strictly(stack: Stack, model: str) -> None:
    result = stack.client().embeddings.create(model=model, input=["one", "two"],
                                              encoding_format="float")
    assert isinstance(result, CreateEmbeddingResponse)
    assert [item.index for item in result.data] == [0, 1]
    assert all(len(item.embedding) == 384 for item in result.data)
    assert result.usage.total_tokens == result.usage.prompt_tokens > 0


@pytest.mark.parametrize("model", EMBEDDING_MODELS)
def test_a_base64_embedding_list_decodes_to_the_float_one(stack: Stack, model: str) -> None:
    raw = stack.http().post("/v1/embeddings", headers={"Authorization": f"Bearer {EU_ZERO_KEY}"},
                            json={"model": model, "input": ["one", "two"],
                                  "encoding_format": "base64"}).json()
    floats = stack.client().embeddings.create(model=model, input=["one", "two"],
                                              encoding_format="float")
    for item, expected in zip(raw["data"], floats.data, strict=True):
        packed = base64.b64decode(item["embedding"], validate=True)
        assert len(packed) == 4 * 384
        item["embedding"] = list(struct.unpack("<384f", packed))
        assert item["embedding"] == pytest.approx(expected.embedding, abs=1e-6)
    # The rest of the answer is the float answer's shape exactly.
    _strict(raw, CreateEmbeddingResponse)
    # The SDK's own default (base64, decoded by it) gives the same vectors.
    sdk = openai.OpenAI(base_url=stack.eu.url + "/v1", api_key=EU_ZERO_KEY, max_retries=0,
                        timeout=20)
    decoded = sdk.embeddings.create(model=model, input=["one", "two"])
    assert decoded.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)


def test_the_model_list_validates_strictly(stack: Stack) -> None:
    models = list(stack.client().models.list())
    assert models and all(isinstance(model, Model) for model in models)
    by_id = {model.id: model for model in models}
    # `created` is 0: the gateway does not know when a provider's model was made; `owned_by`
    # is the provider serving it in this region, not the model's maker.
    assert {model.created for model in models} == {0}
    assert by_id["dev-echo"].owned_by == "eu-dev"
    assert by_id["all-minilm-l6-v2"].owned_by == "eu-embeddings"
    assert {model.object for model in models} == {"model"}


def test_an_image_validates_strictly(stack: Stack) -> None:
    result = stack.client().images.generate(model="dev-echo", prompt="a red boat", n=2,
                                            response_format="b64_json")
    assert isinstance(result, ImagesResponse)
    assert result.data is not None and len(result.data) == 2
    assert base64.b64decode(result.data[0].b64_json or "")[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_object_is_valid_against_openais_published_schema(stack: Stack) -> None:
    # Stricter than the SDK in places (its models default what is missing): OpenAI's own
    # schemas, as the region's document carries them.
    components = openapi_document(stack.eu_app, workspace=False)["components"]

    def check(value: object, schema: str) -> None:
        validator = jsonschema_rs.Draft202012Validator(
            {"$ref": f"#/components/schemas/{schema}", "components": components})
        problems = [str(problem) for problem in validator.iter_errors(value)]
        assert not problems, (schema, problems)

    http = stack.http()
    auth = {"Authorization": f"Bearer {EU_ZERO_KEY}"}
    check(http.post("/v1/chat/completions", headers=auth, json={
        "model": "dev-echo", "messages": MESSAGES}).json(), "CreateChatCompletionResponse")
    stream = http.post("/v1/chat/completions", headers=auth, json={
        "model": "dev-echo", "messages": MESSAGES, "stream": True,
        "stream_options": {"include_usage": True}}).text
    events = [line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        check(json.loads(event), "CreateChatCompletionStreamResponse")
    for model in EMBEDDING_MODELS:
        for encoding in ("float", "base64"):
            check(http.post("/v1/embeddings", headers=auth, json={
                "model": model, "input": ["one"], "encoding_format": encoding}).json(),
                "CreateEmbeddingResponse")
    check(http.get("/v1/models", headers=auth).json(), "ListModelsResponse")
    check(http.post("/v1/images/generations", headers=auth, json={
        "model": "dev-echo", "prompt": "a red boat"}).json(), "ImagesResponse")
    check(http.post("/v1/chat/completions", headers=auth, json={
        "model": "no-such-model", "messages": MESSAGES}).json(), "ErrorResponse")


# -- errors ----------------------------------------------------------------------------------

_SDK_CLASS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError, 401: openai.AuthenticationError,
    403: openai.PermissionDeniedError, 404: openai.NotFoundError, 409: openai.ConflictError,
    422: openai.UnprocessableEntityError, 429: openai.RateLimitError,
}


def _expected_class(status: int) -> type[openai.APIStatusError]:
    if status >= 500:
        return openai.InternalServerError
    return _SDK_CLASS.get(status, openai.APIStatusError)


def _error_classes() -> list[type[DomicileError]]:
    found = [getattr(errors, name) for name in errors.__all__]
    return [cls for cls in found if isinstance(cls, type) and issubclass(cls, DomicileError)]


def _instance(cls: type[DomicileError]) -> DomicileError:
    if cls is errors.ConfigError:
        return cls("regions.eu.listen", "two regions on one port")  # type: ignore[call-arg]
    return cls(f"{cls.__name__} happened.", param="model")


async def _rendered(error: DomicileError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The answer the gateway's one renderer (`Exchange.fail`) sends for `error`."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    call = Exchange({"type": "http", "method": "GET", "path": "/v1/models", "headers": []},
                    receive, send, b"eu")
    await call.fail(error, list(error.headers))
    return sent[0]["status"], sent[0]["headers"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_each_error_class_raises_its_sdk_exception(cls: type[DomicileError]) -> None:
    error = _instance(cls)
    status, headers, body = asyncio.run(_rendered(error))

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers=[(k.decode(), v.decode()) for k, v in headers],
                               content=body)

    client = openai.OpenAI(base_url="http://eu.invalid/v1", api_key="dk-eu-x", max_retries=0,
                           _strict_response_validation=True,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))
    with pytest.raises(openai.APIStatusError) as caught:
        client.models.list()
    assert type(caught.value) is _expected_class(cls.status)
    assert caught.value.status_code == cls.status
    raised: Any = caught.value
    assert (raised.code, raised.type, raised.param) == (cls.code, cls.type, error.param)
    assert raised.body == json.loads(body)["error"]
    assert raised.message == f"Error code: {cls.status} - {error.message}"


def _raised(call: Any) -> Any:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def test_the_gateways_errors_reach_the_sdk_as_their_classes(stack: Stack) -> None:
    zero = stack.client()
    chat = dict(messages=MESSAGES)
    cases: list[tuple[Any, type[openai.APIStatusError], str]] = [
        (lambda: zero.chat.completions.create(model="dev-echo", messages=[]),
         openai.BadRequestError, "invalid_request"),
        (lambda: zero.files.list(), openai.BadRequestError, "zero_retention"),
        (lambda: stack.client("dk-eu-unknown-0000000000").models.list(),
         openai.AuthenticationError, "invalid_api_key"),
        (lambda: stack.client(US_KEY).models.list(), openai.PermissionDeniedError,
         "wrong_region"),
        (lambda: zero.chat.completions.create(model="no-such-model", **chat),
         openai.NotFoundError, "model_not_found"),
        (lambda: stack.client(EU_REGIONAL_KEY).files.retrieve("file-000000000000000000000000"),
         openai.NotFoundError, "not_found"),
        (lambda: zero.chat.completions.create(model="dead-model", **chat),
         openai.InternalServerError, "no_in_region_provider"),
    ]
    for call, expected, code in cases:
        raised = _raised(call)
        assert type(raised) is expected, code
        assert raised.code == code
        assert raised.response.headers["x-domicile-region"] == "eu"
    not_allowed = stack.http().delete("/v1/models",
                                      headers={"Authorization": f"Bearer {EU_ZERO_KEY}"})
    assert not_allowed.status_code == 405
    assert not_allowed.json()["error"]["code"] == "method_not_allowed"
    secret = "dk-eu-shapes-limited-0000000"
    stack.auth.keys[secret] = grant("key_shapes_limited", rpm=1)
    limited = stack.client(secret)
    limited.models.list()
    raised = _raised(limited.models.list)
    assert type(raised) is openai.RateLimitError and raised.code == "rate_limit_exceeded"
