"""`EncoderGate`: the in-process embedding model's encoder, one step at a time.

It stands in for `local_embeddings._encode` (the real model still does the work): each
encoder step announces its texts and then waits until the test lets it run, so tests of
step order and cancellation assert on what each step held, never on wall-clock time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from domicile.gateway.providers import local_embeddings

Encode = Callable[[Any, list[str]], tuple[list[list[float]], list[int]]]
STEP_TIMEOUT_S = 60.0  # a bound for a broken test, never reached by a passing one


class EncoderGate:
    def __init__(self, encode: Encode) -> None:
        self.encode = encode  # the real one
        self.steps: list[list[str]] = []  # every step's texts, in order
        self._started: queue.Queue[list[str]] = queue.Queue()
        self._go = threading.Semaphore(0)
        self._open = threading.Event()

    def __call__(self, model: Any, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        self.steps.append(list(texts))
        self._started.put(list(texts))
        if not self._open.is_set() and not self._go.acquire(timeout=STEP_TIMEOUT_S):
            raise TimeoutError("the test never let this encoder step run")
        return self.encode(model, texts)

    def next_step(self) -> list[str]:
        """The texts of the next step once it has reached the encoder (it waits there)."""
        return self._started.get(timeout=STEP_TIMEOUT_S)

    def release(self) -> None:
        """Let one waiting (or the next) step run."""
        self._go.release()

    def open(self) -> None:
        """Let every step run from now on."""
        self._open.set()
        for _ in range(64):
            self._go.release()


@pytest.fixture(name="gate")
def gate_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[EncoderGate]:
    """Import it (`gate_fixture`) into a test module to use `gate`."""
    held = EncoderGate(local_embeddings._encode)
    monkeypatch.setattr(local_embeddings, "_encode", held)
    yield held
    held.open()
