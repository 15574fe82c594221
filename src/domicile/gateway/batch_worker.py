"""The batch worker: runs the region's batches inside `domicile serve`, beside the requests.

Each input line goes through the gateway's own handler for its `url` (`run_line`), in-process,
with a synthetic `Exchange` whose `send` collects the answer: routing, failover, usage
metadata and the answer's shape are exactly the endpoint's. Lines run under the grant kept
with the batch when it was created (see docs/BATCH.md for why), at most `lines_per_project`
at once per project, whatever the number of its batches, and at most `batches_at_once`
batches at once in the process (the others wait, unread).

Durability, so a restart loses nothing and repeats nothing in the files:
- a line is done once its result is in a `batch-part` record (written every `flush_s`, or
  sooner once `flush_lines` results wait); the batch record's counts follow;
- at start (and every `rescan_s`) the worker lists the `batch-active` records of every tenant
  and takes over those whose lease (`batch-lease`, released on a clean stop) is free or
  stale; it then runs only the lines no part holds;
- the holder renews the lease every third of `lease_s` and before every write, each time a
  compare-and-swap on the owner: a process that lost the lease stops without writing, and
  parts carry their writer's id, so two holders never overwrite each other;
- finalizing writes the output and error files from the parts (each line index once) under
  ids chosen before the first write, so a finalize cut short is redone with the same ids.
A line whose answer had not been flushed when the server stopped is run again after the
restart: its request reaches the provider twice, its result lands once.

A tenant erased meanwhile: the worker sees its batch's rows gone (looked at every `flush_s`)
or its next write refused as erased (the data key shredded), and stops the batch there:
the lines in flight are cut off, nothing more is sent upstream, nothing more is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from domicile.crypto import DecryptionError, TenantErased
from domicile.errors import DomicileError, TenantDataErased
from domicile.inference.providers.shapes import new_id
from domicile.inference.usage import UsageRecorder
from domicile.storage.faults import store_fault
from domicile.storage.interfaces import ContentStore, TenantRef
from domicile.tenancy.grants import ApiKeyGrant

from . import batch_jobs as jobs
from .batch_jobs import BatchRecord, InputLine, LineResult
from .files import KIND as FILE_KIND
from .files import find_file
from .http import JSON, Exchange, Message
from .residency import tenant_of
from .routes import Route, RouteTable

__all__ = ["BatchWorker", "LineAnswer", "run_line"]

log = logging.getLogger("domicile.gateway.batches")

LINES_PER_PROJECT = 32
# Batches running at once in one serving process (each holds its input's requests in memory,
# up to 200 MB); the others wait their turn, `validating` or `in_progress` as they were.
BATCHES_AT_ONCE = 4
FLUSH_LINES = 512
FLUSH_S = 0.25
LEASE_S = 60.0
RESCAN_S = 30.0
OUTPUT_PURPOSE = "batch_output"
_ERASED = (TenantDataErased, TenantErased, DecryptionError)
_RELEASED = json.dumps({"owner": None}).encode()  # a lease let go by a clean stop
_DOING = {"load": "reading its input file", "run": "running its lines",
          "finalize": "writing its output files"}


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """What a line's endpoint answered, and what usage keeps of it."""

    status: int
    body: bytes
    request_id: str
    model: str
    provider: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float


async def run_line(route: Route, grant: ApiKeyGrant, body: bytes,
                   region_header: bytes) -> LineAnswer:
    """`body` through `route`'s handler, as if a client had sent it: the handler's answer or
    its error rendered in OpenAI's shape (as the gateway renders it), never an exception."""
    chunks: list[bytes] = []
    given = False

    async def receive() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        # A batch line's "client" never leaves: wait until the handler stops watching.
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope = {"type": "http", "method": route.method, "path": route.template,
             "headers": [(b"content-type", JSON)], "query_string": b""}
    call = Exchange(scope, receive, send, region_header)
    call.endpoint = route.template
    call.grant = grant
    try:
        await route.handler(call, grant)
    except DomicileError as exc:
        await call.fail(exc)
    except Exception as exc:
        # As the gateway: the type and request id only, the message may quote content (G4).
        fault = store_fault(exc, call.request_id)
        if fault is None:
            log.error("unhandled %s in batch line %s", type(exc).__name__, call.request_id)
            fault = DomicileError("The server had an error while processing this request "
                                  f"(request id {call.request_id}).")
        await call.fail(fault)
    status = call.status or 500
    return LineAnswer(status, b"".join(chunks), call.request_id, call.model, call.provider,
                      call.prompt_tokens, call.completion_tokens,
                      (time.perf_counter() - call.started) * 1000)


