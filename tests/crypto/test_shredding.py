"""G9 crypto-shredding: after `destroy_tenant_key` nothing of the tenant opens, and the key's
bytes are gone from every keystore file."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from domicile.crypto import (
    Context,
    DecryptionError,
    Envelope,
    KeyNotFound,
    KeyProvider,
    LocalKeyProvider,
    ShredReceipt,
    TenantErased,
)
from domicile.crypto import envelope as envelope_module
from domicile.crypto import keys as keys_module
from domicile.crypto.keystore import ManagedKeyProvider
from tests.crypto.conftest import OpenKeys, both_providers
from tests.crypto.support import context, keystore_files, wrapped_key


def tombstoned(keys: KeyProvider) -> list[tuple[str]]:
    """The keystore's tombstones table, read directly (SQLite file or PostgreSQL)."""
    if isinstance(keys, LocalKeyProvider):
        with sqlite3.connect(keys.keystore_path) as db:
            return [(str(r[0]),) for r in db.execute("SELECT tenant FROM tombstones")]
    assert isinstance(keys, ManagedKeyProvider)
    with keys._connect() as conn:
        return [(str(r[0]),) for r in conn.execute(text("SELECT tenant FROM tombstones"))]


@both_providers
def test_destroyed_tenants_records_and_blobs_no_longer_open(
    envelope: Envelope, ctx: Context
) -> None:
    sealed = envelope.seal(b"personal data", ctx)  # also cached in memory now
    blob = envelope.seal_blob(b"a file" * 100, ctx)
    assert envelope.open(sealed, ctx) == b"personal data"

    envelope.destroy_tenant_key("ws_a")

    with pytest.raises(DecryptionError):
        envelope.open(sealed, ctx)
    with pytest.raises(DecryptionError):
        envelope.open_blob(blob, ctx)
    with pytest.raises(DecryptionError):
        b"".join(envelope.open_stream([blob], ctx))


@both_providers
def test_other_tenants_are_untouched(envelope: Envelope) -> None:
    other = context(tenant="ws_b")
    sealed = envelope.seal(b"keep me", other)
    envelope.destroy_tenant_key("ws_a")
    assert envelope.open(sealed, other) == b"keep me"


@both_providers
def test_shred_receipt_says_what_happened(envelope: Envelope) -> None:
    before = datetime.now(UTC)
    receipt = envelope.destroy_tenant_key("ws_a")
    assert isinstance(receipt, ShredReceipt)
    assert (receipt.region, receipt.tenant, receipt.keys_destroyed) == ("eu", "ws_a", 1)
    assert before <= receipt.destroyed_at <= datetime.now(UTC)
    assert receipt.destroyed_at.tzinfo is not None
    statement = receipt.statement
    assert "\n" not in statement
    assert "ws_a" in statement and "eu" in statement and "no longer be decrypted" in statement
    assert envelope.destroy_tenant_key("ws_a").keys_destroyed == 0  # idempotent


def test_destroyed_key_bytes_are_absent_from_every_keystore_file(
    keys: LocalKeyProvider, envelope: Envelope
) -> None:
    for n in range(20):  # neighbours on the same pages
        envelope.create_tenant_key(f"ws_n{n}")
    key_id, dek = keys.current_data_key("ws_a")
    wrapped = wrapped_key(keys, key_id)
    keys.close()
    on_disk = b"".join(p.read_bytes() for p in keystore_files(keys))
    assert wrapped in on_disk  # the check below can see it when it is there

    envelope.destroy_tenant_key("ws_a")

    files = keystore_files(keys)
    assert files
    for path in files:
        content = path.read_bytes()
        assert dek not in content, path
        assert wrapped not in content, path
        assert wrapped[12:28] not in content, path  # not even a piece of it
    assert not keys.has_tenant("ws_a") and "ws_a" not in keys.tenants()
    with pytest.raises(KeyNotFound):
        keys.current_data_key("ws_a")


def test_shredding_leaves_no_bytes_in_a_wal_file_either(
    keys: LocalKeyProvider, envelope: Envelope
) -> None:
    """Even if an operator switched the keystore to WAL mode."""
    keys.close()
    with sqlite3.connect(keys.keystore_path) as db:
        db.execute("PRAGMA journal_mode = WAL")
    reader = sqlite3.connect(keys.keystore_path)  # another process, holding the file open
    reader.execute("PRAGMA journal_mode = WAL")
    wal_keys = LocalKeyProvider("eu", keys.kek_path)
    assert wal_keys._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    wal_keys.create_data_key("ws_wal")
    key_id, dek = wal_keys.current_data_key("ws_wal")
    wrapped = wrapped_key(wal_keys, key_id)
    wal_file = keys.keystore_path.with_name(keys.keystore_path.name + "-wal")
    assert wrapped in wal_file.read_bytes()  # where it sits before the shred

    Envelope(wal_keys).destroy_tenant_key("ws_wal")

    for path in keystore_files(wal_keys):
        content = path.read_bytes()
        assert dek not in content and wrapped not in content, path
    reader.close()
    wal_keys.close()


