"""Customer-managed keys end to end (the EKM promise): a region whose KEK is in AWS KMS
(moto's server mode, an emulator, behind `tests/crypto/kms_proxy.py`, which adds the key-state
rule moto skips), a tenant given its own KMS key with `domicile keys set-tenant-kek`; the
customer disables that key and the tenant's content no longer opens, while another tenant's
still does; the customer enables it again and it opens again."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from domicile.config import load_settings
from domicile.crypto.keystore import ManagedKeyProvider
from domicile.crypto.wrapping import TenantKeyRefused
from domicile.site import Site
from domicile.storage.interfaces import TenantRef
from tests.conftest import SiteFactory
from tests.crypto.kms_proxy import KmsStateProxy
from tests.gateway.support import LoopThread, ServedApp
from tests.services import MotoServer


@dataclass
class KmsSite:
    site: Site
    config: Path
    kms: Any
    proxy: KmsStateProxy
    moto: MotoServer


@pytest.fixture
def kms_site(make_site: SiteFactory, moto: MotoServer, kms_key: str) -> Iterator[KmsSite]:
    """A site whose region eu wraps its data keys with KMS (through the proxy), keystore in
    a SQLite file, no key cache (key_cache_s = 0: a KMS refusal is seen on the next read)."""
    kms = moto.client("kms")
    with KmsStateProxy(moto.endpoint_url, kms) as proxy:
        config = make_site().settings.config_path
        body = config.read_text()
        local = 'key_provider = { kind = "local", path = "eu/kek.key" }'
        assert local in body
        config.write_text(body.replace(local, (
            f'key_provider = {{ kind = "aws-kms", key_id = "{kms_key}", '
            f'region = "{moto.region}", endpoint_url = "{proxy.endpoint_url}" }}\n'
            'keystore_url = "sqlite:///eu/keys.db"\n'
            "key_cache_s = 0")))
        site = Site(load_settings(config))
        try:
            yield KmsSite(site, config, kms, proxy, moto)
        finally:
            site.close()


def run_cli(*args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from domicile.cli.main import app

    done = CliRunner(env={"DOMICILE_CONFIG": None}).invoke(app, list(args))
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return done.exit_code, done.stdout, done.stderr


def managed_keys(site: Site) -> ManagedKeyProvider:
    keys = site.store("eu").keys
    assert isinstance(keys, ManagedKeyProvider)
    return keys


def key_uuid(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def test_a_disabled_customer_key_locks_its_tenant_only(kms_site: KmsSite) -> None:
    site, kms = kms_site.site, kms_site.kms
    org = site.directory.create_org("Acme")
    owner = site.directory.create_project(org.id, "customer", "eu", retention="regional")
    other = site.directory.create_project(org.id, "neighbour", "eu", retention="regional")
    store = site.store("eu")
    tenant, neighbour = (TenantRef(p.id, "eu", org.id) for p in (owner, other))
    store.put_record(tenant, "note", "before", b"sealed before the tenant had its own key")

    cmk = kms_site.moto.kms_key()
    code, out, err = run_cli("keys", "set-tenant-kek", "--region", "eu", "--tenant", owner.id,
                             "--kek-id", cmk, "--config", str(kms_site.config), "--json")
    assert code == 0, err
    assert json.loads(out) == {"region": "eu", "tenant": owner.id, "kek_id": cmk,
                               "data_keys_rewrapped": 1}
    with sqlite3.connect(kms_site.config.parent / "eu" / "keys.db") as keystore:
        wrapped_under = dict(keystore.execute("SELECT tenant, kek_id FROM data_keys"))
    assert wrapped_under == {owner.id: cmk, other.id: managed_keys(site).wrapper.kek_id}

    audited = [e for e in store.audit.entries() if e.action == "tenant_kek.set"]
    assert [(e.actor, e.details) for e in audited] == [
        ("cli", {"tenant": owner.id, "kek_id": cmk, "data_keys_rewrapped": 1})]
    store.put_record(tenant, "note", "after", b"sealed under the customer's key")
    store.put_record(neighbour, "note", "n", b"the neighbour's")

    kms.disable_key(KeyId=key_uuid(cmk))
    for record in ("before", "after"):
        with pytest.raises(TenantKeyRefused) as refused:  # a DecryptionError that says why
            store.get_record(tenant, "note", record)
        assert refused.value.status == 403 and refused.value.code == "tenant_key_refused"
        assert cmk not in str(refused.value)
    with pytest.raises(TenantKeyRefused):  # nothing new is sealed for it either
        store.put_record(tenant, "note", "while-disabled", b"refused")
    assert store.get_record(neighbour, "note", "n") == b"the neighbour's"
    store.put_record(neighbour, "note", "n2", b"the neighbour writes on")

    kms.enable_key(KeyId=key_uuid(cmk))
    assert store.get_record(tenant, "note", "before") == (
        b"sealed before the tenant had its own key")
    assert store.get_record(tenant, "note", "after") == b"sealed under the customer's key"


def test_set_tenant_kek_refuses_what_it_cannot_honour(kms_site: KmsSite) -> None:
    site, kms, config = kms_site.site, kms_site.kms, str(kms_site.config)
    org = site.directory.create_org("Acme")
    owner = site.directory.create_project(org.id, "customer", "eu", retention="regional")
    base = ("keys", "set-tenant-kek", "--config", config, "--json")

    disabled = kms_site.moto.kms_key()
    kms.disable_key(KeyId=key_uuid(disabled))
    code, out, err = run_cli(*base, "--region", "eu", "--tenant", owner.id,
                             "--kek-id", disabled)
    assert code == 2 and "DisabledException" in err, err
    assert managed_keys(site).tenant_kek(owner.id) is None

    code, _, err = run_cli(*base, "--region", "eu", "--tenant", owner.id, "--kek-id",
                           "arn:aws:kms:us-east-1:123456789012:key/"
                           "11111111-2222-3333-4444-555555555555")
    assert code == 2 and "must be in eu-central-1" in err, err

    code, _, err = run_cli(*base, "--region", "eu", "--tenant", "proj_nobody", "--kek-id",
                           kms_site.moto.kms_key())
    assert code == 2 and "proj_nobody has no data key" in err, err

    code, _, err = run_cli(*base, "--region", "eu", "--tenant", owner.id)
    assert code == 2 and "--kek-id KEY or --clear" in err, err

    # Region us keeps its KEK in a local file: no per-tenant keys there.
    us_project = site.directory.create_project(org.id, "us-app", "us", retention="regional")
    code, _, err = run_cli(*base, "--region", "us", "--tenant", us_project.id, "--kek-id",
                           kms_site.moto.kms_key())
    assert code == 2 and "aws-kms or vault-transit" in err, err

    cmk = kms_site.moto.kms_key()
    assert run_cli(*base, "--region", "eu", "--tenant", owner.id, "--kek-id", cmk)[0] == 0
    code, out, err = run_cli(*base, "--region", "eu", "--tenant", owner.id, "--clear")
    assert code == 0, err
    assert json.loads(out)["kek_id"] is None
    assert managed_keys(site).tenant_kek(owner.id) is None


def test_an_api_caller_is_told_why_its_file_does_not_open(kms_site: KmsSite) -> None:
    """Through the gateway: the owner's file answers 403 `tenant_key_refused` while its key is
    disabled (not a 500), the neighbour's file 200; enabled again, 200."""
    from domicile.gateway import create_gateway_app

    site, kms = kms_site.site, kms_site.kms
    org = site.directory.create_org("Acme")
    projects = [site.directory.create_project(org.id, name, "eu", retention="regional")
                for name in ("customer", "neighbour")]
    owner_key, neighbour_key = (site.directory.create_api_key(p.id).secret for p in projects)
    cmk = kms_site.moto.kms_key()
    code, _, err = run_cli("keys", "set-tenant-kek", "--region", "eu", "--tenant",
                           projects[0].id, "--kek-id", cmk, "--config", str(kms_site.config))
    assert code == 0, err
    store = site.store("eu")
    app = create_gateway_app(site.settings, "eu", authenticator=site.directory,
                             usage_sink=store, content_store=store, providers=[])
    loop = LoopThread()
    served = ServedApp(loop, app)
    try:
        with httpx.Client(base_url=served.url, timeout=30) as client:
            def upload(key: str, text: bytes) -> str:
                made = client.post("/v1/files", headers={"Authorization": f"Bearer {key}"},
                                   data={"purpose": "user_data"},
                                   files={"file": ("notes.txt", text, "text/plain")})
                assert made.status_code == 200, made.text
                return str(made.json()["id"])

            def content(key: str, file_id: str) -> httpx.Response:
                return client.get(f"/v1/files/{file_id}/content",
                                  headers={"Authorization": f"Bearer {key}"})

            owned = upload(owner_key, b"the customer's notes")
            neighbours = upload(neighbour_key, b"the neighbour's notes")
            kms.disable_key(KeyId=key_uuid(cmk))
            refused = content(owner_key, owned)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "tenant_key_refused"
            assert cmk not in refused.text
            assert content(neighbour_key, neighbours).content == b"the neighbour's notes"
            kms.enable_key(KeyId=key_uuid(cmk))
            opened = content(owner_key, owned)
            assert (opened.status_code, opened.content) == (200, b"the customer's notes")
    finally:
        served.stop()
        loop.close()
