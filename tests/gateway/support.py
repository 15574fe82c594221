"""Fakes and harness for the gateway's tests: no directory, no database, real sockets.

- `DictAuthenticator`, `MemoryUsageSink`, `MemoryContentStore`: the gateway's three
  collaborators as in-memory fakes of their protocols.
- `LoopThread`: an event loop (uvloop) in a background thread, where the fake upstreams and
  the gateway's uvicorn servers run, so tests can drive them with blocking clients (the
  official `openai` SDK, httpx).
- `ServedApp`: an ASGI app under a real uvicorn server (httptools) on a loopback port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import uvloop

from domicile.config import Settings, parse_settings
from domicile.errors import CrossRegionWrite
from domicile.storage.interfaces import (
    BlobPage,
    StagedBlob,
    StoredBlob,
    TenantRef,
    UnknownCursor,
    UsageRecord,
)
from domicile.tenancy.grants import ApiKeyGrant

T = TypeVar("T")

EU_URL = "https://eu.domicile.example"
US_URL = "https://us.domicile.example"


def grant(key_id: str, region: str = "eu", retention: str = "zero", *,
          per_request_residency: bool = False, rpm: int | None = None,
          tpm: int | None = None) -> ApiKeyGrant:
    return ApiKeyGrant(key_id=key_id, project_id=f"proj_{key_id}", org_id="org_test",
                       region=region, retention=retention,  # type: ignore[arg-type]
                       per_request_residency=per_request_residency, rpm_limit=rpm,
                       tpm_limit=tpm)


class DictAuthenticator:
    """A `KeyAuthenticator` over a dict; counts lookups."""

    def __init__(self, keys: dict[str, ApiKeyGrant] | None = None) -> None:
        self.keys = dict(keys or {})
        self.lookups = 0

    def authenticate_api_key(self, secret: str) -> ApiKeyGrant | None:
        self.lookups += 1
        return self.keys.get(secret)


class MemoryUsageSink:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.batches = 0
        self._lock = threading.Lock()

    def write_usage(self, records: Iterable[UsageRecord]) -> None:
        with self._lock:
            self.records.extend(records)
            self.batches += 1

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self.batches = 0


@dataclass
class _MemoryPending:
    key: str
    size: int
    data: bytes

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        pass


_CLAIMS = threading.Lock()


@dataclass
class MemoryContentStore:
    """A `ContentStore` fake: refuses tenants of other regions, notes how blobs arrived.

    With `keep_bytes` False a staged blob's bytes are counted and dropped (memory tests).
    """

    region: str
    records: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    written: dict[tuple[str, str, str], float] = field(default_factory=dict)  # monotonic
    blobs: dict[tuple[str, str, str], tuple[StoredBlob, bytes]] = field(default_factory=dict)
    chunk_counts: list[int] = field(default_factory=list)
    staged: int = 0  # staged blobs neither committed nor discarded
    keep_bytes: bool = True

    def _check(self, tenant: TenantRef) -> None:
        if tenant.region not in (self.region, "global"):
            raise CrossRegionWrite(f"store {self.region} refuses tenant of {tenant.region}")

    def put_record(self, tenant: TenantRef, kind: str, record_id: str, plaintext: bytes) -> None:
        self._check(tenant)
        self.records[(tenant.id, kind, record_id)] = plaintext
        self.written[(tenant.id, kind, record_id)] = time.monotonic()

    def get_record(self, tenant: TenantRef, kind: str, record_id: str) -> bytes | None:
        self._check(tenant)
        return self.records.get((tenant.id, kind, record_id))

    def delete_record(self, tenant: TenantRef, kind: str, record_id: str) -> bool:
        return self.records.pop((tenant.id, kind, record_id), None) is not None

    def list_records(self, tenant: TenantRef, kind: str) -> list[str]:
        return [r for (t, k, r) in self.records if t == tenant.id and k == kind]

    def records_of_kind(self, kind: str) -> list[tuple[str, str]]:
        return [(t, r) for (t, k, r) in self.records if k == kind]

    def claim_record(self, tenant: TenantRef, kind: str, record_id: str, plaintext: bytes,
                     *, stale_after: float, expect: bytes | None = None) -> bool:
        self._check(tenant)
        key = (tenant.id, kind, record_id)
        with _CLAIMS:  # callers are threads (asyncio.to_thread): one claim at a time
            now = time.monotonic()
            if expect is not None:
                if self.records.get(key) != expect:
                    return False
            elif key in self.records and now - self.written.get(key, now) <= stale_after:
                return False
            self.records[key] = plaintext
            self.written[key] = now
            return True

    def replace_record(self, tenant: TenantRef, kind: str, record_id: str,
                       plaintext: bytes) -> bool:
        self._check(tenant)
        key = (tenant.id, kind, record_id)
        if key not in self.records:
            return False
        self.records[key] = plaintext
        self.written[key] = time.monotonic()
        return True

    def stage_blob(self, tenant: TenantRef, kind: str, blob_id: str,
                   chunks: Iterable[bytes]) -> StagedBlob:
        self._check(tenant)
        parts, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            parts.append(chunk if self.keep_bytes else b"")
        self.chunk_counts.append(len(parts))
        self.staged += 1
        pending = _MemoryPending(f"{tenant.id}/{kind}/{blob_id}", size, b"".join(parts))
        return StagedBlob(tenant, kind, blob_id, size, pending)

    def commit_blob(self, staged: StagedBlob, filename: str,
                    meta: dict[str, str] | None = None) -> StoredBlob:
        assert isinstance(staged.pending, _MemoryPending)
        self.staged -= 1
        blob = StoredBlob(staged.blob_id, staged.tenant.id, staged.kind, filename, staged.size,
                          datetime.now(UTC), dict(meta or {}))
        self.blobs[(staged.tenant.id, staged.kind, staged.blob_id)] = (blob,
                                                                       staged.pending.data)
        return blob

    def discard_blob(self, staged: StagedBlob) -> None:
        self.staged -= 1

    def put_blob(self, tenant: TenantRef, kind: str, blob_id: str, filename: str,
                 chunks: Iterable[bytes], meta: dict[str, str] | None = None) -> StoredBlob:
        return self.commit_blob(self.stage_blob(tenant, kind, blob_id, chunks), filename, meta)

    def get_blob(self, tenant: TenantRef, kind: str, blob_id: str) -> StoredBlob | None:
        found = self.blobs.get((tenant.id, kind, blob_id))
        return found[0] if found else None

    def open_blob(self, tenant: TenantRef, kind: str, blob_id: str) -> Iterator[bytes]:
        data = self.blobs[(tenant.id, kind, blob_id)][1]
        return iter([data[i:i + 1000] for i in range(0, len(data), 1000)] or [b""])

    def delete_blob(self, tenant: TenantRef, kind: str, blob_id: str) -> bool:
        return self.blobs.pop((tenant.id, kind, blob_id), None) is not None

    def list_blobs(self, tenant: TenantRef, kind: str, *, prefix: str = "") -> list[StoredBlob]:
        return [b for (t, k, i), (b, _) in self.blobs.items()
                if t == tenant.id and k == kind and i.startswith(prefix)]

    def page_blobs(self, tenant: TenantRef, kind: str, *, limit: int, after: str | None = None,
                   descending: bool = True,
                   keep: Callable[[StoredBlob], bool] | None = None,
                   scan_limit: int | None = None) -> BlobPage:
        ordered = sorted(self.list_blobs(tenant, kind), key=lambda b: (b.created_at, b.id),
                         reverse=descending)
        if after is not None:
            ids = [b.id for b in ordered]
            if after not in ids:
                raise UnknownCursor(after)
            ordered = ordered[ids.index(after) + 1:]
        cut = scan_limit is not None and len(ordered) > scan_limit
        kept = [b for b in ordered[:scan_limit] if keep is None or keep(b)]
        return BlobPage(kept[:limit], len(kept) > limit or cut)

    def tenants_holding(self, kind: str) -> list[str]:
        return sorted({t for (t, k, _) in [*self.records, *self.blobs] if k == kind})


class LoopThread:
    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="gateway-tests-loop")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class ServedApp:
    """`app` under uvicorn (httptools, lifespan on) on 127.0.0.1, in `loop`."""

    def __init__(self, loop: LoopThread, app: Any) -> None:
        self._loop = loop
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, http="httptools", loop="none", lifespan="on",
                                log_level="warning", access_log=False,
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._future = asyncio.run_coroutine_threadsafe(
            self.server.serve(sockets=[self._sock]), loop.loop)
        loop.run(self._until_started(), timeout=30)

    async def _until_started(self) -> None:
        while not self.server.started:
            if self._future.done():
                self._future.result()
            await asyncio.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self._future.result(15)
        self._sock.close()


def provider(name: str, kind: str, models: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "models": models, **extra}


def region_table(name: str, port: int, public_url: str,
                 providers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "display_name": name.upper(), "listen": f"127.0.0.1:{port}", "public_url": public_url,
        "database_url": f"sqlite:///{name}/store.db", "blob_url": f"file://{name}/blobs",
        "key_provider": {"kind": "local", "path": f"{name}/kek.key"},
        "providers": providers,
    }


def make_settings(tmp: Path, eu: list[dict[str, Any]], us: list[dict[str, Any]]) -> Settings:
    raw = {
        "directory": {"database_url": "sqlite:///directory.db"},
        "regions": {"eu": region_table("eu", 1, EU_URL, eu),
                    "us": region_table("us", 2, US_URL, us)},
    }
    return parse_settings(raw, config_path=tmp / "domicile.toml", check_files=False)


__all__ = [
    "EU_URL",
    "US_URL",
    "DictAuthenticator",
    "LoopThread",
    "MemoryContentStore",
    "MemoryUsageSink",
    "ServedApp",
    "grant",
    "make_settings",
    "provider",
    "region_table",
]


# -- batches ---------------------------------------------------------------------------------

BATCH_ENDED = ("completed", "failed", "cancelled", "expired")


def wait_for_batch(client: Any, batch_id: str, done: Callable[[Any], bool] | None = None, *,
                   deadline_s: float = 30.0) -> Any:
    """Poll a batch (through the SDK) until `done` (default: it ended); fail past the
    deadline. Polling, not sleeping for a guess: a busy machine only makes it slower."""
    deadline = time.monotonic() + deadline_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if (done(batch) if done is not None else batch.status in BATCH_ENDED):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.02)


def jsonl_file(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    """The lines of a JSONL file read back through the SDK ([] for no file)."""
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