class _Stop(Exception):
    """The batch stops here for this process (erased tenant, lost input): nothing to do."""


class _LeaseLost(_Stop):
    """Another process holds the batch's lease now: this one stops without writing."""


@dataclass
class _Job:
    tenant: TenantRef
    record: BatchRecord
    lines: list[InputLine] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # ok, failed, in, out
    buffer: list[LineResult] = field(default_factory=list)
    seq: int = 0
    stop: str | None = None  # "cancelled" | "expired" | "shutdown" | "erased" | "lost"
    ended: bool = False  # ended and cleaned up: the lease is deleted, not released
    stage: str = "load"  # "load" | "run" | "finalize": where an unexpected failure is counted
    full: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runners: list[asyncio.Task[None]] = field(default_factory=list)
    keeper: asyncio.Task[None] | None = None  # renews the lease while the batch runs here

    @property
    def id(self) -> str:
        return self.record.id


class BatchWorker:
    """Runs one region's batches; `submit` a new one, `cancel` one, `start`/`aclose` with the
    gateway."""

    def __init__(self, store: ContentStore, region: str, routes: Callable[[], RouteTable], *,
                 usage: UsageRecorder | None = None, offers: Callable[[str], bool] | None = None,
                 lines_per_project: int = LINES_PER_PROJECT, flush_lines: int = FLUSH_LINES,
                 flush_s: float = FLUSH_S, lease_s: float = LEASE_S,
                 rescan_s: float = RESCAN_S, batches_at_once: int = BATCHES_AT_ONCE) -> None:
        self._store = store
        self._region = region
        self._region_header = region.encode()
        self._routes = routes
        self._usage = usage
        self._offers = offers or (lambda model: False)
        self._per_project = lines_per_project
        self._flush_lines = flush_lines
        self._flush_s = flush_s
        self._lease_s = lease_s
        self._rescan_s = rescan_s
        self._owner = new_id("worker_")
        self._lease = json.dumps({"owner": self._owner}).encode()
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, _Job] = {}
        self._scanner: asyncio.Task[None] | None = None
        self._closing = False
        self._slots = asyncio.Semaphore(batches_at_once)
        self.queued = 0  # batches waiting for one of the slots

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._closing = False
        self._scanner = asyncio.create_task(self._scan(), name="domicile-batch-scan")

    async def aclose(self) -> None:
        """Stop every batch here: completed lines flushed, leases released (the next start,
        here or elsewhere, takes them over at once)."""
        self._closing = True
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
            self._scanner = None
        for job in self._running.values():
            job.stop = job.stop or "shutdown"
            job.full.set()
            for runner in job.runners:
                runner.cancel()
        tasks = list(self._jobs.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _scan(self) -> None:
        while not self._closing:
            try:
                found = await asyncio.to_thread(self._store.records_of_kind, jobs.ACTIVE_KIND)
            except Exception as exc:
                log.error("batch scan failed (%s); trying again later", type(exc).__name__)
                found = []
            for tenant_id, batch_id in found:
                self.submit(tenant_id, batch_id)
            await asyncio.sleep(self._rescan_s)

    def submit(self, tenant_id: str, batch_id: str) -> None:
        """Run the batch here, unless it runs here already (or this worker is stopping)."""
        if self._closing or batch_id in self._jobs:
            return
        task = asyncio.create_task(self._guarded(tenant_id, batch_id),
                                   name=f"domicile-batch-{batch_id}")
        self._jobs[batch_id] = task
        task.add_done_callback(lambda _: self._jobs.pop(batch_id, None))

    def cancel(self, batch_id: str) -> bool:
        """Stop a batch running here at once (its cancel record is written by the caller);
        False if it does not run here (whoever runs it sees the record)."""
        job = self._running.get(batch_id)
        if job is None:
            return False
        job.stop = job.stop or "cancelled"
        job.full.set()
        for runner in job.runners:
            runner.cancel()
        return True

    def _limit(self, project_id: str) -> asyncio.Semaphore:
        limit = self._limits.get(project_id)
        if limit is None:
            limit = self._limits[project_id] = asyncio.Semaphore(self._per_project)
        return limit

    # -- one batch --------------------------------------------------------------------------

    async def _guarded(self, tenant_id: str, batch_id: str) -> None:
        # Nothing of a batch is read before it has a slot: a rescan after a restart finds
        # every unfinished batch, and loads them one slot at a time.
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        try:
            if not self._closing:
                await self._attempt(tenant_id, batch_id)
        finally:
            self._slots.release()

    async def _attempt(self, tenant_id: str, batch_id: str) -> None:
        try:
            await self._run(tenant_id, batch_id)
        except _ERASED:
            log.warning("batch %s stopped: its tenant's data was erased", batch_id)
        except _Stop:
            pass
        except Exception as exc:
            # Left active: the next scan (or start) takes it up again from its parts, unless
            # this stage has failed MAX_ATTEMPTS times (then the batch fails, said so).
            job = self._running.get(batch_id)
            log.error("batch %s interrupted by %s at %s", batch_id, type(exc).__name__,
                      job.stage if job is not None else "start")
            if job is not None and job.stop is None:
                try:
                    await self._note_failure(job)
                except Exception as again:
                    log.error("batch %s: noting its failure failed (%s)", batch_id,
                              type(again).__name__)
        finally:
            job = self._running.pop(batch_id, None)
            if job is not None:
                await self._let_go(job)

    async def _let_go(self, job: _Job) -> None:
        """The lease, when this process stops running the batch: deleted once the batch has
        ended, else released (only if still this process's: a compare-and-swap) so that the
        next start, here or elsewhere, takes the batch over at once."""
        if job.keeper is not None:
            job.keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.keeper
        if job.stop in ("erased", "lost"):
            return
        store = self._store
        with contextlib.suppress(Exception):
            if job.ended:
                await asyncio.to_thread(store.delete_record, job.tenant, jobs.LEASE_KIND,
                                        job.id)
            else:
                await asyncio.to_thread(store.claim_record, job.tenant, jobs.LEASE_KIND,
                                        job.id, _RELEASED, stale_after=self._lease_s,
                                        expect=self._lease)

    async def _run(self, tenant_id: str, batch_id: str) -> None:
        store = self._store
        # Opening needs the tenant id only (a record is bound to region, tenant, kind and id);
        # the tenant as it writes comes from the grant kept in the record.
        reader = TenantRef(tenant_id, self._region, "")
        raw = await asyncio.to_thread(store.get_record, reader, jobs.KIND, batch_id)
        if raw is None:  # deleted (an erasure): forget it
            await asyncio.to_thread(store.delete_record, reader, jobs.ACTIVE_KIND, batch_id)
            raise _Stop
        record = BatchRecord.load(raw)
        # G7: what a batch writes is never marked as consented to training; the consent it
        # was created under may be withdrawn before it ends (docs/BATCH.md).
        tenant = dataclasses.replace(tenant_of(record.grant, self._region),
                                     training_consent=False)
        if not await asyncio.to_thread(self._claim, tenant, batch_id):
            raise _Stop  # another process runs it
        fresh = await asyncio.to_thread(store.get_record, reader, jobs.KIND, batch_id)
        job = _Job(tenant, BatchRecord.load(fresh or raw))
        self._running[batch_id] = job
        job.keeper = asyncio.create_task(self._keep_lease(job),
                                         name=f"domicile-batch-lease-{batch_id}")
        if job.record.status in jobs.TERMINAL:  # ended, but not cleaned up: a crash
            await self._cleanup(job)
            return
        if not await self._load_lines(job):
            return
        if job.record.ending is None:  # else a finalize cut short: redone below
            job.stage = "run"
            await self._load_parts(job)
            if job.record.status == "validating":
                job.record.move("in_progress")
                self._count(job)
                await self._save(job)
            await self._check(job)
            if job.stop is None:
                await self._run_lines(job)
        if job.stop in ("shutdown", "erased", "lost"):
            return
        job.stage = "finalize"
        await self._finalize(job)

    async def _note_failure(self, job: _Job) -> None:
        """Count an unexpected failure at the job's stage; at `MAX_ATTEMPTS` the batch ends
        `failed` with an error saying where (or `cancelled`, if a cancel was asked), instead
        of being retried at every scan for ever."""
        record = job.record
        tries = record.failures[job.stage] = record.failures.get(job.stage, 0) + 1
        if tries < jobs.MAX_ATTEMPTS:
            log.error("batch %s resumes later (failure %d of %d at %s)", job.id, tries,
                      jobs.MAX_ATTEMPTS, job.stage)
            await self._save(job)
            return
        store, tenant = self._store, job.tenant
        asked = await asyncio.to_thread(store.get_record, tenant, jobs.CANCEL_KIND, job.id)
        if asked is not None:
            if record.batch.get("cancelling_at") is None:
                record.move("cancelling")
            record.move("cancelled")
        else:
            record.batch["errors"] = {"object": "list", "data": [{
                "code": "batch_failed", "message": f"The batch failed {tries} times while "
                f"{_DOING[job.stage]}; it was given up. Create it again to retry.",
                "param": None, "line": None}]}
            record.move("failed")
        log.error("batch %s given up after %d failures at %s", job.id, tries, job.stage)
        await self._save(job)
        # Files a finalize may have written under the ids it chose: never shown, dropped.
        for file_id in (record.output_file_id, record.error_file_id):
            if file_id is not None:
                await asyncio.to_thread(store.delete_blob, tenant, FILE_KIND, file_id)
        await self._cleanup(job)

    def _claim(self, tenant: TenantRef, batch_id: str) -> bool:
        """Take the batch's lease: free (none, or released by a clean stop) or stale."""
        store = self._store
        return (store.claim_record(tenant, jobs.LEASE_KIND, batch_id, self._lease,
                                   stale_after=self._lease_s)
                or store.claim_record(tenant, jobs.LEASE_KIND, batch_id, self._lease,
                                      stale_after=self._lease_s, expect=_RELEASED))

    async def _renew(self, job: _Job) -> None:
        """Renew the lease if this process still holds it (a compare-and-swap on the owner);
        else stop the batch here at once, writing nothing more (`_LeaseLost`). Every write
        of the batch follows a renewal, so a process that lost the lease (stalled past its
        staleness, taken over elsewhere) never overwrites what the new holder writes."""
        if job.stop == "lost":
            raise _LeaseLost
        held = await asyncio.to_thread(
            self._store.claim_record, job.tenant, jobs.LEASE_KIND, job.id, self._lease,
            stale_after=self._lease_s, expect=self._lease)
        if not held:
            log.warning("batch %s: its lease was taken over elsewhere; stopping here", job.id)
            job.stop = "lost"
            job.full.set()
            for runner in job.runners:
                runner.cancel()
            raise _LeaseLost

    async def _keep_lease(self, job: _Job) -> None:
        """Renew the lease every third of its staleness while the batch is here, through a
        long read of the input and a long finalize too."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                await self._renew(job)
            except _LeaseLost:
                return
            except Exception as exc:  # the store, down for a moment: try again
                log.error("batch %s: renewing its lease failed (%s)", job.id,
                          type(exc).__name__)

    async def _load_lines(self, job: _Job) -> bool:
        """Read and validate the input file; a bad one fails the batch (False)."""
        batch = job.record.batch
        store, tenant = self._store, job.tenant

        def read() -> tuple[list[InputLine], list[dict[str, Any]]]:
            blob = find_file(store, tenant, batch["input_file_id"])
            if blob is None:
                return [], [{"code": "input_file_not_found", "message": "The input file was "
                             "deleted (or expired) before the batch ran.",
                             "param": "input_file_id", "line": None}]
            try:
                chunks = store.open_blob(tenant, FILE_KIND, blob.id)
            except KeyError:
                return [], [{"code": "input_file_not_found", "message": "The input file's "
                             "bytes are gone.", "param": "input_file_id", "line": None}]
            return jobs.parse_input(chunks, batch["endpoint"])

        lines, errors = await asyncio.to_thread(read)
        if errors:
            batch["errors"] = {"object": "list", "data": errors}
            job.record.move("failed")
            await self._save(job)
            await self._cleanup(job)
            return False
        job.lines = lines
        if batch.get("model") is None:
            batch["model"] = next((line.model for line in lines if line.model), None)
        return True

    def _parts(self, job: _Job) -> list[str]:
        prefix = job.id + "."
        return sorted(r for r in self._store.list_records(job.tenant, jobs.PART_KIND)
                      if r.startswith(prefix))

    def _part_id(self, job: _Job, seq: int) -> str:
        """A part's id names the process that wrote it (`batch_….worker_….000001`): two
        processes that both ran the batch never overwrite each other's results."""
        return f"{job.id}.{self._owner}.{seq:06d}"

    def _results(self, job: _Job) -> Iterator[LineResult]:
        """Every stored result of the batch, each line index once (blocking)."""
        seen: set[int] = set()
        for part in self._parts(job):
            raw = self._store.get_record(job.tenant, jobs.PART_KIND, part)
            for row in json.loads(raw or b"[]"):
                result = LineResult.load(row)
                if result.index not in seen:
                    seen.add(result.index)
                    yield result

    async def _load_parts(self, job: _Job) -> None:
        def load() -> tuple[set[int], list[int], int]:
            done: set[int] = set()
            counts = [0, 0, 0, 0]
            for result in self._results(job):
                done.add(result.index)
                counts[0 if result.ok else 1] += 1
                counts[2] += result.prompt_tokens
                counts[3] += result.completion_tokens
            mine = self._part_id(job, 0)[:-6]
            seqs = [int(p[len(mine):]) for p in self._parts(job) if p.startswith(mine)]
            return done, counts, max(seqs, default=0)

        job.done, job.counts, job.seq = await asyncio.to_thread(load)

    def _count(self, job: _Job) -> None:
        ok, failed, prompt, completion = job.counts
        job.record.count(len(job.lines), ok, failed, prompt, completion)

    async def _save(self, job: _Job, *, renewed: bool = False) -> None:
        if not renewed:
            await self._renew(job)
        await asyncio.to_thread(self._store.put_record, job.tenant, jobs.KIND, job.id,
                                job.record.dump())

    async def _check(self, job: _Job) -> None:
        """Cancelled (by any process), expired, or the lease due for renewal?"""
        if job.stop is None:
            store, tenant = self._store, job.tenant

            def look() -> tuple[bool, bool]:
                return (store.get_record(tenant, jobs.ACTIVE_KIND, job.id) is not None,
                        store.get_record(tenant, jobs.CANCEL_KIND, job.id) is not None)

            active, asked = await asyncio.to_thread(look)
            if not active:  # its rows deleted under it: the tenant was erased
                job.stop = "erased"
            elif asked:
                job.stop = "cancelled"
            elif time.time() >= job.record.batch["expires_at"]:
                job.stop = "expired"
        if job.stop in ("cancelled", "expired", "erased", "lost"):
            job.full.set()
            for runner in job.runners:
                runner.cancel()

    async def _run_lines(self, job: _Job) -> None:
        pending = deque(i for i in range(len(job.lines)) if i not in job.done)
        route = self._routes().exact("POST", job.record.batch["endpoint"])
        if route is None:
            raise _Stop
        limit = self._limit(job.tenant.id)
        grant = dataclasses.replace(job.record.grant, training_opt_in=False)

        async def runner() -> None:
            while pending and job.stop is None:
                index = pending.popleft()
                line = job.lines[index]
                async with limit:
                    if job.stop is not None:
                        return
                    answer = await run_line(route, grant, line.body, self._region_header)
                self._account(job, route, answer)
                ok = 200 <= answer.status < 300
                job.buffer.append(LineResult(
                    index, ok, answer.prompt_tokens, answer.completion_tokens,
                    jobs.result_line(new_id("batch_req_"), line.custom_id, answer.status,
                                     answer.request_id, answer.body)))
                if len(job.buffer) >= self._flush_lines:
                    job.full.set()

        job.runners = [asyncio.create_task(runner())
                       for _ in range(min(self._per_project, len(pending)))]
        everyone = asyncio.gather(*job.runners, return_exceptions=True)
        waiter: asyncio.Future[Any] | None = None
        try:
            # Results are flushed every `flush_s`, or as soon as `flush_lines` wait.
            while not everyone.done():
                if waiter is None or waiter.done():
                    job.full.clear()
                    waiter = asyncio.ensure_future(job.full.wait())
                await asyncio.wait((everyone, waiter), timeout=self._flush_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                await self._flush(job)
                await self._check(job)
            await everyone
        finally:
            if waiter is not None:
                waiter.cancel()
            for task in job.runners:
                task.cancel()
            await asyncio.gather(*job.runners, return_exceptions=True)
            job.runners = []
            # What completed is kept, whatever stopped the run (a shutdown included), unless
            # the lease is lost: then the new holder runs those lines again.
            if job.stop not in ("erased", "lost"):
                await self._flush(job)

    def _account(self, job: _Job, route: Route, answer: LineAnswer) -> None:
        if self._usage is None:
            return
        grant = job.record.grant
        # A model name not offered here is client text like any other: not kept (G4).
        model = answer.model if self._offers(answer.model) else ""
        self._usage.add(grant.project_id, grant.key_id, route.template, model, answer.provider,
                        answer.status, answer.prompt_tokens, answer.completion_tokens,
                        answer.latency_ms, answer.request_id)

    async def _flush(self, job: _Job) -> None:
        """The results waiting, as one part record, then the counts. A part that fails to
        be written is tried again with the same id and results (an upsert)."""
        async with job.lock:
            if not job.buffer:
                return
            results = list(job.buffer)
            part = self._part_id(job, job.seq + 1)
            body = json.dumps([r.dump() for r in results]).encode()
            try:
                await self._renew(job)
                await asyncio.to_thread(self._store.put_record, job.tenant, jobs.PART_KIND,
                                        part, body)
            except _ERASED:
                job.stop = "erased"
                for runner in job.runners:
                    runner.cancel()
                raise
            del job.buffer[:len(results)]
            job.seq += 1
            for result in results:
                job.done.add(result.index)
                job.counts[0 if result.ok else 1] += 1
                job.counts[2] += result.prompt_tokens
                job.counts[3] += result.completion_tokens
            self._count(job)
            await self._save(job, renewed=True)

    async def _finalize(self, job: _Job) -> None:
        record, batch = job.record, job.record.batch
        if record.ending is None:  # not begun before (else: a finalize cut short, redone)
            record.ending = {"cancelled": "cancelled", "expired": "expired"}.get(
                job.stop or "", "completed")
            if record.ending == "cancelled":
                if batch.get("cancelling_at") is None:
                    record.move("cancelling")
            else:
                record.move("finalizing")
            record.output_file_id = new_id("file-")
            record.error_file_id = new_id("file-")
            await self._save(job)
        output, error, counts = await asyncio.to_thread(self._write_files, job, record.ending)
        job.counts = counts
        self._count(job)
        batch["output_file_id"], batch["error_file_id"] = output, error
        record.move(record.ending)
        await self._save(job)  # renewed first: a process that lost the lease writes no end
        await self._cleanup(job)

    def _write_files(self, job: _Job, ending: str) -> tuple[str | None, str | None, list[int]]:
        """The output and error files, streamed from the parts into the encrypted store
        (blocking). Lines never run (a cancel, an expiry) go to the error file."""
        counts = [0, 0, 0, 0]
        done: set[int] = set()
        for result in self._results(job):
            done.add(result.index)
            counts[0 if result.ok else 1] += 1
            counts[2] += result.prompt_tokens
            counts[3] += result.completion_tokens
        unfinished = [i for i in range(len(job.lines)) if i not in done]
        counts[1] += len(unfinished)
        if unfinished and ending == "completed":  # never expected: say so, lose nothing
            log.error("batch %s completed with %d lines never run; they are in its error "
                      "file", job.id, len(unfinished))

        def lines(ok: bool) -> Iterator[bytes]:
            for result in self._results(job):
                if result.ok is ok:
                    yield result.text.encode() + b"\n"
            if not ok:
                for index in unfinished:
                    yield jobs.unfinished_line(new_id("batch_req_"), job.lines[index].custom_id,
                                               ending).encode() + b"\n"

        files: list[str | None] = []
        for ok, file_id, count in ((True, job.record.output_file_id, counts[0]),
                                   (False, job.record.error_file_id, counts[1])):
            if not count or file_id is None:
                files.append(None)
                continue
            staged = self._store.stage_blob(job.tenant, FILE_KIND, file_id, lines(ok))
            name = f"{job.id}_{'output' if ok else 'error'}.jsonl"
            self._store.commit_blob(staged, name, {"purpose": OUTPUT_PURPOSE})
            files.append(file_id)
        return files[0], files[1], counts

    async def _cleanup(self, job: _Job) -> None:
        """An ended batch keeps its record and files; its parts and markers go."""
        def clean() -> None:
            for part in self._parts(job):
                self._store.delete_record(job.tenant, jobs.PART_KIND, part)
            for kind in (jobs.CANCEL_KIND, jobs.ACTIVE_KIND):
                self._store.delete_record(job.tenant, kind, job.id)

        await asyncio.to_thread(clean)
        job.ended = True
