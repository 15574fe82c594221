"""The audit log (G8): per chain (each region, and the directory), append-only, hash-chained.

Each entry holds an HMAC-SHA256, over a canonical encoding, of itself and the entry before
it, so an entry altered, removed or reordered breaks the chain; `audit_head` keeps the last
hash so a cut tail is caught too. What the head alone cannot catch (a tail cut together with
a head rewound, a chain deleted whole) a signed receipt of an earlier head does:
`compliance.receipts`. The MAC key is derived from the site secret, which lives
outside every database: whoever can write a database but not read that file cannot rebuild
a consistent chain after tampering. The database refuses UPDATE and DELETE on entries; the
chain catches whoever goes around it. Entries say who did what to which object: never
content or secrets; reading content is audited as `content.read`, with ids only.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from hashlib import sha256
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from domicile.errors import InvalidInput

__all__ = ["CONTENT_READ", "GENESIS", "AuditEntry", "AuditLog", "AuditProblem", "ChainCheck",
           "Detail", "audit_key", "parse_since"]

GENESIS = "0" * 64
CONTENT_READ = "content.read"
Detail = str | int | bool | None
# Rows fetched at a time when a chain is walked: PostgreSQL streams them through a server-side
# cursor instead of handing the whole chain to the client at once.
_BATCH = 1000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    chain: str
    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    details: Mapping[str, Detail]
    prev_hash: str
    hash: str

    def json_line(self) -> str:
        """The entry as one JSON Lines line: the export format (`domicile audit export`,
        `GET /admin/v1/audit/{chain}/export`)."""
        return json.dumps({
            "chain": self.chain, "seq": self.seq,
            "at": self.at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": self.actor, "action": self.action, "target": self.target,
            "details": dict(self.details), "prev_hash": self.prev_hash, "hash": self.hash,
        }, ensure_ascii=False) + "\n"


def parse_since(value: str | None, *, name: str) -> datetime | None:
    """An export's start: an ISO date (its midnight, UTC) or datetime (UTC unless it names an
    offset); `InvalidInput` naming the option `name` as the caller spells it."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO date (2026-01-31) or datetime "
                           "(2026-01-31T12:00:00, UTC unless it names an offset)",
                           param="since") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class AuditProblem:
    chain: str
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"audit chain {self.chain!r}: entry {self.seq}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """A walk of a chain: its first problem (None: intact), and the last entry that verified
    (seq 0 and GENESIS for an empty chain)."""

    problem: AuditProblem | None
    seq: int
    hash: str


def audit_key(site_secret: bytes) -> bytes:
    """The chains' MAC key: derived from the site secret, separated from its other use."""
    return hmac.new(site_secret, b"domicile audit chain v1", sha256).digest()


def entry_hash(key: bytes, prev_hash: str, chain: str, seq: int, at: datetime, actor: str,
               action: str, target: str, details: str) -> str:
    canonical = json.dumps(
        [prev_hash, chain, seq, _iso(at), actor, action, target, details],
        separators=(",", ":"), ensure_ascii=False,
    )
    return hmac.new(key, canonical.encode("utf-8"), sha256).hexdigest()


def _iso(at: datetime) -> str:
    # SQLite hands datetimes back naive; they were written in UTC.
    return _utc(at).isoformat(timespec="microseconds")


