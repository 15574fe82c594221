"""Key providers: per-tenant data keys (DEKs), wrapped by the region's key-encryption key (KEK).

The contract (`KeyProvider`) is shaped like a cloud KMS so one can be plugged in later:

- a data key is 32 random bytes, generated once per tenant and stored only *wrapped*;
- wrapping is bound to a context, `{"region", "tenant", "key_id"}` (KMS: the EncryptionContext
  of GenerateDataKey / Decrypt), so a wrapped key moved to another tenant or region is useless;
- a provider stores per data key: key id, tenant, wrapped bytes, and which KEK wrapped it.

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

Shredding and backups: `destroy_tenant` removes the wrapped keys from the keystore file itself
(secure_delete, no journal left behind). A copy of the keystore taken *before* an erasure still
holds them, wrapped under the KEK of that time: rotating the KEK after an erasure, and keeping
no copy of the old key file, makes such copies useless too.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import KeyFileError, KeyNotFound

__all__ = ["KeyProvider", "LocalKeyProvider", "keystore_path", "write_new_kek"]

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
    UNIQUE (tenant, version)
)""",
)


class KeyProvider(abc.ABC):
    """Where a region's data keys come from. Implementations must be safe across processes."""

    region: str

    @abc.abstractmethod
    def create_data_key(self, tenant: str) -> str:
        """Create the tenant's data key if it has none (idempotent); return the current key id."""

    @abc.abstractmethod
    def current_data_key(self, tenant: str) -> tuple[str, bytes]:
        """The key id and 32 raw bytes of the tenant's current data key, else `KeyNotFound`."""

    @abc.abstractmethod
    def data_key(self, tenant: str, key_id: str) -> bytes:
        """The raw bytes of one of the tenant's data keys, else `KeyNotFound`."""

    @abc.abstractmethod
    def destroy_tenant(self, tenant: str) -> int:
        """Destroy every data key of the tenant (crypto-shredding); return how many."""

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

    def __init__(self, region: str, kek_path: Path) -> None:
        if not isinstance(region, str) or not region:
            raise ValueError("region must be a non-empty string")
        self.region = region
        self.kek_path = Path(kek_path)
        self.keystore_path = keystore_path(self.kek_path)
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
        for _ in range(3):  # a retry only on a (2**-64) key id collision
            with self._write() as db:
                if self._committed_kek_id(db) != self._kek_id:
                    self._settle_kek(db)  # another process rotated the KEK
                key_id = secrets.token_hex(8)
                dek = secrets.token_bytes(KEY_SIZE)
                # INSERT OR IGNORE on (tenant, version 1): racing processes all end up with
                # whichever key was inserted first.
                db.execute(
                    "INSERT OR IGNORE INTO data_keys"
                    " (key_id, tenant, version, kek_id, wrapped, created_at)"
                    " VALUES (?, ?, 1, ?, ?, ?)",
                    (key_id, tenant, self._kek_id, self._wrap(dek, tenant, key_id), _now()),
                )
                row = db.execute(
                    "SELECT key_id FROM data_keys WHERE tenant = ? ORDER BY version DESC LIMIT 1",
                    (tenant,),
                ).fetchone()
            if row is not None:
                return str(row[0])
        raise RuntimeError("could not allocate a unique data key id")  # pragma: no cover

    def current_data_key(self, tenant: str) -> tuple[str, bytes]:
        found = self._unwrap_row(
            "SELECT key_id, kek_id, wrapped FROM data_keys WHERE tenant = ?"
            " ORDER BY version DESC LIMIT 1",
            (tenant,), tenant,
        )
        if found is None:
            raise KeyNotFound(f"tenant {tenant!r} has no data key in region {self.region!r}")
        return found

    def data_key(self, tenant: str, key_id: str) -> bytes:
        found = self._unwrap_row(
            "SELECT key_id, kek_id, wrapped FROM data_keys WHERE tenant = ? AND key_id = ?",
            (tenant, key_id), tenant,
        )
        if found is None:
            raise KeyNotFound(
                f"tenant {tenant!r} has no data key {key_id!r} in region {self.region!r}"
            )
        return found[1]

    def destroy_tenant(self, tenant: str) -> int:
        with self._write() as db:
            destroyed = db.execute("DELETE FROM data_keys WHERE tenant = ?", (tenant,)).rowcount
        # secure_delete zeroed the rows in the database file and the rollback journal is
        # unlinked at commit. If the keystore is in WAL mode (someone switched it), old page
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
    ) -> tuple[str, bytes] | None:
        """(key id, data key) of the row `sql` selects as (key_id, kek_id, wrapped)."""
        for attempt in range(2):
            row = self._read_one(sql, args)
            if row is None:
                return None
            key_id, row_kek_id, wrapped = row
            try:
                return key_id, self._unwrap(wrapped, row_kek_id, tenant, key_id)
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
            # in free space. A rollback journal (not WAL) is unlinked at each commit, so old
            # page images never linger in a side file.
            db.execute("PRAGMA secure_delete = ON")
            with contextlib.suppress(sqlite3.OperationalError):
                # Fails only while others hold a WAL-mode file open; destroy copes with WAL.
                db.execute("PRAGMA journal_mode = DELETE")
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
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None
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
