"""Admin keys (`da-…`): made and revoked by the command line, audited in the directory's
chain, kept only as a keyed hash, refused once revoked. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text

from domicile.config import load_settings
from domicile.site import Site
from domicile.tenancy.directory import DIRECTORY_CHAIN
from domicile.tenancy.models import AdminKey
from tests.admin_api.conftest import admin_keys
from tests.conftest import SiteFactory

DOMICILE = str(Path(sys.executable).parent / "domicile")


def _domicile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOMICILE, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_key_authenticates_until_revoked_and_both_are_audited(
        make_site: SiteFactory, backend: str) -> None:
    site = make_site(backend)
    keys = admin_keys(site)
    created = keys.create("deploy bot")
    assert created.id.startswith("adk_") and created.secret.startswith("da-")
    assert created.secret not in repr(created)
    grant = keys.authenticate(created.secret)
    assert grant is not None and grant.key_id == created.id

    assert keys.authenticate(created.secret + "x") is None
    assert keys.authenticate("dk-eu-" + created.secret[3:]) is None  # not an admin key
    keys.revoke(created.id)
    keys.revoke(created.id)  # idempotent: audited once
    assert keys.authenticate(created.secret) is None

    entries = [(e.actor, e.action, e.target) for e in site.directory_audit.entries()]
    assert entries[-2:] == [("cli", "admin_key.create", created.id),
                            ("cli", "admin_key.revoke", created.id)]
    assert site.directory_audit.verify() is None


def test_the_secret_is_kept_only_as_a_keyed_hash(make_site: SiteFactory) -> None:
    site = make_site("sqlite")
    created = admin_keys(site).create("ci")
    with site.directory_engine.connect() as conn:
        row = conn.execute(select(AdminKey).where(AdminKey.id == created.id)).one()
    assert created.secret not in json.dumps([str(value) for value in row])
    assert row.hint == created.secret[:8]
    database = Path(site.settings.directory.database_url.removeprefix("sqlite:///"))
    site.close()
    stored = b"".join(path.read_bytes() for path in database.parent.glob(database.name + "*"))
    assert created.secret.encode() not in stored


def test_a_key_row_is_never_deleted(make_site: SiteFactory, backend: str) -> None:
    """Its id names audit entries: the database refuses a DELETE (and TRUNCATE)."""
    site = make_site(backend)
    created = admin_keys(site).create("ci")
    with pytest.raises(Exception, match="never deleted"):
        with site.directory_engine.begin() as conn:
            conn.execute(delete(AdminKey).where(AdminKey.id == created.id))
    if backend == "postgresql":
        with pytest.raises(Exception, match="never deleted"):
            with site.directory_engine.begin() as conn:
                conn.execute(text("TRUNCATE admin_keys CASCADE"))
    assert admin_keys(site).authenticate(created.secret) is not None


def test_the_command_line_creates_lists_and_revokes_admin_keys(
        make_site: SiteFactory) -> None:
    site = make_site("sqlite")
    config = str(site.settings.config_path)
    made = _domicile("admin-key", "create", "--name", "terraform", "--config", config, "--json")
    assert made.returncode == 0, made.stderr
    payload = json.loads(made.stdout)
    assert payload["id"].startswith("adk_") and payload["key"].startswith("da-")
    assert payload["name"] == "terraform"

    listed = _domicile("admin-key", "list", "--config", config, "--json")
    rows = json.loads(listed.stdout)["admin_keys"]
    assert [row["id"] for row in rows] == [payload["id"]]
    assert payload["key"] not in listed.stdout

    revoked = _domicile("admin-key", "revoke", payload["id"], "--config", config, "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked"] is True
    reopened = Site(load_settings(site.settings.config_path))
    assert admin_keys(reopened).authenticate(payload["key"]) is None
    actions = [(e.action, e.target) for e in reopened.audit_log(DIRECTORY_CHAIN).entries()]
    assert actions[-2:] == [("admin_key.create", payload["id"]),
                            ("admin_key.revoke", payload["id"])]
    reopened.close()

    unknown = _domicile("admin-key", "revoke", "adk_nope", "--config", config, "--json")
    assert unknown.returncode == 2
    assert json.loads(unknown.stderr)["error"]["code"] == "not_found"
    empty = _domicile("admin-key", "create", "--name", "  ", "--config", config, "--json")
    assert empty.returncode == 2
