"""Going around a store's append-only audit triggers, as an attacker with file (or database
owner) access would: the chain and the receipts must catch what the database no longer can."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, text

AUDIT_TABLES = ("audit_log", "audit_head")


def tamper_sqlite(path: Path, *statements: str) -> None:
    """Drop every trigger guarding the audit tables of the SQLite file, then run `statements`."""
    conn = sqlite3.connect(path)
    try:
        triggers = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN (?, ?)",
            AUDIT_TABLES)]
        for trigger in triggers:
            conn.execute(f'DROP TRIGGER "{trigger}"')
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def tamper(engine: Engine, *statements: str) -> None:
    """`tamper_sqlite`, or on PostgreSQL: the tables' triggers disabled, then `statements`."""
    if engine.dialect.name == "sqlite":
        tamper_sqlite(Path(engine.url.database or ""), *statements)
        return
    with engine.begin() as conn:
        for table in AUDIT_TABLES:
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        for statement in statements:
            conn.execute(text(statement))


# What an attacker does to chain `chain` of five entries (by name, for parametrized tests),
# and the first entry `verify` must then name.
ATTACKS: dict[str, tuple[tuple[str, ...], int]] = {
    "tampered": (("UPDATE audit_log SET target = 'obj_x' WHERE chain = '{chain}' AND seq = 3",), 3),
    "deleted": (("DELETE FROM audit_log WHERE chain = '{chain}' AND seq = 2",), 2),
    "reordered": (("UPDATE audit_log SET seq = 100 WHERE chain = '{chain}' AND seq = 2",
                   "UPDATE audit_log SET seq = 2 WHERE chain = '{chain}' AND seq = 3",
                   "UPDATE audit_log SET seq = 3 WHERE chain = '{chain}' AND seq = 100"), 2),
    # The last two entries cut and the head rewound onto entry 3: the chain alone is intact.
    "truncated": (("DELETE FROM audit_log WHERE chain = '{chain}' AND seq > 3",
                   "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE "
                   "chain = '{chain}' AND seq = 3) WHERE chain = '{chain}'"), 4),
    # Entries and head gone: an empty chain is intact too.
    "deleted_whole_chain": (("DELETE FROM audit_log WHERE chain = '{chain}'",
                             "DELETE FROM audit_head WHERE chain = '{chain}'"), 1),
}


def attack(name: str, chain: str) -> tuple[list[str], int]:
    """The statements of attack `name` on `chain`, and the first bad entry it leaves."""
    statements, first_bad = ATTACKS[name]
    return [statement.format(chain=chain) for statement in statements], first_bad