@both_providers
def test_a_shredded_tenant_is_tombstoned_and_never_given_a_key_again(
    keys: KeyProvider, envelope: Envelope, ctx: Context, reopen: OpenKeys,
) -> None:
    """G9: a process that has not seen the shred (its own connection, nothing cached) asks
    for the tenant's key, as a per-request-residency tenant's first write does: refused."""
    sealed = envelope.seal(b"old", ctx)
    other = reopen()
    envelope.destroy_tenant_key("ws_a")
    for provider in (keys, other):
        with pytest.raises(TenantErased, match="ws_a"):
            provider.create_data_key("ws_a")
        with pytest.raises(TenantErased):
            provider.reserve_seals("ws_a")
        with pytest.raises(TenantErased):
            provider.rotate_data_key("ws_a")
        with pytest.raises(TenantErased):
            provider.current_key("ws_a")
        assert provider.erased_at("ws_a") is not None
    with pytest.raises(TenantErased):
        Envelope(other).create_tenant_key("ws_a")
    with pytest.raises(KeyNotFound):  # TenantErased is a KeyNotFound: callers keep working
        Envelope(other).seal(b"new", ctx)
    assert not other.has_tenant("ws_a") and other.rotate_data_keys() == 1  # ws_b only
    with pytest.raises(DecryptionError):
        envelope.open(sealed, ctx)
    assert tombstoned(keys) == [("ws_a",)]  # recorded with the deletion


@both_providers
def test_a_tombstone_is_written_in_the_deleting_transaction(
    keys: KeyProvider, envelope: Envelope, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If recording the tombstone fails, the keys are not deleted either (one transaction)."""
    def clock_fails() -> str:
        raise OSError("clock unavailable")

    monkeypatch.setattr(keys_module, "_now", clock_fails)  # after the DELETE, in its transaction
    with pytest.raises(OSError):
        keys.destroy_tenant("ws_a")
    monkeypatch.undo()
    assert keys.has_tenant("ws_a") and keys.erased_at("ws_a") is None


@both_providers
def test_shredding_by_another_process_takes_effect_when_the_cache_expires(
    envelope: Envelope, ctx: Context, reopen: OpenKeys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(envelope_module, "_monotonic", lambda: clock[0])
    cached = Envelope(envelope._keys, cache_ttl_s=300)
    uncached = Envelope(reopen(), cache_ttl_s=0)
    sealed = cached.seal(b"x", ctx)
    assert uncached.open(sealed, ctx) == b"x"

    Envelope(reopen()).destroy_tenant_key("ws_a")  # the CLI, say

    with pytest.raises(DecryptionError):
        uncached.open(sealed, ctx)  # no cache: at once
    assert cached.open(sealed, ctx) == b"x"  # documented window: until the entry expires
    clock[0] += 301
    with pytest.raises(DecryptionError):
        cached.open(sealed, ctx)
    with pytest.raises(KeyNotFound):
        cached.seal(b"y", ctx)


def keystore_bytes(keys: LocalKeyProvider) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in keystore_files(keys)}


def assert_gone(files: dict[Path, bytes], secrets: list[bytes]) -> None:
    assert files
    for path, content in files.items():
        for secret in secrets:
            assert secret not in content, path
            assert secret[12:28] not in content, path  # not even a piece of it


@pytest.mark.parametrize("mode", ["rollback", "wal"])
def test_every_version_of_a_shredded_key_is_gone_from_keystore_journal_and_wal(
    keys: LocalKeyProvider, mode: str
) -> None:
    """Keys written, counted, rotated (several versions, many rewrites of their pages), then
    shredded: neither the wrapped keys nor the data keys are in the keystore, its rollback
    journal or its WAL, whichever journal mode someone left it in."""
    keys.close()
    provider = LocalKeyProvider("eu", keys.kek_path, seal_limit=8, seal_block=3)
    reader = sqlite3.connect(keys.keystore_path)  # another process holding the file open
    if mode == "wal":
        reader.execute("PRAGMA journal_mode = WAL")  # switched while the provider runs
    for n in range(30):
        provider.create_data_key(f"ws_n{n}")  # neighbours on the same pages
    provider.create_data_key("ws_a")
    for _ in range(12):
        provider.reserve_seals("ws_a")  # rewrites the row, and rotates every third time
    provider.rotate_data_key("ws_a")
    versions = provider.key_versions("ws_a")
    assert len(versions) >= 4
    secrets = [wrapped_key(provider, v.key_id) for v in versions]
    secrets += [provider.key_by_id("ws_a", v.key_id).material for v in versions]
    before = b"".join(keystore_bytes(provider).values())
    assert secrets[0] in before  # the scan can see a wrapped key where it is

    Envelope(provider).destroy_tenant_key("ws_a")

    assert_gone(keystore_bytes(provider), secrets)
    journal_mode = provider._conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert journal_mode == ("wal" if mode == "wal" else "truncate")
    if mode == "rollback":
        journal = provider.keystore_path.with_name(provider.keystore_path.name + "-journal")
        assert not journal.exists() or journal.stat().st_size == 0
    assert provider.tenants() == sorted(f"ws_n{n}" for n in range(30))
    reader.close()
    provider.close()
