"""The Responses API end to end: the official `openai` SDK against `domicile serve`, one
served site for this module.

Streaming with a function tool round trip, background runs polled to the end and ended by a
server stop, and the canary scan (G4, G5) over response events: a zero-retention project's
streamed events, tool calls and outputs leave nothing on disk; a regional project's streamed
and background responses are kept, readable, and nowhere in plaintext.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import trustme

from tests.conftest import scan_for_canary
from tests.e2e.conftest import MODEL, Deployment, deployed
from tests.e2e.harness import Server
from tests.gateway.upstream import FakeUpstream

TOOLS: list[Any] = [{"type": "function", "name": "lookup", "strict": False,
                     "parameters": {"type": "object",
                                    "properties": {"q": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory,
         upstreams: tuple[dict[str, FakeUpstream], trustme.CA]) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("responses"), upstreams) as deployment:
        yield deployment


@pytest.fixture
def served(site: Deployment) -> Deployment:
    site.reset()
    if site.server.process.poll() is not None:  # a test stopped it: serve again
        restart(site)
    return site


def restart(deployment: Deployment) -> None:
    deployment.server.stop()
    deployment.server = Server(deployment.site, deployment.site.root.parent)
    deployment.server.wait_ready()


def strict(deployment: Deployment, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=deployment.site.url("eu") + "/v1",
                         api_key=deployment.keys[key], max_retries=0, timeout=60,
                         _strict_response_validation=True)


def until(check: Callable[[], Any], what: str, deadline_s: float = 30.0) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def calls(deployment: Deployment, name: str, arguments: str) -> None:
    for upstream in ("eu-a", "eu-b"):
        deployment.upstreams[upstream].behaviour.tool_calls = [(name, arguments)]


def tool_round_trip(client: openai.OpenAI, question: str, result: str, *,
                    chained: bool) -> tuple[str, str]:
    """(the first response's id, the final text) of a streamed call and its answer."""
    first = list(client.responses.create(model=MODEL, input=question, tools=TOOLS,
                                         stream=True))
    assert first[-1].type == "response.completed"
    call = first[-1].response.output[0]  # type: ignore[union-attr]
    assert call.type == "function_call"
    output = {"type": "function_call_output", "call_id": call.call_id, "output": result}
    if chained:
        second = client.responses.create(model=MODEL, tools=TOOLS, stream=True, input=[output],
                                         previous_response_id=first[-1].response.id)  # type: ignore[union-attr]
    else:
        second = client.responses.create(model=MODEL, tools=TOOLS, stream=True, input=[
            {"role": "user", "content": question},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments}, output])
    final = list(second)[-1]
    assert final.type == "response.completed"
    return first[-1].response.id, final.response.output_text  # type: ignore[union-attr]


def test_streaming_with_a_function_tool_round_trip(served: Deployment) -> None:
    calls(served, "lookup", '{"q": "opening hours"}')
    client = strict(served, "eu_regional")
    with client.responses.stream(model=MODEL, input="plain question") as events:
        kinds = [event.type for event in events]
        text = events.get_final_response().output_text
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert text.endswith("says: plain question")
    first_id, answer = tool_round_trip(client, "when are you open?", "9 to 5", chained=True)
    assert answer.endswith("says: 9 to 5")
    items = client.responses.input_items.list(first_id)
    assert [item.type for item in items.data] == ["message"]
    served.reset()
    calls(served, "lookup", '{"q": "x"}')
    _, stateless = tool_round_trip(strict(served, "eu_zero"), "q?", "42", chained=False)
    assert stateless.endswith("says: 42")


def test_a_background_response_is_polled_to_completion(served: Deployment) -> None:
    client = strict(served, "eu_regional")
    queued = client.responses.create(model=MODEL, input="in the background", background=True)
    assert queued.status == "queued"
    done = until(lambda: (r := client.responses.retrieve(queued.id)).status == "completed"
                 and r, "the background response")
    assert done.output_text.endswith("says: in the background")


def test_a_background_run_stopped_with_the_server_ends_failed(served: Deployment) -> None:
    gate = threading.Event()
    for upstream in ("eu-a", "eu-b"):
        served.upstreams[upstream].behaviour.hold = gate
    client = strict(served, "eu_regional")
    try:
        queued = client.responses.create(model=MODEL, input="cut short", background=True)
        until(lambda: sum(u.holding for u in served.upstreams.values()),
              "the run to reach an upstream")
        restart(served)
    finally:
        gate.set()
    after = client.responses.retrieve(queued.id)
    assert after.status == "failed"
    assert after.error is not None and "server stopped" in after.error.message


def test_response_events_leave_no_content_on_disk(served: Deployment) -> None:
    zero_canary = f"ZDR-CANARY-{secrets.token_hex(16)}"
    kept_canary = f"G5-CANARY-{secrets.token_hex(16)}"
    zero = strict(served, "eu_zero")
    for model in (MODEL, "dev-echo"):
        for _ in zero.responses.create(model=model, input=f"secret {zero_canary}",
                                       instructions=zero_canary, stream=True):
            pass
    calls(served, "lookup", f'{{"q": "{zero_canary}"}}')
    tool_round_trip(zero, f"find {zero_canary}", f"found {zero_canary}", chained=False)
    served.upstreams["eu-a"].behaviour.then = "reset"  # a stream that breaks off, too
    served.upstreams["eu-b"].behaviour.then = "reset"
    served.upstreams["eu-a"].behaviour.tool_calls = []
    served.upstreams["eu-b"].behaviour.tool_calls = []
    broken = list(zero.responses.create(model=MODEL, input=zero_canary, stream=True))
    assert broken[-1].type == "response.failed"
    assert any(zero_canary.encode() in r.body for u in served.upstreams.values()
               for r in u.received)  # it did travel, in region
    served.reset()
    regional = strict(served, "eu_regional")
    with regional.responses.stream(model=MODEL, input=f"remember {kept_canary}") as events:
        streamed = events.get_final_response()
    background = regional.responses.create(model="dev-echo", input=kept_canary,
                                           background=True)
    until(lambda: regional.responses.retrieve(background.id).status == "completed",
          "the background response")
    assert kept_canary in regional.responses.retrieve(streamed.id).output_text
    served.server.stop()  # flush usage and logs, close every file
    assert scan_for_canary(served.places(), zero_canary) == []
    assert scan_for_canary(served.places(), kept_canary) == []
    restart(served)
    again = strict(served, "eu_regional")  # kept, encrypted, and still readable
    assert kept_canary in again.responses.retrieve(streamed.id).output_text
    assert again.responses.retrieve(background.id).output_text == kept_canary
