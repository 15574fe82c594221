"""Key providers: per-tenant data keys (DEKs), wrapped by the region's key-encryption key (KEK).

The contract (`KeyProvider`) is shaped like a cloud KMS so one can be plugged in later:

- a data key is 32 random bytes, generated once per tenant and stored only *wrapped*;
- wrapping is bound to a context, `{"region", "tenant", "key_id"}` (KMS: the EncryptionContext
  of GenerateDataKey / Decrypt), so a wrapped key moved to another tenant or region is useless;
- a provider stores per data key: key id, tenant, version, wrapped bytes, which KEK wrapped
  it, its derivation scheme and how many seals have been reserved under it.

Data keys (see docs/KEYS.md):
- versions: a tenant's highest version is its current (sealing) key; older versions stay
  readable by key id. `rotate_data_key(tenant)` / `rotate_data_keys()` add a version;
- counting: `reserve_seals(tenant)` hands out a block of seals (default 65,536) of the current
  key in ONE UPDATE; an `Envelope` counts the block down in memory. A block never takes a key
  past `seal_limit` (default 2**30): the reservation that would rotates the tenant first, so no
  key seals more than `seal_limit` records/blobs in all processes together (the count is an
  upper bound: a block a process did not use up is lost when it exits);
- schemes: scheme 1 (keys made before schemes existed) uses the data key itself as the
  AES-GCM key and the blob-key HMAC key; scheme 2 (every new key) derives the two with HKDF
  (`Envelope`). The scheme is stored per key, so old ciphertexts still open;
- tombstones: `destroy_tenant` records (tenant, destroyed_at) in the same transaction that
  deletes the keys, and no key is ever made for that tenant again (`TenantErased`), whichever
  process asks.

`LocalKeyProvider` is the embedded implementation: the KEK is a 32-byte file, and the wrapped
data keys live in a SQLite keystore *beside the key file* (`<kek_path>.keystore.db`), apart
from the regional content store, so a copy of the store holds nothing that could open a
shredded tenant's content (G9).

KEK rotation, crash-safe ordering (all under the keystore's write lock):
 1. write the new KEK to `<kek_path>.next` (0600, fsync);
 2. rewrap every row and record the new kek id in `keystore_meta`, in ONE transaction;
 3. rename `<kek_path>.next` over `<kek_path>` (atomic), fsync the directory.
The committed `keystore_meta.kek_id` says which KEK is authoritative. Whoever opens the keystore
next settles a crash: kek id committed == `.next` means step 3 is finished; otherwise the
`.next` file wrapped nothing and is removed. Other processes notice a rotation because a row's
kek id no longer matches the KEK they hold in memory, and reload the key file.

Shredding and backups: `destroy_tenant` removes the wrapped keys from the keystore file itself:
secure_delete zeroes freed bytes, the rollback journal is truncated at each commit
(journal_mode TRUNCATE, journal_size_limit 0). A keystore someone switched to WAL is switched
back when a connection opens it alone; otherwise `destroy_tenant` checkpoints it and truncates
its -wal before returning.

A copy of the keystore taken *before* an erasure still holds them, wrapped under the KEK of
that time: rotating the KEK after an erasure, and keeping no copy of the old key file, makes
such copies useless too.

Key files: a KEK file readable or writable by group or others is refused (`chmod 600`).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import KeyFileError, KeyNotFound, TenantErased

__all__ = [
    "SCHEME_DIRECT",
    "SCHEME_HKDF",
    "DataKey",
    "KeyProvider",
    "KeyVersion",
    "LocalKeyProvider",
    "SealGrant",
    "keystore_path",
    "write_new_kek",
]

SCHEME_DIRECT = 1  # the data key is the record key and the blob key-derivation key (legacy)
SCHEME_HKDF = 2  # both derived from the data key with HKDF-SHA256, distinct labels
SEAL_LIMIT = 1 << 30  # seals per data key: far below the 2**32 random-nonce bound
SEAL_BLOCK = 1 << 16  # seals reserved per keystore write

KEY_SIZE = 32
_NONCE = 12
_WRAP_LABEL = b"domicile/dek-wrap/v1"
_BUSY_TIMEOUT_S = 30.0  # server workers and the CLI share one keystore: wait, don't fail
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS keystore_meta (
    name  TEXT PRIMARY KEY,       -- 'region', 'kek_id' (the committed KEK)
    value TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS data_keys (
    key_id     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    version    INTEGER NOT NULL,    -- 1, 2, ... per tenant, the highest is current
    kek_id     TEXT NOT NULL,       -- which KEK wrapped it (visible across rotations)
    wrapped    BLOB NOT NULL,       -- nonce(12) || AES-256-GCM(KEK, DEK, wrap context)
    created_at TEXT NOT NULL,
    scheme     INTEGER NOT NULL DEFAULT 1,  -- 1: DEK used directly; 2: HKDF subkeys
    seals_reserved INTEGER NOT NULL DEFAULT 0,  -- seals handed out in blocks, upper bound
    UNIQUE (tenant, version)
)""",
    """CREATE TABLE IF NOT EXISTS tombstones (
    tenant       TEXT PRIMARY KEY,  -- erased: no data key is ever made for it again
    destroyed_at TEXT NOT NULL
)""",
)
# Columns added after keystores existed: (name, definition) for ALTER TABLE on open. Rows that
# predate them get the defaults, i.e. scheme 1, nothing counted.
_ADDED_COLUMNS = (
    ("scheme", "INTEGER NOT NULL DEFAULT 1"),
    ("seals_reserved", "INTEGER NOT NULL DEFAULT 0"),
)



