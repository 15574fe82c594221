"""The in-process model's limits (OpenAI's: 2,048 inputs, 8,192 tokens per input, 300,000 per
request), counted with the model's own tokenizer: the bound that spares tokenizing is checked
against that tokenizer, counting a hostile request stops early, off the event loop, and the
tenants waiting for the counting thread take turns (one chunk at a time, through
`CountingGate`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.errors import InvalidInput
from domicile.inference.providers import local_embeddings, shapes
from domicile.inference.providers.local_embeddings import (
    LocalEmbeddingsProvider,
    counting_tokenizer,
    counting_turns,
    token_bound,
    within_bound,
)
from tests.gateway.encoder_gate import CountingGate, until_queued
from tests.gateway.support import make_settings, provider

MODEL = "all-minilm-l6-v2"
SENTENCE = "The quick brown fox jumps over the lazy dog near the riverbank. "  # 14 tokens
# Characters whose normalizing changes their length or that the tokenizer treats apart:
# Hangul (1 character, up to 3 tokens), accents, dotted I, CJK, astral, controls, spaces.
AWKWARD = list("각한국어İéñ\u0301\u0300中文\U0001d49c\x00\u200b\ufb01\u1f82ß\u3000\u00a0 \n\t.,")
TEXTS = st.text(alphabet=st.sampled_from(AWKWARD) | st.characters(codec="utf-8")
                | st.sampled_from(list("ab ")), max_size=120)


@pytest.fixture(scope="module")
def counter() -> Any:
    return counting_tokenizer()  # loads the model once per process (about 5 s)


def _tokens(counter: Any, text: str, *, special: bool = True) -> int:
    return len(counter.encode(text, add_special_tokens=special).ids)


def _count(counter: Any, texts: list[str]) -> list[str]:
    """`texts` counted whole (every turn in a row): as the encoder gets them, or the 400."""
    turns = counting_turns(counter, texts, 256)
    for _ in range(10_000):
        if (kept := local_embeddings._count_turn(turns)) is not None:
            return kept
    raise AssertionError("counting never ended")


@settings(max_examples=400, deadline=None)
@given(text=TEXTS)
def test_the_bound_is_never_below_the_count(counter: Any, text: str) -> None:
    assert _tokens(counter, text) <= token_bound(text)


def test_a_short_text_may_still_pass_the_input_limit(counter: Any) -> None:
    # ASCII: at most one token per character, plus [CLS] and [SEP]: 8,190 characters fit.
    assert _tokens(counter, "a." * 4095) == 8192
    # Not so beyond ASCII: a Hangul syllable becomes up to three tokens.
    hangul = ("각" * 30 + " ") * 100
    assert len(hangul) <= 8190 < _tokens(counter, hangul)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, size=st.integers(1, 12))
def test_pieces_cut_after_whitespace_add_up_to_the_whole(counter: Any, text: str,
                                                          size: int) -> None:
    spans = list(local_embeddings._spans(text, size))
    assert "".join(text[start:end] for start, end in spans) == text
    assert sum(_tokens(counter, text[start:end], special=False) for start, end in spans) == (
        _tokens(counter, text, special=False))


class _Recording:
    """The counting tokenizer, noting how much it was given and on which thread."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.characters = 0
        self.threads: set[str] = set()

    def encode_batch_fast(self, texts: list[str], **options: Any) -> Any:
        self.characters += sum(map(len, texts))
        self.threads.add(threading.current_thread().name)
        return self.counter.encode_batch_fast(texts, **options)


@pytest.fixture
async def embedder(counter: Any, tmp_path: Path) -> AsyncIterator[Any]:
    config = make_settings(tmp_path, eu=[provider("emb", "local-embeddings", [MODEL])], us=[])
    served = LocalEmbeddingsProvider(config.regions["eu"].providers[0], "eu")
    await served.start()
    served._counter = _Recording(served._counter)
    yield served
    await served.aclose()


