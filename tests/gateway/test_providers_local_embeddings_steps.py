"""The in-process encoder's steps: bounded, shared round-robin between the tenants (owners)
waiting, an owner's requests in arrival order, and given up by a request that has gone (real
model, one step at a time through `EncoderGate`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from domicile.inference.providers import local_embeddings
from domicile.inference.providers.local_embeddings import STEP_INPUTS, LocalEmbeddingsProvider
from tests.gateway.encoder_gate import EncoderGate, gate_fixture, until_queued  # noqa: F401
from tests.gateway.support import make_settings, provider

MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def model() -> Any:
    return local_embeddings.load_model()  # once per process (about 5 s)


@pytest.fixture
async def embedder(model: Any, tmp_path: Path) -> AsyncIterator[LocalEmbeddingsProvider]:
    settings = make_settings(tmp_path, eu=[provider("emb", "local-embeddings", [MODEL])], us=[])
    served = LocalEmbeddingsProvider(settings.regions["eu"].providers[0], "eu")
    await served.start()
    yield served
    await served.aclose()


def _texts(name: str, count: int) -> list[str]:
    return [f"{name} paragraph {i} on the weather in region {i % 7}" for i in range(count)]


async def _embed(embedder: LocalEmbeddingsProvider, texts: list[str],
                 owner: str = "proj_a") -> list[list[float]]:
    answer = await embedder.embeddings(b"", {"model": MODEL, "input": texts,
                                             "encoding_format": "float"}, owner=owner)
    return [item["embedding"] for item in json.loads(answer.body)["data"]]


async def _queued(embedder: LocalEmbeddingsProvider, inputs: int) -> None:
    """Until `inputs` wait for a step."""
    await until_queued(lambda: embedder.queued_inputs, inputs, "inputs")


async def _step(gate: EncoderGate) -> list[str]:
    return await asyncio.to_thread(gate.next_step)


async def _short_request_rides_the_next_step(embedder: LocalEmbeddingsProvider,
                                             gate: EncoderGate, queued_before: int) -> None:
    """With step 1 holding the encoder and `queued_before` inputs of others waiting, another
    project's one-word request is in step 2, and is answered before step 3 runs."""
    small = asyncio.create_task(_embed(embedder, ["hello"], owner="proj_b"))
    await _queued(embedder, queued_before + 1)
    gate.release()
    second = await _step(gate)
    assert "hello" in second
    assert len(second) == STEP_INPUTS
    gate.release()
    await _step(gate)  # step 3 waits at the encoder: the short request needs no more
    assert len(await asyncio.wait_for(small, 30)) == 1


async def test_a_short_request_waits_at_most_one_step_behind_a_batch(
        embedder: LocalEmbeddingsProvider, gate: EncoderGate, model: Any) -> None:
    batch = _texts("batch", 8 * STEP_INPUTS)
    big = asyncio.create_task(_embed(embedder, batch))
    assert await _step(gate) == batch[:STEP_INPUTS]  # step 1 holds the encoder
    await _short_request_rides_the_next_step(embedder, gate, len(batch) - STEP_INPUTS)
    assert not big.done()
    gate.open()
    vectors = await asyncio.wait_for(big, 60)
    assert all(len(step) <= STEP_INPUTS for step in gate.steps)
    assert len(vectors) == len(batch)  # in order, each its own text's
    alone, _ = gate.encode(model, [batch[0], batch[-1]])
    assert vectors[0] == pytest.approx(alone[0], abs=1e-4)
    assert vectors[-1] == pytest.approx(alone[1], abs=1e-4)


