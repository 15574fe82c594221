"""Helpers shared by the crypto tests: providers on real files, contexts, keystore bytes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from domicile.crypto import Context, LocalKeyProvider, write_new_kek

SMALL_SEGMENT = 64  # many segments from few bytes, so stream tests stay fast


def make_provider(root: Path, region: str = "eu") -> LocalKeyProvider:
    kek = root / region / "kek.key"
    kek.parent.mkdir(parents=True, exist_ok=True)
    if not kek.exists():
        write_new_kek(kek)
    return LocalKeyProvider(region, kek)


def context(
    region: str = "eu", tenant: str = "ws_a", kind: str = "message", record_id: str = "msg_1"
) -> Context:
    return Context(region=region, tenant=tenant, kind=kind, record_id=record_id)


def keystore_files(keys: LocalKeyProvider) -> list[Path]:
    """The keystore and any SQLite side files (-wal, -shm, -journal) that exist."""
    base = keys.keystore_path
    candidates = [base] + [base.with_name(base.name + s) for s in ("-wal", "-shm", "-journal")]
    return [p for p in candidates if p.exists()]


def wrapped_key(keys: LocalKeyProvider, key_id: str) -> bytes:
    with sqlite3.connect(keys.keystore_path) as db:
        row = db.execute("SELECT wrapped FROM data_keys WHERE key_id = ?", (key_id,)).fetchone()
    return bytes(row[0])