class AuditLog:
    """One chain in one database (`log` and `head` tables from `storage.schema.audit_tables`)."""

    def __init__(self, engine: Engine, chain: str, log: Table, head: Table, *,
                 key: bytes) -> None:
        self._engine = engine
        self.chain = chain
        self._log = log
        self._head = head
        self._key = key

    def __repr__(self) -> str:
        return f"AuditLog(chain={self.chain!r})"

    def append(self, actor: str, action: str, target: str,
               details: Mapping[str, Detail] | None = None, *,
               connection: Connection | None = None) -> AuditEntry:
        """Append an entry; inside `connection`'s transaction when given (atomic with it)."""
        if connection is not None:
            return self._append(connection, actor, action, target, details or {})
        for _attempt in range(20):
            try:
                with self._engine.begin() as conn:
                    return self._append(conn, actor, action, target, details or {})
            except IntegrityError:
                continue  # another writer took this seq; PostgreSQL gives no BEGIN IMMEDIATE
        raise RuntimeError(f"audit chain {self.chain!r}: could not append under contention")

    def _append(self, conn: Connection, actor: str, action: str, target: str,
                details: Mapping[str, Detail]) -> AuditEntry:
        head = conn.execute(
            select(self._head.c.seq, self._head.c.hash).where(self._head.c.chain == self.chain)
        ).first()
        seq, prev = (head.seq + 1, head.hash) if head else (1, GENESIS)
        at = datetime.now(UTC)
        encoded = json.dumps(dict(details), sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False)
        digest = entry_hash(self._key, prev, self.chain, seq, at, actor, action, target,
                            encoded)
        conn.execute(insert(self._log).values(
            chain=self.chain, seq=seq, at=at, actor=actor, action=action, target=target,
            details=encoded, prev_hash=prev, hash=digest,
        ))
        if head:
            moved = conn.execute(
                update(self._head)
                .where(self._head.c.chain == self.chain, self._head.c.seq == head.seq)
                .values(seq=seq, hash=digest)
            )
            if moved.rowcount != 1:
                raise IntegrityError("audit head moved", None, Exception("concurrent append"))
        else:
            conn.execute(insert(self._head).values(chain=self.chain, seq=seq, hash=digest))
        return AuditEntry(self.chain, seq, at, actor, action, target, dict(details), prev, digest)

    def content_read(self, actor: str, kind: str, target: str) -> AuditEntry:
        """Record that `actor` read the content of `target` (a conversation, a file): ids and
        the kind of object only, never the content or its title."""
        return self.append(actor, CONTENT_READ, target, {"kind": kind})

    def entries(self, since: datetime | None = None) -> Iterator[AuditEntry]:
        """The chain's entries in order (from `since` on, when given), streamed."""
        query = select(self._log).where(self._log.c.chain == self.chain)
        if since is not None:
            query = query.where(self._log.c.at >= _for_column(self._engine, since))
        with self._engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=_BATCH).execute(
                query.order_by(self._log.c.seq))
            for row in rows:
                yield _entry(row)

    def entry(self, seq: int) -> AuditEntry | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(self._log).where(self._log.c.chain == self.chain,
                                                       self._log.c.seq == seq)).first()
        return None if row is None else _entry(row)

    def verify(self) -> AuditProblem | None:
        """The first broken entry of the chain, or None when it is intact."""
        return self.check().problem

    def check(self) -> ChainCheck:
        """Walk the chain: its first broken entry, and the last entry that verified."""
        expected_seq, prev = 1, GENESIS

        def found(problem: AuditProblem | None) -> ChainCheck:
            return ChainCheck(problem, expected_seq - 1, prev)

        with self._engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=_BATCH).execute(
                select(self._log).where(self._log.c.chain == self.chain).order_by(self._log.c.seq)
            )
            for row in rows:
                if row.seq != expected_seq:
                    return found(AuditProblem(self.chain, expected_seq,
                                              f"missing (the next entry is {row.seq})"))
                if row.prev_hash != prev:
                    return found(AuditProblem(self.chain, row.seq,
                                              "does not follow the entry before it "
                                              "(removed or reordered)"))
                recomputed = entry_hash(self._key, prev, row.chain, row.seq, row.at, row.actor,
                                        row.action, row.target, row.details)
                if recomputed != row.hash:
                    return found(AuditProblem(self.chain, row.seq,
                                              "altered (its hash does not match)"))
                prev, expected_seq = row.hash, row.seq + 1
            rows.close()
            head = conn.execute(
                select(self._head.c.seq, self._head.c.hash).where(self._head.c.chain == self.chain)
            ).first()
        last = expected_seq - 1
        if head is None:
            return found(None if last == 0
                         else AuditProblem(self.chain, last, "chain head is missing"))
        if head.seq != last or head.hash != prev:
            if head.seq > last:
                return found(AuditProblem(self.chain, last + 1,
                                          f"missing (the chain ended at {head.seq})"))
            return found(AuditProblem(self.chain, head.seq,
                                      "the chain head does not match the entries"))
        return found(None)


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(row.chain, row.seq, _utc(row.at), row.actor, row.action, row.target,
                      json.loads(row.details), row.prev_hash, row.hash)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _for_column(engine: Engine, at: datetime) -> datetime:
    """`at` as the `at` column compares: SQLite keeps naive UTC text, PostgreSQL a timestamptz."""
    at = _utc(at)
    return at.replace(tzinfo=None) if engine.dialect.name == "sqlite" else at
