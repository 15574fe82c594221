"""The Responses API against hostile input, odd upstreams and races: a deleted background
response stays deleted (one process, and two replicas over one store), malformed input and
parameters are 400s naming the param (never 500s, never echoing client text), an upstream's
malformed answer is a 502."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from domicile.gateway import GatewayApp
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from tests.gateway.conftest import EU_REGIONAL_KEY, Stack
from tests.gateway.support import (
    DictAuthenticator,
    MemoryUsageSink,
    ServedApp,
    grant,
    make_settings,
    provider,
)
from tests.gateway.test_responses_stream import until

AUTH = {"Authorization": f"Bearer {EU_REGIONAL_KEY}"}

# -- a deleted background response stays deleted ---------------------------------------------


class _GatedWrites:
    """Holds the store's write of a finished run (`completed` in its body) until `gate` is
    set; `writing` says one is waiting there."""

    def __init__(self, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.writing = threading.Event()
        for name in ("put_record", "replace_record"):
            monkeypatch.setattr(stack.store, name, self._held(getattr(stack.store, name)))

    def _held(self, write: Callable[..., Any]) -> Callable[..., Any]:
        def held(tenant: TenantRef, kind: str, record_id: str, plaintext: bytes) -> Any:
            if kind == "response" and b'"status":"completed","background"' in plaintext:
                self.writing.set()
                assert self.gate.wait(20), "the test never let the write through"
            return write(tenant, kind, record_id, plaintext)
        return held


def _delete_in_background(url: str, response_id: str) -> tuple[threading.Thread,
                                                                 list[httpx.Response]]:
    answers: list[httpx.Response] = []

    def delete() -> None:
        answers.append(httpx.delete(f"{url}/v1/responses/{response_id}", headers=AUTH,
                                    timeout=20))

    thread = threading.Thread(target=delete)
    thread.start()
    return thread, answers


def _gone(stack: Stack, response_id: str) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response_id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(response_id)
    assert ("proj_key_eu_regional", "response", response_id) not in stack.store.records


def test_a_response_deleted_while_its_run_writes_stays_deleted(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _GatedWrites(stack, monkeypatch)
    client = stack.client(EU_REGIONAL_KEY)
    queued = client.responses.create(model="dev-echo", input="secret", background=True)
    until(writes.writing.is_set, "the run to write its answer")
    endpoint = stack.eu_app._responses
    thread, answers = _delete_in_background(stack.eu.url, queued.id)
    # The DELETE either waits behind the run's write (the fix) or is done already.
    until(lambda: answers or (getattr(endpoint, "_writes", None) is not None
          and endpoint._writes.users(queued.id) >= 2), "the DELETE to reach the endpoint")
    writes.gate.set()
    thread.join(20)
    assert answers[0].status_code == 200 and answers[0].json()["deleted"] is True
    until(lambda: not endpoint._tasks, "the run to end")
    _gone(stack, queued.id)


@pytest.fixture
def replica(stack: Stack, tmp_path: Path) -> Iterator[ServedApp]:
    """Another process of region eu over the same content store (its own locks and runs)."""
    settings = make_settings(tmp_path, eu=[provider("eu-dev", "dev-echo", ["dev-echo"])],
                             us=[])
    app = GatewayApp(settings, "eu", usage_sink=MemoryUsageSink(), content_store=stack.store,
                     authenticator=DictAuthenticator({
                         EU_REGIONAL_KEY: grant("key_eu_regional", retention="regional")}))
    served = ServedApp(stack.loop, app)
    yield served
    served.stop()


def test_a_delete_on_another_replica_is_not_undone_by_the_run(
        stack: Stack, replica: ServedApp, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _GatedWrites(stack, monkeypatch)
    client = stack.client(EU_REGIONAL_KEY)
    queued = client.responses.create(model="dev-echo", input="secret", background=True)
    until(writes.writing.is_set, "the run to write its answer")
    thread, answers = _delete_in_background(replica.url, queued.id)
    thread.join(20)  # the other replica has its own locks: it deletes at once
    assert answers[0].status_code == 200
    writes.gate.set()
    until(lambda: not stack.eu_app._responses._tasks, "the run to end")
    _gone(stack, queued.id)


def test_replace_record_writes_only_what_is_there_on_a_real_store(site: Site) -> None:
    store = site.store("eu")
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "app", "eu", retention="regional")
    tenant = TenantRef(project.id, "eu", org.id)
    assert not store.replace_record(tenant, "response", "resp_gone", b"{}")
    assert store.get_record(tenant, "response", "resp_gone") is None
    store.put_record(tenant, "response", "resp_here", b"one")
    assert store.replace_record(tenant, "response", "resp_here", b"two")
    assert store.get_record(tenant, "response", "resp_here") == b"two"
    assert store.delete_record(tenant, "response", "resp_here")
    assert not store.replace_record(tenant, "response", "resp_here", b"three")
    assert store.get_record(tenant, "response", "resp_here") is None


# -- hostile input is a 400, never a 500 -------------------------------------------------------


def _post(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return stack.http().post("/v1/responses", headers=AUTH, json=body)


def _refused(answer: httpx.Response, param: str) -> dict[str, Any]:
    assert answer.status_code == 400, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    return error


@pytest.mark.parametrize("limit", ["%C2%B2", "%D9%A3", "9" * 5000, "-1", "1.0", ""])
def test_an_odd_input_items_limit_is_a_400(stack: Stack, limit: str) -> None:
    response = stack.client(EU_REGIONAL_KEY).responses.create(model="dev-echo", input="x")
    answer = stack.http().get(f"/v1/responses/{response.id}/input_items?limit={limit}",
                              headers=AUTH)
    _refused(answer, "limit")


@pytest.mark.parametrize("item", [
    {"type": "message", "role": [], "content": "x"},
    {"type": "message", "role": {"a": 1}, "content": "x"},
    {"role": "user", "content": [{"type": ["input_text"], "text": "x"}]},
    {"role": "user", "content": [{"type": {"k": "v"}, "text": "x"}]},
    {"role": "user", "content": [{"type": "input_image", "image_url": "data:,", "detail": []}]},
    {"type": "function_call_output", "call_id": "c", "output": [{"type": [], "text": "x"}]},
    {"type": "function_call_output", "call_id": "c", "output": [{"type": {}, "text": "x"}]},
    {"type": "function_call_output", "call_id": [], "output": "x"},
    {"type": "function_call_output", "call_id": "c", "output": 5},
    {"type": ["message"], "role": "user", "content": "x"},
])
def test_odd_input_items_are_a_400_naming_input(stack: Stack, item: dict[str, Any]) -> None:
    _refused(_post(stack, {"model": "dev-echo", "input": [item]}), "input")


def test_a_refusal_never_quotes_a_clients_type(stack: Stack) -> None:
    canary = "CANARY " + "x" * 1000
    for body in ({"input": [{"type": canary}]},
                 {"input": [{"role": "user", "content": [{"type": canary}]}]},
                 {"input": "x", "tools": [{"type": canary}]},
                 {"input": "x", "text": {"format": {"type": canary}}}):
        answer = _post(stack, {"model": "dev-echo", **body})
        assert answer.status_code == 400 and "CANARY" not in answer.text
    named = _post(stack, {"model": "dev-echo", "input": [{"type": "file_search_call"}]})
    assert "`file_search_call`" in named.json()["error"]["message"]


# -- what a Response echoes is checked first ---------------------------------------------------


@pytest.mark.parametrize(("extra", "param"), [
    ({"user": 5}, "user"),
    ({"safety_identifier": ["x"]}, "safety_identifier"),
    ({"prompt_cache_key": {}}, "prompt_cache_key"),
    ({"instructions": 7}, "instructions"),
    ({"max_output_tokens": "x"}, "max_output_tokens"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 1.5}, "max_output_tokens"),
    ({"max_output_tokens": True}, "max_output_tokens"),
    ({"metadata": [1]}, "metadata"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"service_tier": "gold"}, "service_tier"),
    ({"service_tier": ["auto"]}, "service_tier"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": False}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": "1"}, "top_p"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"max_tool_calls": "2"}, "max_tool_calls"),
    ({"text": "plain"}, "text"),
    ({"text": {"format": "text"}}, "text.format"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"text": {"format": {"type": "json_schema", "name": "s", "schema": []}}},
     "text.format.schema"),
    ({"text": {"verbosity": 3}}, "text.verbosity"),
    ({"tool_choice": 5}, "tool_choice"),
    ({"tool_choice": ["auto"]}, "tool_choice"),
    ({"tool_choice": {"type": "function"}}, "tool_choice"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"store": "yes"}, "store"),
    ({"background": 1}, "background"),
    ({"stream": "true"}, "stream"),
    ({"previous_response_id": 5}, "previous_response_id"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "{}"}]}, "tools.parameters"),
    ({"tools": [{"type": "function", "name": "f", "description": 1}]}, "tools.description"),
    ({"tools": [{"type": "function", "name": "f", "strict": "yes"}]}, "tools.strict"),
])
def test_a_parameter_of_the_wrong_type_is_a_400_naming_it(
        stack: Stack, extra: dict[str, Any], param: str) -> None:
    error = _refused(_post(stack, {"model": "dev-echo", "input": "x", **extra}), param)
    assert error["type"] == "invalid_request_error"
    assert stack.store.records == {}


def test_parameters_of_the_right_types_give_a_strictly_valid_response(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)  # strict validation of every answer
    response = client.responses.create(
        model="dev-echo", input="x", user="u-1", safety_identifier="s-1",
        prompt_cache_key="k-1", instructions="be brief", max_output_tokens=64,
        metadata={"k": "v"}, service_tier="auto", temperature=0.5, top_p=0.9,
        top_logprobs=0, max_tool_calls=2, parallel_tool_calls=False, store=True,
        text={"format": {"type": "json_schema", "name": "answer", "strict": True,
                         "schema": {"type": "object", "properties": {}}},
              "verbosity": "low"},
        tools=[{"type": "function", "name": "f", "description": "d", "strict": False,
                "parameters": {"type": "object", "properties": {}}}],
        tool_choice={"type": "function", "name": "f"})
    assert (response.user, response.max_output_tokens, response.metadata) == (
        "u-1", 64, {"k": "v"})
    assert (response.temperature, response.top_p, response.service_tier) == (0.5, 0.9, "auto")
    assert response.parallel_tool_calls is False
    assert response.text is not None and response.text.verbosity == "low"
    stored = client.responses.retrieve(response.id)
    assert stored.user == "u-1" and stored.tool_choice.type == "function"  # type: ignore[union-attr]


# -- errors never quote client text ------------------------------------------------------------


def test_a_not_found_quotes_only_ids_of_our_own_shape(stack: Stack) -> None:
    http = stack.http()
    canary = "CANARY" + "x" * 200
    for answer in (
            _post(stack, {"model": "dev-echo", "input": "x", "previous_response_id": canary}),
            http.get(f"/v1/responses/{canary}", headers=AUTH),
            http.delete(f"/v1/responses/{canary}", headers=AUTH),
            http.post(f"/v1/responses/{canary}/cancel", headers=AUTH),
            http.get(f"/v1/responses/resp_{canary}%0A", headers=AUTH)):
        assert answer.status_code == 404
        assert "CANARY" not in answer.text and "the given id" in answer.json()["error"]["message"]
    response = stack.client(EU_REGIONAL_KEY).responses.create(model="dev-echo", input="x")
    answer = http.get(f"/v1/responses/{response.id}/input_items?after={canary}", headers=AUTH)
    assert answer.status_code == 404 and "CANARY" not in answer.text
    assert _refused_404(answer)["param"] == "after"
    # our own shapes are quoted, so a caller can tell which id was missing
    for answer in (http.get("/v1/responses/resp_abc123", headers=AUTH),
                   http.get(f"/v1/responses/{response.id}/input_items?after=msg_abc",
                            headers=AUTH)):
        assert answer.status_code == 404
        assert "'resp_abc123'" in answer.text or "'msg_abc'" in answer.text


def _refused_404(answer: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- an upstream's malformed answer is a 502 ---------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b'{"choices": [{"message": "hi", "finish_reason": "stop"}]}',
    b'{"choices": [{"message": ["hi"]}]}',
    b'{"choices": [{"message": {"content": "x", "tool_calls": 5}}]}',
    b'{"choices": {"0": {"message": {"content": "x"}}}}',
    b'{"choices": 5}',
    b'{"choices": ["x"]}',
    b'{"choices": []}',
    b'[1, 2]',
    b'"text"',
])
def test_an_upstream_answer_that_is_not_a_chat_completion_is_a_502(
        stack: Stack, garbage: bytes) -> None:
    upstream = stack.upstreams["eu-solo"].behaviour
    upstream.mode, upstream.garbage = "garbage", garbage
    answer = stack.http().post("/v1/responses", headers=AUTH,
                               json={"model": "solo-model", "input": "x"})
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_error" and "eu-solo" in error["message"]


# -- a background run's tokens count like a foreground request's -------------------------------


def test_a_background_runs_usage_is_recorded_and_counts_against_the_token_limit(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "dk-eu-tpm-background000000000"
    monkeypatch.setitem(stack.auth.keys, key,
                        grant("key_tpm_background", retention="regional", tpm=15))
    client = stack.client(key)
    queued = client.responses.with_raw_response.create(model="fo-model", input="count me",
                                                       background=True)
    response = queued.parse()
    # polled without the key: a GET after the run's charge would be over the limit already
    until(lambda: not stack.eu_app._responses._tasks, "the background run to end")
    stored = json.loads(stack.store.records[("proj_key_tpm_background", "response",
                                              response.id)])
    assert stored["response"]["status"] == "completed"
    stack.loop.run(stack.eu_app.usage.flush())
    rows = [r for r in stack.sink.records
            if r.key_id == "key_tpm_background" and r.completion_tokens]
    assert len(rows) == 1
    (row,) = rows
    assert (row.endpoint, row.model, row.provider, row.status) == (
        "/v1/responses", "fo-model", "eu-a", 200)
    assert (row.prompt_tokens, row.completion_tokens) == (11, 7)
    assert row.request_id == queued.headers["x-request-id"]  # the request that created it
    # its 18 tokens are over the key's 15 a minute: the next request waits
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="dev-echo", input="more")


# -- GET ?stream=true replays a finished response's events -------------------------------------


def _kinds(events: list[Any]) -> list[str]:
    """Event types, a run of deltas counted once (a replay sends each text in one delta)."""
    kinds: list[str] = []
    for event in events:
        if not (kinds and event.type == kinds[-1] and event.type.endswith(".delta")):
            kinds.append(event.type)
    return kinds


def test_retrieve_with_stream_replays_a_finished_response(stack: Stack) -> None:
    client = stack.client(EU_REGIONAL_KEY)
    live = list(client.responses.create(model="fo-model", input="say it again",
                                        stream=True))
    final = live[-1].response  # type: ignore[union-attr]
    replayed = list(client.responses.retrieve(final.id, stream=True))
    assert _kinds(replayed) == _kinds(live)
    assert [e.sequence_number for e in replayed] == list(range(len(replayed)))
    assert replayed[-1].type == "response.completed"
    assert replayed[-1].response == client.responses.retrieve(final.id)  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in replayed if e.type == "response.output_text.delta")
    assert deltas == final.output_text == "eu-a says: say it again"
    rest = list(client.responses.retrieve(final.id, stream=True, starting_after=3))
    assert [e.sequence_number for e in rest] == list(range(4, len(replayed)))
    assert [e.type for e in rest] == [e.type for e in replayed[4:]]


def test_retrieve_with_stream_replays_function_calls(stack: Stack) -> None:
    stack.upstreams["eu-a"].behaviour.tool_calls = [("get_weather", '{"city":"Paris"}')]
    client = stack.client(EU_REGIONAL_KEY)
    created = client.responses.create(model="fo-model", input="weather?", tools=[
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"},
         "strict": False}])
    replayed = list(client.responses.retrieve(created.id, stream=True))
    done = next(e for e in replayed if e.type == "response.function_call_arguments.done")
    assert (done.name, done.arguments) == ("get_weather", '{"city":"Paris"}')
    assert replayed[-1].response.output == created.output  # type: ignore[union-attr]


def test_retrieve_with_stream_refuses_what_has_no_end_yet(stack: Stack) -> None:
    gate = threading.Event()
    stack.upstreams["eu-a"].behaviour.hold = gate
    client = stack.client(EU_REGIONAL_KEY)
    queued = client.responses.create(model="fo-model", input="slow", background=True)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            list(client.responses.retrieve(queued.id, stream=True))
        assert caught.value.param == "stream"  # type: ignore[attr-defined]
        assert "Poll it" in caught.value.message
    finally:
        gate.set()
    http = stack.http()
    for query in ("stream=maybe", "stream=true&starting_after=-1",
                  "stream=true&starting_after=%C2%B2"):
        answer = http.get(f"/v1/responses/{queued.id}?{query}", headers=AUTH)
        assert answer.status_code == 400 and "maybe" not in answer.text