@dataclass(frozen=True, slots=True)
class DataKey:
    """One unwrapped data key: its id, 32 raw bytes (never in the repr) and scheme."""

    key_id: str
    material: bytes = field(repr=False)
    scheme: int


class SealGrant(NamedTuple):
    """`seals` seals reserved under `key`, the tenant's current data key."""

    key: DataKey
    seals: int


class KeyVersion(NamedTuple):
    """What is public about one data key (no key material)."""

    key_id: str
    version: int
    scheme: int
    seals_reserved: int
    created_at: str


class KeyProvider(abc.ABC):
    """Where a region's data keys come from. Implementations must be safe across processes."""

    region: str

    @abc.abstractmethod
    def create_data_key(self, tenant: str) -> str:
        """Create the tenant's data key if it has none (idempotent); return the current key id."""

    @abc.abstractmethod
    def current_key(self, tenant: str) -> DataKey:
        """The tenant's current data key, else `KeyNotFound` (`TenantErased` if erased)."""

    @abc.abstractmethod
    def key_by_id(self, tenant: str, key_id: str) -> DataKey:
        """One of the tenant's data keys, current or older, else `KeyNotFound`."""

    @abc.abstractmethod
    def reserve_seals(self, tenant: str) -> SealGrant:
        """Reserve a block of seals under the tenant's current key, rotating it first if the
        block would take it past its limit. `KeyNotFound`/`TenantErased` if it has no key."""

    @abc.abstractmethod
    def rotate_data_key(self, tenant: str) -> str:
        """Make a new current data key for the tenant (older ones stay readable); its id."""

    @abc.abstractmethod
    def rotate_data_keys(self) -> int:
        """`rotate_data_key` for every tenant with a key, at once; return how many."""

    @abc.abstractmethod
    def key_versions(self, tenant: str) -> list[KeyVersion]:
        """The tenant's data keys, oldest first (ids, versions, schemes, seal counts)."""

    @abc.abstractmethod
    def erased_at(self, tenant: str) -> str | None:
        """When the tenant's keys were destroyed (ISO 8601), if they were."""

    @abc.abstractmethod
    def destroy_tenant(self, tenant: str) -> int:
        """Destroy every data key of the tenant (crypto-shredding) and record a tombstone so
        none is made again; return how many keys."""

    def current_data_key(self, tenant: str) -> tuple[str, bytes]:
        """The key id and 32 raw bytes of the tenant's current data key, else `KeyNotFound`."""
        key = self.current_key(tenant)
        return key.key_id, key.material

    def data_key(self, tenant: str, key_id: str) -> bytes:
        """The raw bytes of one of the tenant's data keys, else `KeyNotFound`."""
        return self.key_by_id(tenant, key_id).material

    @abc.abstractmethod
    def rotate_kek(self, new_kek: bytes | None = None) -> int:
        """Rewrap every data key under a new KEK (content untouched); return how many."""

    @abc.abstractmethod
    def has_tenant(self, tenant: str) -> bool:
        """Whether the tenant has at least one data key."""

    @abc.abstractmethod
    def tenants(self) -> list[str]:
        """Every tenant with a data key, sorted."""


def wrap_context(region: str, tenant: str, key_id: str) -> dict[str, str]:
    """The context a data key is wrapped under (a KMS EncryptionContext)."""
    return {"region": region, "tenant": tenant, "key_id": key_id}