async def test_every_waiting_tenant_gets_a_fair_share_of_a_step(
        embedder: LocalEmbeddingsProvider, gate: EncoderGate) -> None:
    batch = _texts("batch", 100)
    big = asyncio.create_task(_embed(embedder, batch, owner="proj_batch"))
    await _step(gate)
    others = {name: _texts(name, count) for name, count in (("one", 1), ("two", 2),
                                                            ("forty", 40))}
    tasks = {name: asyncio.create_task(_embed(embedder, texts, owner=f"proj_{name}"))
             for name, texts in others.items()}
    await _queued(embedder, len(batch) - STEP_INPUTS + 43)
    gate.release()
    second = await _step(gate)
    share = Counter(text.split()[0] for text in second)
    assert len(second) == STEP_INPUTS  # all four requests in one step
    assert share["one"] == 1 and share["two"] == 2
    assert abs(share["batch"] - share["forty"]) <= 1
    gate.release()
    await _step(gate)
    assert len(await asyncio.wait_for(tasks["one"], 30)) == 1
    assert len(await asyncio.wait_for(tasks["two"], 30)) == 2
    gate.open()
    assert len(await asyncio.wait_for(tasks["forty"], 60)) == 40
    assert len(await asyncio.wait_for(big, 60)) == 100


async def test_a_cancelled_request_takes_no_further_step(
        embedder: LocalEmbeddingsProvider, gate: EncoderGate) -> None:
    batch = _texts("batch", 3 * STEP_INPUTS)
    big = asyncio.create_task(_embed(embedder, batch))
    assert await _step(gate) == batch[:STEP_INPUTS]
    big.cancel()  # what the gateway does when its client leaves
    with contextlib.suppress(asyncio.CancelledError):
        await big
    assert embedder.queued_inputs == 0
    gate.release()  # the step under way ends; its vectors are dropped
    small = asyncio.create_task(_embed(embedder, ["hello"]))
    assert await _step(gate) == ["hello"]
    gate.release()
    await asyncio.wait_for(small, 30)
    assert embedder.steps_run == 2  # and none begun after it


async def test_requests_arriving_together_share_one_step(
        embedder: LocalEmbeddingsProvider, gate: EncoderGate) -> None:
    first = asyncio.create_task(_embed(embedder, ["first"]))
    await _step(gate)
    texts = [[f"sentence {i}", "x"] for i in range(8)]  # of four tenants, two each
    together = [asyncio.create_task(_embed(embedder, pair, owner=f"proj_{i % 4}"))
                for i, pair in enumerate(texts)]
    await _queued(embedder, 16)
    gate.open()
    assert sorted(await _step(gate)) == sorted(t for pair in texts for t in pair)
    await asyncio.wait_for(asyncio.gather(first, *together), 30)
    assert embedder.steps_run == 2


async def test_one_tenants_many_requests_hold_back_anothers_short_one_one_step_at_most(
        embedder: LocalEmbeddingsProvider, gate: EncoderGate) -> None:
    # Issue 11: one tenant's batch may delay another's short request by one step at most,
    # however many requests that batch comes in.
    flood = [asyncio.create_task(_embed(embedder, _texts(f"a{n}", STEP_INPUTS)))
             for n in range(64)]
    await _step(gate)  # step 1 holds the encoder
    await _short_request_rides_the_next_step(embedder, gate, 63 * STEP_INPUTS)
    for task in flood:  # their other steps would only cost the test time
        task.cancel()
    gate.open()
    await asyncio.gather(*flood, return_exceptions=True)


async def test_a_tenants_own_requests_take_its_share_in_arrival_order(
        embedder: LocalEmbeddingsProvider, gate: EncoderGate) -> None:
    # Both steps full: the tenant's first request takes its share of each until it is done.
    first = _texts("first", 2 * STEP_INPUTS - 2)
    tasks = [asyncio.create_task(_embed(embedder, first)),
             asyncio.create_task(_embed(embedder, ["later"])),
             asyncio.create_task(_embed(embedder, ["other"], owner="proj_b"))]
    await _queued(embedder, 2 * STEP_INPUTS)
    gate.open()
    share = STEP_INPUTS - 1
    assert Counter(t.split()[0] for t in await _step(gate)) == {"first": share, "other": 1}
    assert Counter(t.split()[0] for t in await _step(gate)) == {"first": share, "later": 1}
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert embedder.steps_run == 2
