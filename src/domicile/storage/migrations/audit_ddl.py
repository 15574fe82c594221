"""DDL shared by the migrations: the audit chain (append-only in the database), and the
trigger that keeps every regional row in its own region."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def create_audit_tables() -> None:
    op.create_table(
        "audit_log",
        sa.Column("chain", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_head",
        sa.Column("chain", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    # Append-only: the database refuses to change or delete an entry. The hash chain still
    # catches whoever goes around the database (a file edit, a dropped trigger).
    refuse_changes("audit_log", "UPDATE", "audit log entries are append-only")
    refuse_changes("audit_log", "DELETE", "audit log entries are append-only")


def refuse_changes(
    table: str, operation: str, message: str, *, columns: tuple[str, ...] = (), name: str = ""
) -> None:
    """A trigger aborting `operation` on `table`; with `columns`, only when one of them changes."""
    name = name or f"{table}_refuse_{operation.lower()}"
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in columns)
        condition = f" WHEN {changed}" if columns else ""
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {operation} ON {table} FOR EACH ROW{condition} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )
    elif dialect == "postgresql":
        changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in columns)
        raise_ = f"RAISE EXCEPTION '{message}';"
        body = f"IF {changed} THEN {raise_} END IF;" if columns else raise_
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} "
            "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}()"
        )
    else:
        raise RuntimeError(f"unsupported database dialect {dialect}")


def refuse_foreign_region(table: str) -> None:
    """Every row records its region; the database refuses a row of any region but its own."""
    message = "this store belongs to another region"
    name = f"{table}_own_region_only"
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW "
            "WHEN NEW.region IS NOT (SELECT region FROM store_identity) "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )
    else:
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.region IS DISTINCT FROM (SELECT region FROM store_identity) THEN "
            f"RAISE EXCEPTION '{message}'; END IF; RETURN NEW; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT OR UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}()"
        )


def refuse_foreign_region_update(table: str) -> None:
    """SQLite's trigger of `refuse_foreign_region` fires on INSERT only (PostgreSQL's on both):
    refuse an UPDATE that moves a row to another region too."""
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        f"CREATE TRIGGER {table}_own_region_only_update BEFORE UPDATE OF region ON {table} "
        "FOR EACH ROW WHEN NEW.region IS NOT (SELECT region FROM store_identity) "
        "BEGIN SELECT RAISE(ABORT, 'this store belongs to another region'); END"
    )


def refuse_second_row(table: str, message: str) -> None:
    """A one-row table: an INSERT while a row exists is refused (a store's identity cannot be
    replaced by deleting it and inserting another)."""
    name = f"{table}_one_row"
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW "
            f"WHEN (SELECT count(*) FROM {table}) > 0 "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )
    else:
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF (SELECT count(*) FROM {table}) > 0 THEN RAISE EXCEPTION '{message}'; END IF; "
            "RETURN NEW; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}()"
        )


def refuse_truncate(table: str, message: str) -> None:
    """PostgreSQL's TRUNCATE skips row triggers: refuse it on `table` too. (SQLite has no
    TRUNCATE; its DELETE without WHERE fires the row triggers.)"""
    if op.get_bind().dialect.name != "postgresql":
        return
    name = f"{table}_refuse_truncate"
    op.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"RAISE EXCEPTION '{message}'; END $$"
    )
    op.execute(
        f"CREATE TRIGGER {name} BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
    )
