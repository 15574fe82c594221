"""Streams count their tokens even when the client does not ask for usage.

The gateway splices `stream_options.include_usage` into a stream request that lacks it, and
takes the extra usage chunk (and OpenAI's `"usage": null` on every other chunk) back out of
the answer, so the client gets the stream it asked for while usage metadata and token limits
see the tokens. A client that asked for usage gets the stream untouched.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable

import httpx
import openai
import pytest

from domicile.inference.usage import SseUsageStripper, request_usage
from domicile.storage.interfaces import UsageRecord
from tests.gateway.conftest import EU_ZERO_KEY, Stack
from tests.gateway.support import grant

AUTH = {"Authorization": f"Bearer {EU_ZERO_KEY}"}
MESSAGES = [{"role": "user", "content": "one two three"}]


def _records(stack: Stack, count: int, seconds: float = 3.0) -> list[UsageRecord]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(stack.sink.records) < count:
        time.sleep(0.05)
    return list(stack.sink.records)


# -- the request: asking for usage ------------------------------------------------------------


def test_request_usage_splices_right_after_the_opening_brace() -> None:
    body = b' \n{ "model":"m",  "stream":true, "messages":[{"role":"user","content":"{x}"}]}'
    parsed = json.loads(body)
    spliced, asked = request_usage(body, parsed)  # type: ignore[misc]
    assert spliced == (b' \n{"stream_options":{"include_usage":true}, "model":"m",  '
                       b'"stream":true, "messages":[{"role":"user","content":"{x}"}]}')
    assert json.loads(spliced) == asked == {**parsed,
                                            "stream_options": {"include_usage": True}}
    assert "stream_options" not in parsed  # the caller's parse is not changed


def test_request_usage_passes_a_utf8_bom_through() -> None:
    body = b'\xef\xbb\xbf{"model":"m","stream":true}'
    spliced, _ = request_usage(body, json.loads(body))  # type: ignore[misc]
    assert json.loads(spliced)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("body", [
    b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}',
    b'{"model":"m","stream":true,"stream_options":"nonsense"}',
    '{"model":"m","stream":true}'.encode("utf-16"),
    b"{}",
])
def test_request_usage_leaves_other_requests_alone(body: bytes) -> None:
    assert request_usage(body, json.loads(body)) is None


@pytest.mark.parametrize("options", [{}, {"include_usage": False}, None,
                                     {"include_usage": False, "other": 1}])
def test_stream_options_without_usage_are_rewritten_to_ask_for_it(options: object) -> None:
    """Otherwise `stream_options: {}` would let a stream escape token counting and limits."""
    parsed = {"model": "m", "stream": True, "stream_options": options}
    asked = request_usage(json.dumps(parsed).encode(), parsed)
    assert asked is not None
    body, rewritten = asked
    assert json.loads(body) == rewritten
    assert rewritten["stream_options"]["include_usage"] is True
    assert rewritten["model"] == "m" and parsed["stream_options"] == options


# -- the answer: taking the usage back out ----------------------------------------------------


def _event(obj: object, *, spaced: bool = False, end: bytes = b"\n\n") -> bytes:
    separators = (", ", ": ") if spaced else (",", ":")
    return b"data: " + json.dumps(obj, separators=separators).encode() + end


def _content(text: str, **extra: object) -> dict[str, object]:
    return {"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            **extra}


USAGE = {"id": "c", "object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}


def _stream(*, usage_at: str, spaced: bool = False, end: bytes = b"\n\n"
            ) -> tuple[bytes, bytes]:
    """(what the upstream sends when usage was asked for, what the client would have got)."""
    texts = ["Hello", " there, the \"usage\" of", " max_tokens\" is", " a word", "{}\n\n"]
    asked = [_event(_content(t, usage=None), spaced=spaced, end=end) for t in texts]
    plain = [_event(_content(t), spaced=spaced, end=end) for t in texts]
    usage = _event(USAGE, spaced=spaced, end=end)
    done = b"data: [DONE]" + end
    if usage_at == "middle":
        return b"".join([*asked[:2], usage, *asked[2:], done]), b"".join([*plain, done])
    return b"".join([*asked, usage, done]), b"".join([*plain, done])


def _feed(pieces: Iterable[bytes]) -> tuple[bytes, SseUsageStripper, list[bytes]]:
    stripper = SseUsageStripper()
    out = [stripper.feed(piece) for piece in pieces]
    out.append(stripper.close())
    return b"".join(out), stripper, out


def _random_splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


STREAMS = [
    pytest.param({"usage_at": "end"}, id="usage-next-to-done"),
    pytest.param({"usage_at": "middle"}, id="usage-in-the-middle"),
    pytest.param({"usage_at": "end", "spaced": True}, id="spaced-json"),
    pytest.param({"usage_at": "middle", "end": b"\r\n\r\n"}, id="crlf-events"),
]


@pytest.mark.parametrize("shape", STREAMS)
def test_the_stripper_takes_out_what_asking_added_however_the_bytes_arrive(
        shape: dict[str, object]) -> None:
    sent, expected = _stream(**shape)  # type: ignore[arg-type]
    rng = random.Random(7)
    splits = {
        "whole": [sent],
        "byte by byte": [sent[i:i + 1] for i in range(len(sent))],
        **{f"random {n}": _random_splits(sent, rng) for n in range(300)},
    }
    for how, pieces in splits.items():
        got, stripper, _ = _feed(pieces)
        assert got == expected, how
        assert (stripper.prompt_tokens, stripper.completion_tokens) == (12, 5), how


def test_whole_events_pass_at_once_and_a_part_waits_for_its_end() -> None:
    stripper = SseUsageStripper()
    first = _event(_content("hi"))
    assert stripper.feed(first) is first  # a read that ends an event: passed on, not copied
    usage = _event(USAGE)
    assert stripper.feed(usage[:20]) == b""  # could be (is) the usage event: held back
    second = _event(_content("there"))
    assert stripper.feed(usage[20:] + second[:9]) == b""  # the usage event, taken out
    assert stripper.feed(second[9:]) == second
    assert stripper.close() == b""
    assert (stripper.prompt_tokens, stripper.completion_tokens) == (12, 5)


def test_usage_on_a_chunk_with_choices_is_counted_and_kept() -> None:
    last = _content("bye", usage={"prompt_tokens": 3, "completion_tokens": 2})
    sent = _event(_content("hi")) + _event(last) + b"data: [DONE]\n\n"
    got, stripper, _ = _feed([sent])
    assert got == sent
    assert (stripper.prompt_tokens, stripper.completion_tokens) == (3, 2)


def test_an_unfinished_last_event_is_passed_on_at_the_end() -> None:
    sent = _event(_content("hi")) + b"data: [DONE]"
    got, _, pieces = _feed([sent])
    assert got == sent and pieces[-1] == b"data: [DONE]"
    got, stripper, _ = _feed([_event(_content("hi")) + _event(USAGE)[:-2]])
    assert got == _event(_content("hi")) and stripper.completion_tokens == 5


def test_a_stream_without_event_ends_is_not_held_for_ever() -> None:
    stripper = SseUsageStripper()
    huge = b"data: " + b"x" * (1 << 20) + b"\n"
    assert stripper.feed(huge[:1000]) == b""
    assert stripper.feed(huge[1000:]) == huge  # over 1 MiB without an event end: let go
    rest = _event(USAGE) + b"data: [DONE]\n\n"
    assert stripper.feed(rest) == rest  # passed through from there on, still counted
    assert stripper.completion_tokens == 5


# -- through the gateway ----------------------------------------------------------------------


@pytest.mark.parametrize(("model", "provider", "tokens"), [
    ("solo-model", "eu-solo", (11, 7)),
    ("dev-echo", "eu-dev", (3, 3)),
])
def test_a_stream_that_does_not_ask_for_usage_still_counts_its_tokens(
        stack: Stack, model: str, provider: str, tokens: tuple[int, int]) -> None:
    chunks = list(stack.client().chat.completions.create(model=model, messages=MESSAGES,
                                                         stream=True))
    assert chunks and all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.endswith("one two three")
    record = _records(stack, 1)[0]
    assert (record.provider, record.status) == (provider, 200)
    assert (record.prompt_tokens, record.completion_tokens) == tokens


def test_the_upstream_is_asked_for_usage_with_the_clients_bytes_otherwise_unchanged(
        stack: Stack) -> None:
    body = (b'{ "messages" : [{"role":"user","content":"spaced  out \\u00e9 {"}],\n'
            b' "model":"solo-model", "stream": true, "x_vendor": {"keep": [1, 2.50]} }')
    with stack.http().stream("POST", "/v1/chat/completions", content=body,
                             headers=AUTH) as response:
        answer = response.read()
    assert response.status_code == 200 and answer.endswith(b"data: [DONE]\n\n")
    received = stack.upstreams["eu-solo"].received[0].body
    assert received == b'{"stream_options":{"include_usage":true},' + body[1:]
    assert json.loads(received)["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in answer


@pytest.mark.parametrize("event_end", [b"\n\n", b"\r\n\r\n"])
def test_the_client_gets_exactly_the_stream_it_would_have_got(stack: Stack,
                                                              event_end: bytes) -> None:
    upstream = stack.upstreams["eu-solo"]
    upstream.behaviour.event_end = event_end
    request = {"model": "solo-model", "messages": MESSAGES, "stream": True}
    direct = httpx.post(upstream.base_url + "/chat/completions", json=request, timeout=20)
    with stack.http().stream("POST", "/v1/chat/completions", json=request,
                             headers=AUTH) as response:
        relayed = response.read()
    assert b'"usage"' not in direct.content
    assert relayed == direct.content
    assert json.loads(upstream.received[-1].body)["stream_options"] == {"include_usage": True}


def test_dev_echo_streams_no_usage_unless_asked(stack: Stack) -> None:
    request = {"model": "dev-echo", "messages": MESSAGES, "stream": True}
    provider = stack.eu_app.router.route("dev-echo", "chat")[0]

    async def direct(parsed: dict[str, object]) -> bytes:
        return b"".join([chunk async for chunk in provider.chat_stream(b"", parsed)])

    plain = stack.loop.run(direct(request))
    asked = stack.loop.run(direct({**request, "stream_options": {"include_usage": True}}))
    assert b'"usage"' not in plain
    assert asked.count(b'"usage":null') == plain.count(b"data: {") == 4
    assert asked.count(b'"choices":[]') == 1
    with stack.http().stream("POST", "/v1/chat/completions", json=request,
                             headers=AUTH) as response:
        relayed = response.read()
    assert b'"usage"' not in relayed and b'"choices":[]' not in relayed
    assert relayed.count(b"data: {") == 4 and relayed.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(("model", "upstream"), [("solo-model", "eu-solo"), ("dev-echo", None)])
def test_a_client_that_asks_for_usage_gets_the_usage_chunk(
        stack: Stack, model: str, upstream: str | None) -> None:
    chunks = list(stack.client().chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(chunk.choices for chunk in chunks[:-1])
    record = _records(stack, 1)[0]
    assert record.completion_tokens == chunks[-1].usage.completion_tokens
    if upstream is not None:
        sent = json.loads(stack.upstreams[upstream].received[0].body)
        assert sent["stream_options"] == {"include_usage": True}


def test_stream_options_of_its_own_cannot_escape_token_counting(stack: Stack) -> None:
    body = b'{"model":"solo-model","stream":true,"stream_options":{},"messages":' + (
        json.dumps(MESSAGES).encode() + b"}")
    with stack.http().stream("POST", "/v1/chat/completions", content=body,
                             headers=AUTH) as response:
        answer = response.read()
    assert response.status_code == 200
    sent = json.loads(stack.upstreams["eu-solo"].received[0].body)
    assert sent["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in answer  # the client asked for none and sees none


def test_streams_use_up_a_keys_tokens(stack: Stack) -> None:
    secret = "dk-eu-tpm-streamer-000000000"
    stack.auth.keys[secret] = grant("key_tpm_streamer", tpm=30)
    client = stack.client(secret)
    for _ in range(2):  # 11 + 7 tokens each: 18, then 36 of 30
        chunks = list(client.chat.completions.create(model="solo-model", messages=MESSAGES,
                                                     stream=True))
        assert all(chunk.choices for chunk in chunks)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="solo-model", messages=MESSAGES, stream=True)
    assert caught.value.type == "tokens"  # type: ignore[attr-defined]
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(stack.upstreams["eu-solo"].received) == 2
    records = _records(stack, 3)
    assert [(r.status, r.prompt_tokens + r.completion_tokens) for r in records] == [
        (200, 18), (200, 18), (429, 0)]
