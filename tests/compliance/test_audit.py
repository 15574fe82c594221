"""G8: the audit chain detects any entry altered, removed or reordered, and a cut tail."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from domicile.site import Site


@pytest.fixture
def audited(site: Site) -> Site:
    for index in range(5):
        site.store("eu").audit.append("cli", "test.action", f"obj_{index}", {"n": index})
    assert site.store("eu").audit.verify() is None
    return site


def tamper(site: Site, *statements: str) -> None:
    """Go around the database's append-only triggers, as an attacker with file access would."""
    engine = site.store("eu").engine
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database or "")
        conn = sqlite3.connect(path)
        conn.execute("DROP TRIGGER audit_log_refuse_update")
        conn.execute("DROP TRIGGER audit_log_refuse_delete")
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()
    else:
        with engine.begin() as c:
            c.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            for statement in statements:
                c.execute(text(statement))


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
