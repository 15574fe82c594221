"""G8: the audit chain detects any entry altered, removed or reordered, and a cut tail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from domicile.compliance.audit import CONTENT_READ, GENESIS
from domicile.site import Site
from tests.compliance.tampering import attack
from tests.compliance.tampering import tamper as tamper_engine


@pytest.fixture
def audited(site: Site) -> Site:
    for index in range(5):
        site.store("eu").audit.append("cli", "test.action", f"obj_{index}", {"n": index})
    assert site.store("eu").audit.verify() is None
    return site


def tamper(site: Site, *statements: str) -> None:
    """Go around the database's append-only triggers, as an attacker with file access would."""
    tamper_engine(site.store("eu").engine, *statements)


def test_database_refuses_to_change_or_delete_an_entry(audited: Site) -> None:
    engine = audited.store("eu").engine
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert audited.store("eu").audit.verify() is None


def test_altered_entry_is_named(audited: Site) -> None:
    tamper(audited, "UPDATE audit_log SET target = 'obj_x' WHERE seq = 3")
    problem = audited.store("eu").audit.verify()
    assert problem is not None and problem.seq == 3 and "altered" in problem.reason


def test_removed_entry_is_named(audited: Site) -> None:
    tamper(audited, "DELETE FROM audit_log WHERE seq = 2")
    problem = audited.store("eu").audit.verify()
    assert problem is not None and problem.seq == 2


def test_reordered_entries_are_detected(audited: Site) -> None:
    tamper(audited, "UPDATE audit_log SET seq = 100 WHERE seq = 2",
           "UPDATE audit_log SET seq = 2 WHERE seq = 3",
           "UPDATE audit_log SET seq = 3 WHERE seq = 100")
    problem = audited.store("eu").audit.verify()
    assert problem is not None and problem.seq == 2


def test_cut_tail_is_detected(audited: Site) -> None:
    tamper(audited, "DELETE FROM audit_log WHERE seq = 5")
    problem = audited.store("eu").audit.verify()
    assert problem is not None and problem.seq == 5


def test_chains_are_per_region(audited: Site) -> None:
    assert len(list(audited.store("eu").audit.entries())) == 5
    assert list(audited.store("us").audit.entries()) == []


def test_a_chain_rebuilt_without_the_site_secret_is_detected(audited: Site) -> None:
    """The attacker alters entry 2 and recomputes every later hash and the head, as a plain
    SHA-256 chain would let them; without the site secret the MACs cannot match."""
    import hashlib
    import json

    from domicile.compliance.audit import GENESIS

    store = audited.store("eu")
    entries = list(store.audit.entries())
    prev, statements = GENESIS, []
    for entry in entries:
        actor = "mallory" if entry.seq == 2 else entry.actor
        canonical = json.dumps(
            [prev, entry.chain, entry.seq, entry.at.isoformat(timespec="microseconds"), actor,
             entry.action, entry.target,
             json.dumps(dict(entry.details), sort_keys=True, separators=(",", ":"))],
            separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        statements.append(f"UPDATE audit_log SET actor = '{actor}', prev_hash = '{prev}', "
                          f"hash = '{digest}' WHERE seq = {entry.seq}")
        prev = digest
    statements.append(f"UPDATE audit_head SET hash = '{prev}'")
    tamper(audited, *statements)
    problem = store.audit.verify()
    assert problem is not None and problem.seq == 1  # not one entry verifies any more


def test_the_audit_key_is_derived_from_the_site_secret(audited: Site) -> None:
    from domicile.compliance.audit import audit_key

    key = audit_key(audited.site_secret)
    assert key != audited.site_secret and len(key) == 32
    assert key.hex() not in repr(audited.store("eu").audit)
    assert str(key) not in repr(audited.store("eu").audit)


def test_check_names_the_last_entry_that_verified(audited: Site) -> None:
    log = audited.store("eu").audit
    entries = list(log.entries())
    walked = log.check()
    assert (walked.problem, walked.seq, walked.hash) == (None, 5, entries[-1].hash)
    tamper(audited, "UPDATE audit_log SET target = 'obj_x' WHERE seq = 4")
    walked = log.check()
    assert walked.problem is not None and walked.problem.seq == 4
    assert (walked.seq, walked.hash) == (3, entries[2].hash)
    empty = audited.store("us").audit.check()
    assert (empty.problem, empty.seq, empty.hash) == (None, 0, GENESIS)


@pytest.mark.parametrize("name", ["truncated", "deleted_whole_chain"])
def test_a_rewound_or_deleted_chain_alone_looks_intact(audited: Site, name: str) -> None:
    """What the head cannot catch, and why receipts exist (tests/compliance/test_receipts.py)."""
    statements, _ = attack(name, "eu")
    tamper(audited, *statements)
    assert audited.store("eu").audit.verify() is None


def test_entry_and_entries_since(audited: Site) -> None:
    log = audited.store("eu").audit
    entries = list(log.entries())
    assert log.entry(3) == entries[2] and log.entry(6) is None
    assert all(entry.at.tzinfo is UTC for entry in entries)
    assert [e.seq for e in log.entries(entries[3].at)] == [4, 5]
    naive = entries[3].at.replace(tzinfo=None)  # taken as UTC
    assert [e.seq for e in log.entries(naive)] == [4, 5]
    later = log.entries(entries[-1].at + timedelta(microseconds=1))
    assert list(later) == []
    assert len(list(log.entries(datetime(2000, 1, 1, tzinfo=UTC)))) == 5


def test_content_read_records_ids_and_kind_only(audited: Site) -> None:
    log = audited.store("eu").audit
    entry = log.content_read("user_1", "conversation", "conv_1")
    assert (entry.seq, entry.actor, entry.action, entry.target, dict(entry.details)) == (
        6, "user_1", CONTENT_READ, "conv_1", {"kind": "conversation"})
    assert log.verify() is None