async def test_the_issues_30_mb_request_is_refused_after_counting_a_little(
        embedder: Any) -> None:
    # 2,048 inputs of 15,000 characters (~2,900 tokens each): 30 MB the encoder once spent
    # minutes on. Refused after ~1.5 MB, on the counting thread, before any encoder step.
    texts = [SENTENCE * (15_000 // len(SENTENCE))] * 2048
    with pytest.raises(InvalidInput) as caught:
        await embedder.embeddings(b"", {"model": MODEL, "input": texts})
    assert "300,000 tokens per request" in caught.value.message
    assert caught.value.param == "input"
    recording = embedder._counter
    assert 0 < recording.characters <= 2 * 1024 * 1024 < sum(map(len, texts)) // 10
    assert all(name.startswith("domicile-emb-count") for name in recording.threads)
    assert embedder.steps_run == 0


async def test_one_huge_input_is_refused_after_its_first_pieces(embedder: Any) -> None:
    # 101-character words are one [UNK] each: 30 MB that is no more than 300,000 tokens.
    text = ("y" * 101 + " ") * 300_000
    with pytest.raises(InvalidInput) as caught:
        await embedder.embeddings(b"", {"model": MODEL, "input": text})
    assert "8,192 tokens per input" in caught.value.message
    assert embedder._counter.characters <= 2 * 1024 * 1024
    assert embedder.steps_run == 0


async def test_the_bound_spares_the_tokenizer(embedder: Any) -> None:
    assert within_bound(["word " * 20] * 2048)  # 208,896 tokens at most
    assert not within_bound(["word " * 20] * 2048 + ["x" * 91_102])
    assert not within_bound(["x" * 8191])
    assert not within_bound(["é" * 2048])
    await embedder.embeddings(b"", {"model": MODEL, "input": ["x" * 8190, "é" * 2047]})
    assert embedder._counter.characters == 0


def test_the_limits_are_inclusive(counter: Any) -> None:
    # 36 inputs of 8,192 tokens and one of 5,088: 300,000 tokens exactly.
    full, rest = "word " * 8190, "word " * 5086
    assert _tokens(counter, full) == 8192 and _tokens(counter, rest) == 5088
    _count(counter, [full] * 36 + [rest])
    with pytest.raises(InvalidInput, match="300,000 tokens per request"):
        _count(counter, [full] * 36 + [rest + "x"])
    with pytest.raises(InvalidInput, match=r"`input\[1\]` .* 8,192 tokens per input"):
        _count(counter, ["x", full + "x"])


async def test_a_long_input_reaches_the_encoder_cut_but_embeds_the_same(
        embedder: Any, counter: Any) -> None:
    # Past 256 tokens the model truncates: it gets only the pieces that hold them, and the
    # same vector as from the whole text.
    text = SENTENCE * 560  # 36 KB, 7,842 tokens
    kept = _count(counter, [text])
    assert text.startswith(kept[0]) and len(kept[0]) < len(text)
    answer = await embedder.embeddings(b"", {"model": MODEL, "input": text,
                                             "encoding_format": "float"})
    whole, tokens = local_embeddings._encode(local_embeddings.load_model(), [text])
    assert answer.prompt_tokens == tokens[0] == 256
    assert json.loads(answer.body)["data"][0]["embedding"] == pytest.approx(whole[0], abs=1e-5)


@pytest.fixture
def counting(embedder: Any) -> Iterator[CountingGate]:
    held = CountingGate(embedder._counter)
    embedder._counter = held
    yield held
    held.open()


def _past_the_limit(word: str) -> list[str]:
    # 2,048 inputs of 4,002 tokens: refused after 75 of them (600 KB), in the third chunk.
    return [f"{word} " * 4000] * 2048


async def _refused(embedder: Any, texts: list[str], owner: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        await embedder.embeddings(b"", {"model": MODEL, "input": texts}, owner=owner)
    return caught.value.message


async def _counting(embedder: Any, requests: int) -> None:
    """Until `requests` are being counted or wait to be."""
    await until_queued(lambda: embedder.queued_counts, requests, "requests")


def _whose(chunks: list[list[str]]) -> list[str]:
    return [chunk[0].split()[0] for chunk in chunks]


async def test_counting_takes_turns_by_tenant(embedder: Any, counting: CountingGate) -> None:
    # Tenant A's two requests (x, y), counted in arrival order, and tenant B's (z): one chunk
    # each in turn, so A's second request does not hold B back, nor does the size of A's first.
    first = asyncio.create_task(_refused(embedder, _past_the_limit("x"), "proj_a"))
    await asyncio.to_thread(counting.next_step)  # A's first chunk holds the counting thread
    tasks = [first, asyncio.create_task(_refused(embedder, _past_the_limit("y"), "proj_a")),
             asyncio.create_task(_refused(embedder, _past_the_limit("z"), "proj_b"))]
    await _counting(embedder, 3)
    counting.open()
    for message in await asyncio.wait_for(asyncio.gather(*tasks), 60):
        assert "300,000 tokens per request" in message
    chunks = _whose(counting.steps)
    turns = chunks.count("z")
    assert turns >= 3 and chunks.count("x") == chunks.count("y") == turns
    assert chunks == ["x"] + ["z", "x"] * (turns - 1) + ["z"] + ["y"] * turns
    assert embedder.steps_run == 0


async def test_counting_stops_when_its_request_has_gone(embedder: Any,
                                                        counting: CountingGate) -> None:
    gone = asyncio.create_task(_refused(embedder, _past_the_limit("x"), "proj_a"))
    await asyncio.to_thread(counting.next_step)  # its first chunk holds the counting thread
    gone.cancel()  # what the gateway does when its client leaves
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    assert embedder.queued_counts == 0
    counting.open()
    await asyncio.wait_for(_refused(embedder, _past_the_limit("z"), "proj_b"), 60)
    chunks = _whose(counting.steps)
    assert chunks[0] == "x" and set(chunks[1:]) == {"z"}  # no chunk of it after the one


def test_the_limits_are_openais() -> None:
    assert (shapes.MAX_EMBEDDING_INPUTS, shapes.MAX_INPUT_TOKENS, shapes.MAX_REQUEST_TOKENS) == (
        2048, 8192, 300_000)
