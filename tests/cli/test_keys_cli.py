"""`domicile keys rotate-data`: tenants' data keys rotate, old content stays readable, new
content is sealed under the new key, and the rotation is in the region's audit chain."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from domicile.config import load_settings
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from tests.cli.conftest import Cli


@dataclass
class Tenants:
    first: TenantRef
    second: TenantRef


@pytest.fixture
def tenants(cli: Cli, site_config: str) -> Tenants:
    org = cli("org", "create", "--name", "Acme", "--config", site_config, "--json").json
    made = []
    for name in ("p", "q"):
        project = cli("project", "create", "--org", org["id"], "--name", name, "--region", "eu",
                      "--retention", "regional", "--config", site_config, "--json").json
        made.append(TenantRef(project["id"], "eu", org["id"]))
    return Tenants(*made)


@pytest.fixture
def open_site(site_config: str) -> Iterator[Callable[[], Site]]:
    """A fresh `Site` per call (a new process's view); all closed at the end."""
    opened: list[Site] = []

    def _open() -> Site:
        site = Site(load_settings(site_config))
        opened.append(site)
        return site

    yield _open
    for site in opened:
        site.close()


def key_id_of(sealed: bytes) -> str:
    return sealed[2 : 2 + sealed[1]].decode("ascii")


def sealed_body(site: Site, tenant: TenantRef, record_id: str) -> bytes:
    from domicile.storage.models import RecordRow

    with site.store("eu").engine.connect() as conn:
        body = conn.scalar(RecordRow.__table__.select().with_only_columns(RecordRow.body).where(
            RecordRow.tenant_id == tenant.id, RecordRow.record_id == record_id))
    assert body is not None
    return bytes(body)


def test_rotating_one_tenants_data_key_keeps_its_content_readable(
    cli: Cli, site_config: str, tenants: Tenants, open_site: Callable[[], Site]
) -> None:
    site = open_site()
    site.store("eu").put_record(tenants.first, "note", "n1", b"kept across rotation")
    site.store("eu").put_record(tenants.second, "note", "n1", b"other tenant")
    old_first = key_id_of(sealed_body(site, tenants.first, "n1"))
    old_second = key_id_of(sealed_body(site, tenants.second, "n1"))

    result = cli("keys", "rotate-data", "--region", "eu", "--tenant", tenants.first.id,
                 "--config", site_config, "--json")

    assert result.code == 0, result.stderr
    assert result.json == {"region": "eu", "tenant": tenants.first.id, "tenants_rotated": 1}
    after = open_site()
    store = after.store("eu")
    assert store.get_record(tenants.first, "note", "n1") == b"kept across rotation"
    store.put_record(tenants.first, "note", "n2", b"new")
    store.put_record(tenants.second, "note", "n2", b"new")
    assert key_id_of(sealed_body(after, tenants.first, "n2")) != old_first
    assert key_id_of(sealed_body(after, tenants.second, "n2")) == old_second  # not rotated
    entry = list(store.audit.entries())[-1]
    assert (entry.actor, entry.action, entry.target) == ("cli", "data_key.rotate", "eu")
    assert dict(entry.details) == {"tenant": tenants.first.id, "tenants_rotated": 1}


def test_rotating_a_regions_data_keys_rotates_every_tenant(
    cli: Cli, site_config: str, tenants: Tenants, open_site: Callable[[], Site]
) -> None:
    site = open_site()
    for tenant in (tenants.first, tenants.second):
        site.store("eu").put_record(tenant, "note", "n1", b"before")
    old = {t.id: key_id_of(sealed_body(site, t, "n1")) for t in (tenants.first, tenants.second)}

    result = cli("keys", "rotate-data", "--region", "eu", "--config", site_config, "--json")

    assert result.code == 0, result.stderr
    assert result.json["tenants_rotated"] >= 2
    after = open_site()
    for tenant in (tenants.first, tenants.second):
        assert after.store("eu").get_record(tenant, "note", "n1") == b"before"
        after.store("eu").put_record(tenant, "note", "n2", b"after")
        assert key_id_of(sealed_body(after, tenant, "n2")) != old[tenant.id]
    entry = list(after.store("eu").audit.entries())[-1]
    assert entry.action == "data_key.rotate"
    assert entry.details["tenants_rotated"] == result.json["tenants_rotated"]
    assert "tenant" not in entry.details


def test_rotating_an_unknown_tenant_is_exit_2_and_not_audited(
    cli: Cli, site_config: str, open_site: Callable[[], Site]
) -> None:
    result = cli("keys", "rotate-data", "--region", "eu", "--tenant", "nobody",
                 "--config", site_config, "--json")
    assert result.code == 2 and "nobody" in result.stderr and "Traceback" not in result.stderr
    site = open_site()
    assert all(e.action != "data_key.rotate" for e in site.store("eu").audit.entries())
