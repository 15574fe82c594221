"""Customer-managed keys end to end (the EKM promise): a region whose KEK is in AWS KMS
(moto's server mode, an emulator, behind `tests/crypto/kms_proxy.py`, which adds the key-state
rule moto skips), a tenant given its own KMS key with `domicile keys set-tenant-kek`; the
customer disables that key and the tenant's content no longer opens, while another tenant's
still does; the customer enables it again and it opens again. The region's own KEK refused,
or a KMS that does not answer, is the region's fault: 503 `key_service_unavailable` for every
tenant, never a 500 nor a tenant's 403."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from domicile.config import load_settings
from domicile.crypto.keystore import ManagedKeyProvider
from domicile.crypto.wrapping import TenantKeyRefused
from domicile.observability.metrics import REGISTRY
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


def fail_closed(reason: str) -> float:
    return REGISTRY.get_sample_value(
        "domicile_fail_closed_total", {"region": "eu", "reason": reason}) or 0.0


@contextlib.contextmanager
def gateway_of(site: Site) -> Iterator[httpx.Client]:
    """Region eu's gateway over `site`, served on loopback; a client of it."""
    from domicile.gateway import create_gateway_app

    store = site.store("eu")
    app = create_gateway_app(site.settings, "eu", authenticator=site.directory,
                             usage_sink=store, content_store=store, providers=[])
    loop = LoopThread()
    served = ServedApp(loop, app)
    try:
        with httpx.Client(base_url=served.url, timeout=60) as client:
            yield client
    finally:
        served.stop()
        loop.close()


def upload(client: httpx.Client, key: str, text: bytes) -> str:
    made = client.post("/v1/files", headers={"Authorization": f"Bearer {key}"},
                       data={"purpose": "user_data"},
                       files={"file": ("notes.txt", text, "text/plain")})
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


def content(client: httpx.Client, key: str, file_id: str) -> httpx.Response:
    return client.get(f"/v1/files/{file_id}/content",
                      headers={"Authorization": f"Bearer {key}"})


