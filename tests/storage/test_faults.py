"""Store faults as answers: an unreachable store is 503 `store_unavailable`, a full disk 507
`insufficient_storage`, each logged with its cause (types, errno, SQLite's error name) and
never an exception's text; anything else is not a store fault."""

from __future__ import annotations

import errno
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text

from domicile.errors import InsufficientStorage, StoreUnavailable
from domicile.storage.db import make_engine
from domicile.storage.faults import store_fault

CANARY = "CANARY-fault-7d1e"


def _raised(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sqlite_full(tmp_path: Path) -> BaseException:
    """A real SQLITE_FULL, through SQLAlchemy: a database that may not grow."""
    engine = make_engine(f"sqlite:///{tmp_path / 'full.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x BLOB)"))

    @event.listens_for(engine, "connect")
    def cap(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.execute("PRAGMA max_page_count = 3")

    engine.dispose()

    def grow() -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (zeroblob(100000))"))

    return _raised(grow)


def _sqlite_locked(tmp_path: Path) -> BaseException:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    try:
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})

        def write() -> None:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))

        return _raised(write)
    finally:
        holder.close()


def _postgres_refused() -> BaseException:
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/x")
    try:
        return _raised(lambda: engine.connect())
    finally:
        engine.dispose()


@pytest.mark.parametrize(("make", "expected"), [
    (lambda tmp: OSError(errno.ENOSPC, "No space left on device", f"/x/{CANARY}"),
     InsufficientStorage),
    (lambda tmp: OSError(errno.EDQUOT, "Disk quota exceeded"), InsufficientStorage),
    (lambda tmp: OSError(errno.EIO, "Input/output error"), StoreUnavailable),
    (lambda tmp: _sqlite_full(tmp), InsufficientStorage),
    (lambda tmp: _sqlite_locked(tmp), StoreUnavailable),
    (lambda tmp: sqlite3.OperationalError("database or disk is full"), InsufficientStorage),
    (lambda tmp: _raised(lambda: create_engine(
        f"sqlite:///{tmp}/no/such/folder/x.db").connect()), StoreUnavailable),
    (lambda tmp: _postgres_refused(), StoreUnavailable),
], ids=["enospc", "edquot", "eio", "sqlite-full", "sqlite-locked", "sqlite-full-by-hand",
        "sqlite-cantopen", "postgres-refused"])
def test_store_faults_are_503_or_507(tmp_path: Path, make: Callable[[Path], BaseException],
                                     expected: type[Exception]) -> None:
    fault = store_fault(make(tmp_path), "req_1")
    assert type(fault) is expected
    assert fault.status == (507 if expected is InsufficientStorage else 503)
    assert fault.to_openai()["error"]["code"] == expected.code  # type: ignore[index]
    # The same answer serves GET, list and DELETE: it may not claim an upload's outcome.
    assert "nothing was stored" not in fault.message
    assert "req_1" in fault.message


@pytest.mark.parametrize("make", [
    lambda tmp: ValueError(CANARY),
    lambda tmp: TimeoutError(),  # no syscall's errno: not the store's
    lambda tmp: KeyError(CANARY),
    lambda tmp: _raised(lambda: make_engine("sqlite://").connect().execute(
        text("SELECT * FROM no_such_table"))),  # a bad statement is a bug, not an outage
], ids=["value-error", "timeout", "key-error", "sqlite-error"])
def test_other_errors_are_not_store_faults(tmp_path: Path,
                                           make: Callable[[Path], BaseException]) -> None:
    assert store_fault(make(tmp_path), "req_1") is None


def test_the_log_line_names_the_cause_and_never_the_text(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR", logger="domicile.storage")
    store_fault(OSError(errno.ENOSPC, f"full {CANARY}", f"/blobs/{CANARY}"), "req_abc")
    store_fault(_sqlite_full(tmp_path), "req_def")
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert "507 insufficient_storage" in lines[0] and "req_abc" in lines[0]
    assert "errno 28 (ENOSPC)" in lines[0]
    assert "OperationalError" in lines[1] and "SQLITE_FULL" in lines[1]
    assert CANARY not in caplog.text and "zeroblob" not in caplog.text