def kek_id(kek: bytes) -> str:
    """A public fingerprint of a KEK: first 8 bytes of its SHA-256, hex."""
    return hashlib.sha256(kek).digest()[:8].hex()


def keystore_path(kek_path: Path) -> Path:
    """Where `LocalKeyProvider` keeps the wrapped data keys of the KEK at `kek_path`."""
    kek_path = Path(kek_path)
    return kek_path.with_name(kek_path.name + ".keystore.db")


def write_new_kek(path: Path) -> None:
    """Create a fresh random 32-byte KEK file, mode 0600. Never overwrites: `FileExistsError`."""
    _create_key_file(Path(path), secrets.token_bytes(KEY_SIZE))


class LocalKeyProvider(KeyProvider):
    """A KEK file plus a SQLite keystore of wrapped data keys beside it."""

    def __init__(
        self, region: str, kek_path: Path, *, seal_limit: int = SEAL_LIMIT,
        seal_block: int = SEAL_BLOCK,
    ) -> None:
        if not isinstance(region, str) or not region:
            raise ValueError("region must be a non-empty string")
        if not 0 < seal_limit <= SEAL_LIMIT or seal_block <= 0:
            raise ValueError(f"seal_limit must be in 1..{SEAL_LIMIT}, seal_block positive")
        self.region = region
        self.kek_path = Path(kek_path)
        self.keystore_path = keystore_path(self.kek_path)
        self.seal_limit = seal_limit
        self.seal_block = min(seal_block, seal_limit)
        self._next_path = self.kek_path.with_name(self.kek_path.name + ".next")
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._db: sqlite3.Connection | None = None
        self._kek = AESGCM(_read_kek(self.kek_path))  # fail fast on a bad file
        self._kek_id = ""
        with self._write() as db:
            self._init_schema(db)
            self._settle_kek(db)

    def __repr__(self) -> str:
        return f"LocalKeyProvider(region={self.region!r}, kek_path={str(self.kek_path)!r})"

    # -- KeyProvider -------------------------------------------------------------------

    def create_data_key(self, tenant: str) -> str:
        _check_tenant(tenant)
        with self._write() as db:
            self._check_kek(db)
            row = db.execute(
                "SELECT key_id FROM data_keys WHERE tenant = ? ORDER BY version DESC LIMIT 1",
                (tenant,),
            ).fetchone()
            if row is not None:
                return str(row[0])
            self._refuse_erased(db, tenant)  # G9: a shredded tenant stays shredded
            return self._insert_key(db, tenant, 1)

    def current_key(self, tenant: str) -> DataKey:
        found = self._unwrap_row(
            "SELECT key_id, kek_id, wrapped, scheme FROM data_keys WHERE tenant = ?"
            " ORDER BY version DESC LIMIT 1",
            (tenant,), tenant,
        )
        if found is None:
            raise self._missing(tenant)
        return found

    def key_by_id(self, tenant: str, key_id: str) -> DataKey:
        found = self._unwrap_row(
            "SELECT key_id, kek_id, wrapped, scheme FROM data_keys"
            " WHERE tenant = ? AND key_id = ?",
            (tenant, key_id), tenant,
        )
        if found is None:
            raise KeyNotFound(
                f"tenant {tenant!r} has no data key {key_id!r} in region {self.region!r}"
            )
        return found

    def reserve_seals(self, tenant: str) -> SealGrant:
        with self._write() as db:
            self._check_kek(db)
            row = self._current_row(db, tenant)
            key_id, version, reserved = str(row[0]), int(row[4]), int(row[5])
            granted = min(self.seal_block, self.seal_limit - reserved)
            # A key that reached its limit never seals again; nor does a key of the legacy
            # scheme (made before seals were counted and subkeys derived): rotate.
            if granted <= 0 or int(row[3]) == SCHEME_DIRECT:
                key_id = self._insert_key(db, tenant, version + 1)
                row = self._current_row(db, tenant)
                granted = self.seal_block
            db.execute(
                "UPDATE data_keys SET seals_reserved = seals_reserved + ? WHERE key_id = ?",
                (granted, key_id),
            )
            key = self._unwrap_key(row, tenant)
        return SealGrant(key, granted)

    def rotate_data_key(self, tenant: str) -> str:
        with self._write() as db:
            self._check_kek(db)
            version = int(self._current_row(db, tenant)[4])
            return self._insert_key(db, tenant, version + 1)

    def rotate_data_keys(self) -> int:
        with self._write() as db:
            self._check_kek(db)
            rows = db.execute(
                "SELECT tenant, MAX(version) FROM data_keys GROUP BY tenant ORDER BY tenant"
            ).fetchall()
            for tenant, version in rows:
                self._insert_key(db, str(tenant), int(version) + 1)
        return len(rows)

    def key_versions(self, tenant: str) -> list[KeyVersion]:
        with self._lock:
            rows = self._conn().execute(
                "SELECT key_id, version, scheme, seals_reserved, created_at FROM data_keys"
                " WHERE tenant = ? ORDER BY version", (tenant,),
            ).fetchall()
        return [KeyVersion(str(r[0]), int(r[1]), int(r[2]), int(r[3]), str(r[4])) for r in rows]

    def erased_at(self, tenant: str) -> str | None:
        row = self._read_one("SELECT destroyed_at FROM tombstones WHERE tenant = ?", (tenant,))
        return None if row is None else str(row[0])

    def destroy_tenant(self, tenant: str) -> int:
        _check_tenant(tenant)
        with self._write() as db:
            destroyed = db.execute("DELETE FROM data_keys WHERE tenant = ?", (tenant,)).rowcount
            db.execute(
                "INSERT OR IGNORE INTO tombstones (tenant, destroyed_at) VALUES (?, ?)",
                (tenant, _now()),
            )
        # secure_delete zeroed the rows in the database file and the rollback journal is
        # truncated at commit. If the keystore is in WAL mode (someone switched it), old page
        # images may still sit in the -wal file: copy the zeroed pages back, truncate it.
        for attempt in range(5):
            with self._lock:
                busy = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return int(destroyed)
            time.sleep(0.05 * (attempt + 1))
        raise RuntimeError(
            f"the data keys of tenant {tenant!r} are destroyed, but {self.keystore_path}-wal"
            " could not be truncated (readers busy): call destroy_tenant again"
        )

    # -- data key rows (inside a write transaction) -------------------------------------------

    def _check_kek(self, db: sqlite3.Connection) -> None:
        if self._committed_kek_id(db) != self._kek_id:
            self._settle_kek(db)  # another process rotated the KEK

    def _insert_key(self, db: sqlite3.Connection, tenant: str, version: int) -> str:
        key_id = secrets.token_hex(8)  # a 2**-64 collision fails the transaction: retryable
        dek = secrets.token_bytes(KEY_SIZE)
        db.execute(
            "INSERT INTO data_keys"
            " (key_id, tenant, version, kek_id, wrapped, created_at, scheme, seals_reserved)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            (key_id, tenant, version, self._kek_id, self._wrap(dek, tenant, key_id), _now(),
             SCHEME_HKDF),
        )
        return key_id

    def _current_row(self, db: sqlite3.Connection, tenant: str) -> tuple[Any, ...]:
        row: tuple[Any, ...] | None = db.execute(
            "SELECT key_id, kek_id, wrapped, scheme, version, seals_reserved FROM data_keys"
            " WHERE tenant = ?"
            " ORDER BY version DESC LIMIT 1", (tenant,),
        ).fetchone()
        if row is None:
            self._refuse_erased(db, tenant)
            raise KeyNotFound(f"tenant {tenant!r} has no data key in region {self.region!r}")
        return row

    def _unwrap_key(self, row: tuple[Any, ...], tenant: str) -> DataKey:
        """The `DataKey` of a row starting with (key_id, kek_id, wrapped, scheme); the KEK is
        settled already (inside a write transaction: no reload)."""
        key_id, row_kek_id, wrapped, scheme = row[:4]
        dek = self._unwrap(wrapped, row_kek_id, tenant, key_id, reload=False)
        return DataKey(str(key_id), dek, int(scheme))

    def _refuse_erased(self, db: sqlite3.Connection, tenant: str) -> None:
        row = db.execute("SELECT destroyed_at FROM tombstones WHERE tenant = ?",
                         (tenant,)).fetchone()
        if row is not None:
            raise _erased(tenant, self.region, str(row[0]))

    def _missing(self, tenant: str) -> KeyNotFound:
        erased = self.erased_at(tenant)
        if erased is not None:
            return _erased(tenant, self.region, erased)
        return KeyNotFound(f"tenant {tenant!r} has no data key in region {self.region!r}")

    def rotate_kek(self, new_kek: bytes | None = None) -> int:
        new = secrets.token_bytes(KEY_SIZE) if new_kek is None else bytes(new_kek)
        if len(new) != KEY_SIZE:
            raise ValueError(f"a KEK must be exactly {KEY_SIZE} bytes")
        new_id = kek_id(new)
        new_aead = AESGCM(new)
        with self._write() as db:
            self._settle_kek(db)
            if new_id == self._kek_id:
                raise ValueError("the new KEK is the current KEK")
            with contextlib.suppress(FileNotFoundError):
                self._next_path.unlink()  # settled above: a leftover wrapped nothing
            _create_key_file(self._next_path, new)  # step 1
            rows = db.execute("SELECT key_id, tenant, kek_id, wrapped FROM data_keys").fetchall()
            for key_id, tenant, row_kek_id, wrapped in rows:  # step 2
                # settled above, so every row is under self._kek (one transaction per rotation)
                dek = self._unwrap(wrapped, row_kek_id, tenant, key_id, reload=False)
                db.execute(
                    "UPDATE data_keys SET kek_id = ?, wrapped = ? WHERE key_id = ?",
                    (new_id, _wrap_with(new_aead, dek, self.region, tenant, key_id), key_id),
                )
            db.execute("UPDATE keystore_meta SET value = ? WHERE name = 'kek_id'", (new_id,))
        self._finish_rotation(new_id)  # step 3, after COMMIT
        self._kek, self._kek_id = new_aead, new_id
        return len(rows)

    def has_tenant(self, tenant: str) -> bool:
        row = self._read_one("SELECT 1 FROM data_keys WHERE tenant = ? LIMIT 1", (tenant,))
        return row is not None

    def tenants(self) -> list[str]:
        with self._lock:
            rows = self._conn().execute(
                "SELECT DISTINCT tenant FROM data_keys ORDER BY tenant"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        """Close the keystore connection (reopened on next use)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- wrapping ----------------------------------------------------------------------

    def _wrap(self, dek: bytes, tenant: str, key_id: str) -> bytes:
        return _wrap_with(self._kek, dek, self.region, tenant, key_id)

    def _unwrap_row(
        self, sql: str, args: tuple[str, ...], tenant: str
    ) -> DataKey | None:
        """The data key of the row `sql` selects as (key_id, kek_id, wrapped, scheme)."""
        for attempt in range(2):
            row = self._read_one(sql, args)
            if row is None:
                return None
            key_id, row_kek_id, wrapped, scheme = row
            try:
                dek = self._unwrap(wrapped, row_kek_id, tenant, key_id)
                return DataKey(str(key_id), dek, int(scheme))
            except KeyNotFound:
                if attempt:
                    raise
                # The row may have been read just before a KEK rotation committed: read again.
        raise AssertionError("unreachable")  # pragma: no cover

    def _unwrap(
        self, wrapped: bytes, row_kek_id: str, tenant: str, key_id: str, *, reload: bool = True
    ) -> bytes:
        if row_kek_id != self._kek_id and reload:
            self._reload_kek()  # another process rotated the KEK since we loaded it
        aad = _wrap_aad(self.region, tenant, key_id)
        try:
            return self._kek.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
        except InvalidTag:
            raise KeyNotFound(
                f"data key {key_id!r} of tenant {tenant!r} does not unwrap under the KEK"
                f" of region {self.region!r}"
            ) from None

    # -- KEK file and rotation recovery ----------------------------------------------------

    def _reload_kek(self) -> None:
        with self._write() as db:
            self._settle_kek(db)

    def _settle_kek(self, db: sqlite3.Connection) -> None:
        """Load the KEK the keystore was committed under, finishing a crashed rotation."""
        committed = self._committed_kek_id(db)
        for _ in range(2):
            current = _read_kek(self.kek_path)
            if kek_id(current) == committed:
                break
            try:
                pending = _read_kek(self._next_path)
            except KeyFileError:
                continue  # no .next: perhaps it was renamed over kek_path just now; look again
            if kek_id(pending) == committed:
                self._finish_rotation(committed)  # a rotation committed, its rename did not
                current = pending
                break
        else:
            raise KeyFileError(
                f"{self.kek_path}: this key file (kek id {kek_id(current)}) is not the KEK of"
                f" keystore {self.keystore_path} (kek id {committed})"
            )
        with contextlib.suppress(FileNotFoundError):
            self._next_path.unlink()  # a rotation that never committed: it wrapped nothing
        self._kek, self._kek_id = AESGCM(current), committed

    def _finish_rotation(self, new_id: str) -> None:
        try:
            os.replace(self._next_path, self.kek_path)
        except FileNotFoundError:
            # Another process finished it first; make sure that is what happened.
            if kek_id(_read_kek(self.kek_path)) != new_id:
                raise
        _fsync_dir(self.kek_path.parent)

    # -- SQLite ------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # never use a SQLite connection across fork()
            self._lock, self._db, self._pid = threading.RLock(), None, os.getpid()
        if self._db is None:
            _precreate_private(self.keystore_path)  # SQLite would create it 0644
            db = sqlite3.connect(
                self.keystore_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                check_same_thread=False,
            )
            # secure_delete: deleted/overwritten key bytes are zeroed in the file, not left
            # in free space. TRUNCATE: the rollback journal (holding the old page images of a
            # transaction) is cut to zero bytes at each commit, never kept with content as
            # PERSIST would; journal_size_limit 0 holds any other rollback mode to the same.
            db.execute("PRAGMA secure_delete = ON")
            db.execute("PRAGMA journal_size_limit = 0")
            with contextlib.suppress(sqlite3.OperationalError):
                # Fails only while others hold a WAL-mode file open; destroy copes with WAL.
                db.execute("PRAGMA journal_mode = TRUNCATE")
            db.execute("PRAGMA synchronous = FULL")
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the keystore's write lock across processes."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read_one(self, sql: str, args: tuple[str, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._conn().execute(sql, args).fetchone()
        return row

    def _init_schema(self, db: sqlite3.Connection) -> None:
        # Statement by statement: executescript() would COMMIT our open transaction.
        for statement in _SCHEMA:
            db.execute(statement)
        have = {str(r[1]) for r in db.execute("PRAGMA table_info(data_keys)")}
        for name, definition in _ADDED_COLUMNS:
            if name not in have:  # a keystore from before this column: its rows get the default
                db.execute(f"ALTER TABLE data_keys ADD COLUMN {name} {definition}")
        db.execute(
            "INSERT OR IGNORE INTO keystore_meta (name, value) VALUES ('region', ?)",
            (self.region,),
        )
        db.execute(
            "INSERT OR IGNORE INTO keystore_meta (name, value) VALUES ('kek_id', ?)",
            (kek_id(_read_kek(self.kek_path)),),
        )
        stored = db.execute("SELECT value FROM keystore_meta WHERE name = 'region'").fetchone()
        if stored[0] != self.region:
            raise KeyFileError(
                f"{self.keystore_path}: keystore of region {stored[0]!r}, not {self.region!r}"
            )

    def _committed_kek_id(self, db: sqlite3.Connection) -> str:
        row = db.execute("SELECT value FROM keystore_meta WHERE name = 'kek_id'").fetchone()
        return str(row[0])


# -- helpers -----------------------------------------------------------------------------------


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("tenant must be a non-empty string")


def _erased(tenant: str, region: str, destroyed_at: str) -> TenantErased:
    return TenantErased(
        f"tenant {tenant!r} was erased in region {region!r} at {destroyed_at}:"
        " no data key is made for it again"
    )


def _wrap_aad(region: str, tenant: str, key_id: str) -> bytes:
    parts = [_WRAP_LABEL]
    for value in (region, tenant, key_id):
        encoded = value.encode("utf-8")
        parts += (len(encoded).to_bytes(4, "big"), encoded)
    return b"".join(parts)


def _wrap_with(kek: AESGCM, dek: bytes, region: str, tenant: str, key_id: str) -> bytes:
    nonce = os.urandom(_NONCE)  # cold path: a fresh syscall, no pool needed
    return nonce + kek.encrypt(nonce, dek, _wrap_aad(region, tenant, key_id))


def _read_kek(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            loose = os.fstat(file.fileno()).st_mode & 0o077
            data = file.read()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None
    if loose:
        raise KeyFileError(
            f"{path}: key file is readable or writable by group or others"
            f" (mode {loose:03o} beyond the owner): run `chmod 600 {path}`"
        )
    if len(data) != KEY_SIZE:
        raise KeyFileError(
            f"{path}: a key file must hold exactly {KEY_SIZE} bytes, this one holds {len(data)}"
        )
    return data


def _create_key_file(path: Path, key: bytes) -> None:
    """Write a key file that did not exist: 0600, fully on disk before it is relied on."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)  # O_EXCL: FileExistsError rather than overwrite a key
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
        view = memoryview(key)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink()
        raise
    os.close(fd)
    _fsync_dir(path.parent)


def _precreate_private(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat()