def assert_key_service_unavailable(answer: httpx.Response, *hidden: str) -> None:
    """The one error shape: 503 `key_service_unavailable`, `retry-after`, no KMS detail."""
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "key_service_unavailable"
    assert answer.json()["error"]["type"] == "server_error"
    assert int(answer.headers["retry-after"]) > 0
    for word in hidden:
        assert word not in answer.text


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
    disabled (not a 500), counted as a fail-closed refusal; the neighbour's file 200; enabled
    again, 200."""
    site, kms = kms_site.site, kms_site.kms
    org = site.directory.create_org("Acme")
    projects = [site.directory.create_project(org.id, name, "eu", retention="regional")
                for name in ("customer", "neighbour")]
    owner_key, neighbour_key = (site.directory.create_api_key(p.id).secret for p in projects)
    cmk = kms_site.moto.kms_key()
    code, _, err = run_cli("keys", "set-tenant-kek", "--region", "eu", "--tenant",
                           projects[0].id, "--kek-id", cmk, "--config", str(kms_site.config))
    assert code == 0, err
    with gateway_of(site) as client:
        owned = upload(client, owner_key, b"the customer's notes")
        neighbours = upload(client, neighbour_key, b"the neighbour's notes")
        kms.disable_key(KeyId=key_uuid(cmk))
        before = fail_closed("tenant_key_refused")
        refused = content(client, owner_key, owned)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "tenant_key_refused"
        assert cmk not in refused.text
        assert fail_closed("tenant_key_refused") - before == 1
        assert content(client, neighbour_key, neighbours).content == b"the neighbour's notes"
        kms.enable_key(KeyId=key_uuid(cmk))
        opened = content(client, owner_key, owned)
        assert (opened.status_code, opened.content) == (200, b"the customer's notes")


def test_the_regions_own_key_refused_is_503_for_every_tenant(kms_site: KmsSite) -> None:
    """The region's KMS key disabled (as an expired Vault token or a wrong IAM policy refuses
    it): every tenant's file answers 503 `key_service_unavailable`, counted as a fail-closed
    refusal; none is told that its own key was refused. Enabled again: 200."""
    site, kms = kms_site.site, kms_site.kms
    org = site.directory.create_org("Acme")
    projects = [site.directory.create_project(org.id, name, "eu", retention="regional")
                for name in ("one", "two")]
    keys = [site.directory.create_api_key(p.id).secret for p in projects]
    region_kek = managed_keys(site).wrapper.kek_id
    with gateway_of(site) as client:
        files = [upload(client, key, b"notes of " + key.encode()) for key in keys]
        before = fail_closed("key_service_unavailable")
        kms.disable_key(KeyId=key_uuid(region_kek))
        for key, file_id in zip(keys, files, strict=True):
            assert_key_service_unavailable(content(client, key, file_id),
                                           region_kek, key_uuid(region_kek))
        assert fail_closed("key_service_unavailable") - before == 2
        kms.enable_key(KeyId=key_uuid(region_kek))
        for key, file_id in zip(keys, files, strict=True):
            assert content(client, key, file_id).content == b"notes of " + key.encode()


def test_a_kms_that_does_not_answer_is_503_not_500(kms_site: KmsSite) -> None:
    """A second process of the site whose KMS endpoint is a closed loopback port (a socket
    bound but not listening: connections are refused) serves a file stored through the
    first: 503 `key_service_unavailable` with `retry-after`, not 500 `internal_error`."""
    site = kms_site.site
    org = site.directory.create_org("Acme")
    project = site.directory.create_project(org.id, "customer", "eu", retention="regional")
    key = site.directory.create_api_key(project.id).secret
    with gateway_of(site) as client:
        file_id = upload(client, key, b"the customer's notes")

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        down_config = kms_site.config.with_name("domicile-kms-down.toml")
        body = kms_site.config.read_text()
        assert kms_site.proxy.endpoint_url in body
        down_config.write_text(body.replace(kms_site.proxy.endpoint_url, closed_url))
        down_site = Site(load_settings(down_config))
        try:
            before = fail_closed("key_service_unavailable")
            with gateway_of(down_site) as client:
                assert_key_service_unavailable(content(client, key, file_id), closed_url)
            assert fail_closed("key_service_unavailable") - before == 1
        finally:
            down_site.close()


def test_rotating_data_keys_names_a_tenant_whose_own_key_is_refused(
    kms_site: KmsSite
) -> None:
    """`domicile keys rotate-data`: a tenant whose own key is disabled is a clear error that
    names it (the others rotate, audited), not skipped as if erased; `--tenant` of it says the
    same, not "has no data key"."""
    site, kms, config = kms_site.site, kms_site.kms, str(kms_site.config)
    org = site.directory.create_org("Acme")
    owner, other = (site.directory.create_project(org.id, name, "eu", retention="regional")
                    for name in ("customer", "neighbour"))
    cmk = kms_site.moto.kms_key()
    assert run_cli("keys", "set-tenant-kek", "--region", "eu", "--tenant", owner.id,
                   "--kek-id", cmk, "--config", config)[0] == 0
    kms.disable_key(KeyId=key_uuid(cmk))
    rotate: Callable[..., tuple[int, str, str]] = lambda *more: run_cli(  # noqa: E731
        "keys", "rotate-data", "--region", "eu", "--config", config, *more)

    code, out, err = rotate("--json")
    assert code == 1, (out, err)
    error = json.loads(err)["error"]
    assert error["code"] == "tenant_key_refused" and owner.id in error["message"]
    assert other.id not in error["message"] and cmk not in error["message"]
    with sqlite3.connect(kms_site.config.parent / "eu" / "keys.db") as keystore:
        latest = dict(keystore.execute(
            "SELECT tenant, MAX(version) FROM data_keys GROUP BY tenant"))
    assert latest == {owner.id: 1, other.id: 2}
    audited = [e.details for e in site.store("eu").audit.entries()
               if e.action == "data_key.rotate"]
    assert audited == [{"tenants_rotated": 1, "tenants_refused": 1}]

    code, _, err = rotate("--tenant", owner.id)
    assert code == 1 and owner.id in err and "refused" in err and "no data key" not in err, err


async def test_the_workspace_api_answers_503_too(kms_site: KmsSite) -> None:
    """The same refusal through the workspace API (its own fault mapping): a conversation
    read answers 503 `key_service_unavailable` while the region's KMS key is disabled."""
    from domicile.inference.routing import ModelRouter
    from domicile.tenancy.grants import MemberGrant
    from domicile.workspace_web.app import create_workspace_app
    from domicile.workspace_web.services import build_workspace_services

    site, kms = kms_site.site, kms_site.kms
    org = site.directory.create_org("Acme").id
    workspace = site.directory.create_workspace(org, "Team", "eu")
    user = site.directory.add_user(workspace.id, "ada@example.com", "member",
                                   "correct horse battery staple")
    token = site.directory.create_token(workspace.id, user.id).secret
    services = build_workspace_services(site, "eu", ModelRouter("eu", []))
    member = MemberGrant(workspace.id, org, user.id, "eu", "member")
    conversation = services.conversations.create(member, title="Plans")
    region_kek = managed_keys(site).wrapper.kek_id
    transport = httpx.ASGITransport(create_workspace_app(services))
    async with httpx.AsyncClient(transport=transport,
                                 base_url=site.settings.region("eu").public_url,
                                 headers={"authorization": f"Bearer {token}"}) as http:
        path = f"/workspace/api/conversations/{conversation.id}"
        kms.disable_key(KeyId=key_uuid(region_kek))
        assert_key_service_unavailable(await http.get(path), region_kek)
        kms.enable_key(KeyId=key_uuid(region_kek))
        opened = await http.get(path)
        assert opened.status_code == 200 and opened.json()["title"] == "Plans", opened.text
