"""Store faults as answers: what a client is told when the region's store fails under it.

`store_fault` maps an exception from the store layer (SQLAlchemy, SQLite, psycopg, the blob
store's file system) to the error a client should see: a database or disk that cannot be
reached now is 503 `store_unavailable`, a full disk or quota 507 `insufficient_storage`.
A KMS or Vault that did not answer is `KeyServiceUnavailable`, itself a 503
`key_service_unavailable` (a `DomicileError`, answered as it is); raised from under another
exception, it is found here and answered all the same. Anything else (a bug) is not a store
fault: None. It logs one line naming the cause by
constants only (`failures.describe(exc, text=False)`: exception types, errno, SQLite's error
name, PostgreSQL's SQLSTATE), never an exception's text, which can quote SQL parameters and
paths. `is_full` is the same classification's "full disk", for code that frees space.
"""

from __future__ import annotations

import errno
import logging
import sqlite3

from sqlalchemy import exc as sa_exc

from domicile.crypto.wrapping import KeyServiceUnavailable
from domicile.errors import DomicileError, InsufficientStorage, StoreUnavailable
from domicile.failures import cause_of, describe

__all__ = ["is_full", "store_fault"]

log = logging.getLogger("domicile.storage")

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# SQLite's primary result codes that mean "the database cannot be used right now" (busy,
# locked, out of memory, read-only, I/O error, corrupt, cannot open, protocol, not a db).
# SQLITE_ERROR (1) is not among them: it is a bad statement, a bug.
_SQLITE_FULL = 13
_SQLITE_UNAVAILABLE = frozenset({5, 6, 7, 8, 10, 11, 14, 15, 26})
_SQLITE_FULL_MESSAGE = "database or disk is full"  # SQLite's fixed text for SQLITE_FULL
_PG_DISK_FULL = "53100"
_FULL, _UNAVAILABLE, _UNKNOWN = "full", "unavailable", "unknown"

try:  # PostgreSQL's driver is optional: a SQLite-only site does not need it
    import psycopg
except ImportError:  # pragma: no cover - installed with the project
    psycopg = None  # type: ignore[assignment]


def store_fault(exc: BaseException, request_id: str = "") -> DomicileError | None:
    """The error to answer for `exc` if it is a store fault (logged, once), else None."""
    key_service = _key_service_down(exc)
    if key_service is not None:
        log.error("key service unavailable in request %s: %s", request_id or "-",
                  describe(exc, text=False))
        return key_service
    kind = _classify(cause_of(exc))
    if kind == _UNKNOWN:  # a driver we do not know: SQLAlchemy's own classification
        kind = _UNAVAILABLE if isinstance(exc, sa_exc.DBAPIError) and (
            exc.connection_invalidated
            or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)) else None
    fault: DomicileError
    if kind == _FULL:
        # True of every operation: a DELETE that freed a blob file may still have failed.
        fault = InsufficientStorage(
            "The region's storage is full: nothing new can be stored until files are deleted "
            f"(request id {request_id}).")
    elif kind == _UNAVAILABLE:
        fault = StoreUnavailable(
            "The region's store cannot be reached now; nothing was changed. Try again shortly "
            f"(request id {request_id}).")
    else:
        return None
    log.error("store fault (%d %s) in request %s: %s", fault.status, fault.code,
              request_id or "-", describe(exc, text=False))
    return fault


def _key_service_down(exc: BaseException) -> KeyServiceUnavailable | None:
    """The `KeyServiceUnavailable` behind `exc` (itself, or what it was raised from)."""
    current: BaseException | None = exc
    for _ in range(8):  # a bounded walk: a cycle of causes is possible
        if current is None:
            return None
        if isinstance(current, KeyServiceUnavailable):
            return current
        current = current.__cause__ or current.__context__
    return None


def is_full(exc: BaseException) -> bool:
    """Whether `exc` is a full disk or quota (what `store_fault` answers 507). Not logged."""
    return _classify(cause_of(exc)) == _FULL


def _classify(cause: BaseException) -> str | None:
    """_FULL, _UNAVAILABLE, None (not a store fault) or _UNKNOWN (not an error we know)."""
    if isinstance(cause, OSError):
        if cause.errno is None:
            return None  # a bare TimeoutError or ConnectionError of no syscall: not a store's
        return _FULL if cause.errno in _FULL_ERRNOS else _UNAVAILABLE
    if isinstance(cause, sqlite3.Error):
        code = getattr(cause, "sqlite_errorcode", None)
        if code is None:  # made by hand (no result code): only SQLite's fixed text tells
            full = isinstance(cause, sqlite3.OperationalError) and \
                _SQLITE_FULL_MESSAGE in str(cause)
            return _FULL if full else None
        primary = code & 0xFF
        if primary == _SQLITE_FULL:
            return _FULL
        return _UNAVAILABLE if primary in _SQLITE_UNAVAILABLE else None
    if psycopg is not None and isinstance(cause, psycopg.Error):
        if getattr(cause, "sqlstate", None) == _PG_DISK_FULL:
            return _FULL
        unavailable = isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError)
        return _UNAVAILABLE if unavailable else None
    if isinstance(cause, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return _UNAVAILABLE  # no pooled connection to be had, or it broke
    return _UNKNOWN

