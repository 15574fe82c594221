"""Tables shared by the directory and the regional stores: the audit chain."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text

__all__ = ["audit_tables"]


def audit_tables(metadata: MetaData) -> tuple[Table, Table]:
    """The audit log and its head (the last entry's hash, so a cut tail is detected)."""
    log = Table(
        "audit_log",
        metadata,
        Column("chain", String(32), primary_key=True),
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("actor", String(200), nullable=False),
        Column("action", String(100), nullable=False),
        Column("target", String(200), nullable=False),
        Column("details", Text, nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
    )
    head = Table(
        "audit_head",
        metadata,
        Column("chain", String(32), primary_key=True),
        Column("seq", Integer, nullable=False),
        Column("hash", String(64), nullable=False),
    )
    return log, head
