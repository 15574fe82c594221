"""`EncoderGate` and `CountingGate`: the in-process embedding model's encoder and its counting
tokenizer, one step (one chunk) at a time.

They stand in for `local_embeddings._encode` and for the provider's counting tokenizer (the
real model and tokenizer still do the work): each step or chunk announces its texts and then
waits until the test lets it run, so tests of order, fairness and cancellation assert on
what each step or chunk held, never on wall-clock time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from domicile.inference.providers import local_embeddings

Encode = Callable[[Any, list[str]], tuple[list[list[float]], list[int]]]
STEP_TIMEOUT_S = 60.0  # a bound for a broken test, never reached by a passing one


async def until_queued(read: Callable[[], int], want: int, what: str) -> None:
    """Until `read()` (a provider's queue length) is `want`: yields to the event loop a bounded
    number of times, then fails naming `what` is queued instead."""
    for _ in range(1000):
        if read() == want:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{read()} {what} queued, not {want}")


class _Gate:
    """Work announced, then held until released (or the gate is open)."""

    def __init__(self) -> None:
        self.steps: list[list[str]] = []  # every step's (chunk's) texts, in order
        self._started: queue.Queue[list[str]] = queue.Queue()
        self._go = threading.Semaphore(0)
        self._open = threading.Event()

    def _enter(self, texts: list[str]) -> None:
        self.steps.append(list(texts))
        self._started.put(list(texts))
        if not self._open.is_set() and not self._go.acquire(timeout=STEP_TIMEOUT_S):
            raise TimeoutError("the test never let this step run")

    def next_step(self) -> list[str]:
        """The texts of the next step once it has reached the gate (it waits there)."""
        return self._started.get(timeout=STEP_TIMEOUT_S)

    def release(self) -> None:
        """Let one waiting (or the next) step run."""
        self._go.release()

    def open(self) -> None:
        """Let every step run from now on."""
        self._open.set()
        for _ in range(64):
            self._go.release()


class EncoderGate(_Gate):
    def __init__(self, encode: Encode) -> None:
        super().__init__()
        self.encode = encode  # the real one

    def __call__(self, model: Any, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        self._enter(texts)
        return self.encode(model, texts)


class CountingGate(_Gate):
    """The counting tokenizer; a step here is one chunk of pieces handed to it."""

    def __init__(self, counter: Any) -> None:
        super().__init__()
        self.counter = counter  # the real one

    def encode_batch_fast(self, texts: list[str], **options: Any) -> Any:
        self._enter(texts)
        return self.counter.encode_batch_fast(texts, **options)


@pytest.fixture(name="gate")
def gate_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[EncoderGate]:
    """Import it (`gate_fixture`) into a test module to use `gate`."""
    held = EncoderGate(local_embeddings._encode)
    monkeypatch.setattr(local_embeddings, "_encode", held)
    yield held
    held.open()
