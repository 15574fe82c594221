"""Engines and schema migrations for the directory and the regional stores.

The same code runs on SQLite (the embedded default, WAL mode; the database file and its
companions mode 0600) and PostgreSQL (one database per region). Schemas are Alembic
migrations, applied by `init` and at `serve`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

from domicile.storage.private import create_private_file

__all__ = ["Schema", "make_engine", "migrate", "sqlite_path"]

Schema = Literal["directory", "region"]
MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///…` URL; None for another database or an in-memory one."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            # Made 0600 before SQLite opens it: its -wal and -shm files take its mode.
            create_private_file(path)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take it over so that
        # BEGIN IMMEDIATE serialises writers (audit chain appends rely on it).
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Deleted content (erasure) is overwritten in the file, not left in free pages.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(engine: Engine, schema: Schema) -> None:
    """Bring a database to the newest schema of its kind (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS / schema))
    config.set_main_option("version_table", f"alembic_version_{schema}")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
