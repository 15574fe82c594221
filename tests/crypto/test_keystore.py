"""The shared keystore (`ManagedKeyProvider`) on a real PostgreSQL database, the local KEK file
wrapper, per-tenant KEKs, and what several processes (replicas) see of one another.

The generic provider behaviour (versions, seal counting, tombstones, shredding through an
envelope) runs against both providers in test_data_keys.py and test_shredding.py."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from domicile.crypto import (
    DecryptionError,
    Envelope,
    KeyFileError,
    KeyNotFound,
    LocalKeyProvider,
    TenantErased,
    write_new_kek,
)
from domicile.crypto import envelope as envelope_module
from domicile.crypto import keys as keys_module
from domicile.crypto.keys import kek_id, wrap_context
from domicile.crypto.keystore import DataKeysNotRotated, LocalFileWrapper, ManagedKeyProvider
from domicile.crypto.wrapping import KekRefused, KeyServiceUnavailable
from tests.crypto.support import context, make_provider
from tests.pgserver import PostgresDatabases

SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters: nothing shared but the DB
DEADLINE_S = 300.0  # generous: the processes start on a loaded machine


def _run_and_report(target: Callable[..., Any], results: Any, args: tuple[Any, ...]) -> None:
    try:
        results.put(("ok", target(*args)))
    except BaseException as exc:  # reported to the test, which fails with it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def in_processes(target: Callable[..., Any], args: tuple[Any, ...], count: int,
                 barrier: Any) -> list[Any]:
    """Run `target(*args, barrier)` in `count` fresh processes; their results."""
    results = SPAWN.Queue()
    processes = [SPAWN.Process(target=_run_and_report, args=(target, results, (*args, barrier)))
                 for _ in range(count)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=DEADLINE_S) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=DEADLINE_S)
    errors = [value for status, value in outcomes if status == "error"]
    assert not errors, errors
    return [value for _, value in outcomes]


def new_kek(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_new_kek(path)
    return path


@pytest.fixture
def keystore(postgres: PostgresDatabases) -> str:
    """A fresh PostgreSQL keystore database (its URL, as config spells it)."""
    return postgres.create("keys")


@pytest.fixture
def kek(tmp_path: Path) -> Path:
    return new_kek(tmp_path / "eu" / "kek.key")


@pytest.fixture
def managed(keystore: str, kek: Path) -> Iterator[Callable[..., ManagedKeyProvider]]:
    """`managed(**limits)`: another replica's provider on the one keystore and KEK file."""
    opened: list[ManagedKeyProvider] = []

    def _open(region: str = "eu", **limits: int) -> ManagedKeyProvider:
        provider = ManagedKeyProvider(region, keystore, LocalFileWrapper(kek), **limits)
        opened.append(provider)
        return provider

    yield _open
    for provider in opened:
        provider.close()


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as db:
            return [tuple(r) for r in db.execute(text(sql))]
    finally:
        engine.dispose()


def key_id_of(sealed: bytes) -> str:
    return sealed[2 : 2 + sealed[1]].decode("ascii")


# -- LocalFileWrapper ---------------------------------------------------------------------------


def test_local_file_wrapper_binds_the_wrap_to_its_context_and_kek(
    kek: Path, tmp_path: Path
) -> None:
    wrapper = LocalFileWrapper(kek)
    assert wrapper.kek_id == kek_id(kek.read_bytes())
    ctx = wrap_context("eu", "ws_a", "k1")
    dek, wrapped = wrapper.generate(wrapper.kek_id, ctx)
    assert len(dek) == 32 and dek not in wrapped
    assert wrapper.unwrap(wrapped, wrapper.kek_id, ctx) == dek
    for moved in (wrap_context("us", "ws_a", "k1"), wrap_context("eu", "ws_b", "k1"),
                  wrap_context("eu", "ws_a", "k2")):
        with pytest.raises(KeyNotFound):
            wrapper.unwrap(wrapped, wrapper.kek_id, moved)
    other = LocalFileWrapper(new_kek(tmp_path / "other.key"))
    with pytest.raises(KeyNotFound, match="not under this key file"):
        other.unwrap(wrapped, wrapper.kek_id, ctx)  # a row of another KEK: refused by id
    with pytest.raises(KeyNotFound):
        other.unwrap(wrapped, other.kek_id, ctx)  # and by the AEAD, were the id wrong
    with pytest.raises(ValueError, match="per-tenant keys"):
        wrapper.kek_for("ws_a", "arn:aws:kms:eu-west-1:1:key/x")
    assert wrapper.kek_for("ws_a", None) == wrapper.kek_id
    assert dek.hex() not in repr(wrapper) and str(kek) in repr(wrapper)


def test_local_file_wrapper_opens_what_the_embedded_keystore_wrapped(tmp_path: Path) -> None:
    """Same wrap format and associated data as `LocalKeyProvider` (one copy of `_wrap_aad`)."""
    local = make_provider(tmp_path)
    key_id = local.create_data_key("ws_a")
    with sqlite3.connect(local.keystore_path) as db:
        wrapped = db.execute("SELECT wrapped FROM data_keys").fetchone()[0]
    wrapper = LocalFileWrapper(local.kek_path)
    assert wrapper.unwrap(wrapped, wrapper.kek_id, wrap_context("eu", "ws_a", key_id)) == \
        local.data_key("ws_a", key_id)
    local.close()


def test_local_file_wrapper_checks_the_key_file(tmp_path: Path, kek: Path) -> None:
    kek.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        LocalFileWrapper(kek)
    short = tmp_path / "short.key"
    short.write_bytes(b"k" * 16)
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="exactly 32 bytes"):
        LocalFileWrapper(short)


# -- opening a shared keystore -------------------------------------------------------------------


def _open_keystore(url: str, kek: str, barrier: Any) -> str:
    barrier.wait()
    provider = ManagedKeyProvider("eu", url, LocalFileWrapper(Path(kek)))
    key = provider.create_data_key("ws_first")
    provider.close()
    return key


def test_processes_opening_and_keying_a_new_keystore_at_once_agree(
    keystore: str, kek: Path
) -> None:
    """Two processes create the schema and the same tenant's first key at the same moment:
    the schema is made once, and both end with the one key."""
    key_ids = in_processes(_open_keystore, (keystore, str(kek)), 2, SPAWN.Barrier(2))
    assert len(set(key_ids)) == 1
    assert rows(keystore, "SELECT key_id, version FROM data_keys") == [(key_ids[0], 1)]
    assert {r[0] for r in rows(keystore, "SELECT tablename FROM pg_tables WHERE "
                                         "schemaname = 'public'")} == {
        "keystore_meta", "data_keys", "tombstones", "tenant_keks"}


def test_a_keystore_of_another_region_or_key_file_is_refused(
    managed: Callable[..., ManagedKeyProvider], keystore: str, tmp_path: Path
) -> None:
    managed().create_data_key("ws_a")
    with pytest.raises(KeyFileError, match="region 'eu', not 'us'"):
        managed("us")
    wrong = LocalFileWrapper(new_kek(tmp_path / "wrong.key"))  # a restore of the wrong file
    with pytest.raises(KeyFileError, match="not the KEK"):
        ManagedKeyProvider("eu", keystore, wrong)


def test_the_repr_names_no_password_and_no_key(keystore: str, kek: Path) -> None:
    scheme, rest = keystore.split("://", 1)
    user, host = rest.split("@", 1) if "@" in rest else ("postgres", rest)
    with_password = f"{scheme}://{user.split(':')[0]}:s3cret-pw@{host}"  # trust auth: ignored
    provider = ManagedKeyProvider("eu", with_password, LocalFileWrapper(kek))
    provider.create_data_key("ws_a")
    key = provider.current_key("ws_a")
    assert "s3cret-pw" not in repr(provider) and host.split("/")[-1] in repr(provider)
    assert key.material.hex() not in repr(key) and str(key.material) not in repr(key)
    assert key.material.hex() not in repr(provider)
    provider.close()


def test_seal_limit_and_block_are_checked(keystore: str, kek: Path) -> None:
    for bad in ({"seal_limit": 0}, {"seal_limit": 2**31}, {"seal_block": 0}):
        with pytest.raises(ValueError, match="seal_"):
            ManagedKeyProvider("eu", keystore, LocalFileWrapper(kek), **bad)


# -- several replicas ----------------------------------------------------------------------------


def _reserve_many(url: str, kek: str, count: int, barrier: Any) -> list[tuple[str, int]]:
    provider = ManagedKeyProvider("eu", url, LocalFileWrapper(Path(kek)), seal_limit=50,
                                  seal_block=7)
    barrier.wait()
    grants = []
    for _ in range(count):
        grant = provider.reserve_seals("ws_a")
        grants.append((grant.key.key_id, grant.seals))
    provider.close()
    return grants


def test_replicas_reserving_seals_at_once_never_take_a_key_past_its_limit(
    managed: Callable[..., ManagedKeyProvider], keystore: str, kek: Path
) -> None:
    """Two processes reserve blocks of 7 under a limit of 50 on one keystore, as fast as
    they can: the blocks handed out per key add up to at most 50 (seven blocks, 49), every
    block is counted in the keystore, and the versions follow each other with no gap."""
    managed().create_data_key("ws_a")
    results = in_processes(_reserve_many, (keystore, str(kek), 60), 2, SPAWN.Barrier(2))
    handed_out: Counter[str] = Counter()
    for grants in results:
        for key_id, seals in grants:
            handed_out[key_id] += seals
    assert sum(handed_out.values()) == 2 * 60 * 7
    assert max(handed_out.values()) <= 50
    stored = {v.key_id: v for v in managed().key_versions("ws_a")}
    assert {k: v.seals_reserved for k, v in stored.items() if v.seals_reserved} == \
        dict(handed_out)
    assert sorted(v.version for v in stored.values()) == list(range(1, len(stored) + 1))
    assert len(stored) >= 2 * 60 // 7


def _create_until_erased(url: str, kek: str, barrier: Any) -> int:
    provider = ManagedKeyProvider("eu", url, LocalFileWrapper(Path(kek)))
    barrier.wait()
    made = 0
    for _ in range(200):
        try:
            provider.create_data_key("ws_gone")
            provider.rotate_data_key("ws_gone")
            made += 1
        except TenantErased:
            break
    provider.close()
    return made


def test_no_replica_makes_a_key_for_a_tenant_another_one_erased(
    managed: Callable[..., ManagedKeyProvider], keystore: str, kek: Path
) -> None:
    """Two processes keep making keys for a tenant while a third erases it: once the erasure
    committed, nobody makes one again (whatever the interleaving, this must hold)."""
    eraser = managed()
    eraser.create_data_key("ws_gone")
    barrier = SPAWN.Barrier(3)
    erasing = threading.Thread(target=lambda: (barrier.wait(), eraser.destroy_tenant("ws_gone")))
    erasing.start()
    made = in_processes(_create_until_erased, (keystore, str(kek)), 2, barrier)
    erasing.join(timeout=DEADLINE_S)
    assert all(n < 200 for n in made)  # each saw the erasure and stopped
    assert rows(keystore, "SELECT key_id FROM data_keys WHERE tenant = 'ws_gone'") == []
    assert rows(keystore, "SELECT tenant FROM tombstones") == [("ws_gone",)]
    with pytest.raises(TenantErased):
        managed().create_data_key("ws_gone")


def test_a_key_asked_for_during_an_erasure_waits_for_it_and_is_refused(
    managed: Callable[..., ManagedKeyProvider], keystore: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving the tenant lock exists for, made deterministic: an erasure is inside
    its transaction (tombstone not yet committed) when another replica asks for the tenant's
    first key. That replica must wait for the erasure and then be refused, not slip a key in
    beside the tombstone."""
    eraser, creator = managed(), managed()
    erasing_inside, finish_erasure = threading.Event(), threading.Event()
    real_now = keys_module._now

    def now_pausing_the_eraser() -> str:  # called by destroy_tenant inside its transaction
        if threading.current_thread().name == "eraser":
            erasing_inside.set()
            assert finish_erasure.wait(DEADLINE_S)
        return real_now()

    monkeypatch.setattr(keys_module, "_now", now_pausing_the_eraser)
    erasure = threading.Thread(target=eraser.destroy_tenant, args=("ws_new",), name="eraser")
    erasure.start()
    assert erasing_inside.wait(DEADLINE_S)
    outcome: list[object] = []

    def create() -> None:
        try:
            outcome.append(creator.create_data_key("ws_new"))
        except Exception as exc:
            outcome.append(exc)

    creation = threading.Thread(target=create)
    creation.start()
    deadline = time.monotonic() + DEADLINE_S
    while creation.is_alive() and not rows(
            keystore, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
        assert time.monotonic() < deadline, "the creator neither finished nor waited"
        time.sleep(0.01)
    finish_erasure.set()
    erasure.join(DEADLINE_S)
    creation.join(DEADLINE_S)
    assert len(outcome) == 1 and isinstance(outcome[0], TenantErased), outcome
    assert rows(keystore, "SELECT tenant FROM data_keys") == []


def test_a_shred_through_one_replica_is_seen_by_another_within_the_key_cache_bound(
    managed: Callable[..., ManagedKeyProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas, each its own provider (own connections) and envelope with the same
    `key_cache_s`: the shred made through one is honoured by the other once its cached key
    expires; before the shred both open each other's content."""
    clock = [1000.0]
    monkeypatch.setattr(envelope_module, "_monotonic", lambda: clock[0])  # the cache's clock
    ttl = 60.0
    first, second = Envelope(managed(), cache_ttl_s=ttl), Envelope(managed(), cache_ttl_s=ttl)
    first.create_tenant_key("ws_a")
    ctx = context()
    sealed = first.seal(b"personal", ctx)
    assert second.open(sealed, ctx) == b"personal"  # before: the key is used as usual
    sealed_second = second.seal(b"also", context(record_id="m2"))
    assert first.open(sealed_second, context(record_id="m2")) == b"also"

    receipt = first.destroy_tenant_key("ws_a")

    assert receipt.keys_destroyed == 1
    with pytest.raises(DecryptionError):
        first.open(sealed, ctx)  # the replica that shredded: at once
    clock[0] += ttl - 1
    assert second.open(sealed, ctx) == b"personal"  # the documented window
    clock[0] += 2
    with pytest.raises(DecryptionError):
        second.open(sealed, ctx)
    with pytest.raises(KeyNotFound):
        second.seal(b"new", ctx)
    with pytest.raises(TenantErased):
        second.create_tenant_key("ws_a")


def test_shredding_deletes_the_rows_from_the_shared_keystore(
    managed: Callable[..., ManagedKeyProvider], keystore: str
) -> None:
    keys = managed(seal_limit=8, seal_block=4)
    keys.create_data_key("ws_a")
    keys.create_data_key("ws_b")
    for _ in range(5):
        keys.reserve_seals("ws_a")  # a few versions
    versions = len(keys.key_versions("ws_a"))
    assert versions >= 3
    assert keys.destroy_tenant("ws_a") == versions
    assert rows(keystore, "SELECT tenant FROM data_keys") == [("ws_b",)]
    assert keys.tenants() == ["ws_b"] and keys.erased_at("ws_a") is not None


def test_a_shared_keystore_refuses_to_rotate_a_local_kek_file(
    managed: Callable[..., ManagedKeyProvider], kek: Path
) -> None:
    keys = managed()
    keys.create_data_key("ws_a")
    before = kek.read_bytes()
    with pytest.raises(KeyFileError, match="aws-kms or vault-transit") as refused:
        keys.rotate_kek()
    assert "only for the embedded keystore" in str(refused.value)
    with pytest.raises(ValueError, match="point key_id"):
        keys.rotate_kek(b"k" * 32)
    assert kek.read_bytes() == before and keys.current_key("ws_a")


def test_a_sqlite_keystore_works_the_same_and_keeps_no_shredded_bytes(
    tmp_path: Path, kek: Path
) -> None:
    """A KMS region on SQLite names a keystore file: same provider, same shredding care."""
    path = tmp_path / "keys.db"
    keys = ManagedKeyProvider("eu", f"sqlite:///{path}", LocalFileWrapper(kek))
    for n in range(10):
        keys.create_data_key(f"ws_n{n}")
    keys.create_data_key("ws_a")
    keys.rotate_data_key("ws_a")
    versions = keys.key_versions("ws_a")
    with sqlite3.connect(path) as db:
        wrapped = [bytes(r[0]) for r in db.execute(
            "SELECT wrapped FROM data_keys WHERE tenant = 'ws_a'")]
    material = [keys.key_by_id("ws_a", v.key_id).material for v in versions]
    assert wrapped[0] in path.read_bytes()
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)

    assert keys.destroy_tenant("ws_a") == 2
    keys.close()
    content = b"".join(p.read_bytes() for p in tmp_path.glob("keys.db*"))
    for secret in wrapped + material:
        assert secret not in content and secret[12:28] not in content
    with pytest.raises(TenantErased):
        ManagedKeyProvider("eu", f"sqlite:///{path}", LocalFileWrapper(kek)).create_data_key(
            "ws_a")


# -- per-tenant KEKs (customer-managed keys) -----------------------------------------------------


class KeyRing:
    """A `KeyWrapper` over several local KEK files, one of them the region's; a key can be
    disabled (as a customer disables their KMS key) and the ring taken offline. Real AES-GCM
    wraps through `LocalFileWrapper`; it stands for a KMS's key set, not for a network."""

    def __init__(self, *files: Path) -> None:
        self.wrappers = {w.kek_id: w for w in map(LocalFileWrapper, files)}
        self.region_kek = next(iter(self.wrappers))
        self.disabled: set[str] = set()
        self.offline = False

    @property
    def kek_id(self) -> str:
        return self.region_kek

    def kek_for(self, tenant: str, tenant_kek: str | None) -> str:
        if tenant_kek is not None and tenant_kek not in self.wrappers:
            raise ValueError("no such key")
        return tenant_kek or self.region_kek

    def _get(self, kek: str) -> LocalFileWrapper:
        if self.offline:
            raise KeyServiceUnavailable("the key service did not answer")
        if kek in self.disabled or kek not in self.wrappers:
            raise KekRefused(f"key {kek} is disabled")  # as a KMS refuses
        return self.wrappers[kek]

    def generate(self, kek: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        return self._get(kek).generate(kek, context)

    def wrap(self, kek: str, dek: bytes, context: Mapping[str, str]) -> bytes:
        return self._get(kek).wrap(kek, dek, context)

    def unwrap(self, wrapped: bytes, kek: str, context: Mapping[str, str]) -> bytes:
        return self._get(kek).unwrap(wrapped, kek, context)


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing(*(new_kek(tmp_path / f"{name}.key") for name in ("region", "cmk", "next")))


def test_a_tenants_own_kek_wraps_its_keys_and_disabling_it_makes_it_unreadable(
    keystore: str, ring: KeyRing
) -> None:
    keys = ManagedKeyProvider("eu", keystore, ring)
    env = Envelope(keys, cache_ttl_s=0)
    a, b = context(tenant="ws_a"), context(tenant="ws_b")
    env.create_tenant_key("ws_a")
    env.create_tenant_key("ws_b")
    sealed_a, sealed_b = env.seal(b"a", a), env.seal(b"b", b)
    cmk = list(ring.wrappers)[1]

    assert keys.set_tenant_kek("ws_a", cmk) == 1  # its existing key rewrapped
    assert keys.tenant_kek("ws_a") == cmk
    new_id = keys.rotate_data_key("ws_a")
    assert {r[0] for r in rows(keystore, "SELECT kek_id FROM data_keys WHERE tenant='ws_a'")} \
        == {cmk}
    assert rows(keystore, "SELECT kek_id FROM data_keys WHERE tenant='ws_b'") == \
        [(ring.region_kek,)]
    assert env.open(sealed_a, a) == b"a" and key_id_of(env.seal(b"a2", a)) == new_id

    ring.disabled.add(cmk)  # the customer disables their key
    other_replica = Envelope(ManagedKeyProvider("eu", keystore, ring), cache_ttl_s=0)
    with pytest.raises(DecryptionError):
        other_replica.open(sealed_a, a)
    with pytest.raises(KeyNotFound, match="does not unwrap under KEK"):
        other_replica._keys.current_key("ws_a")
    assert other_replica.open(sealed_b, b) == b"b"  # other tenants untouched

    with pytest.raises(KeyNotFound):  # a key the new KEK refuses: nothing changes
        keys.set_tenant_kek("ws_a", None)
    assert keys.tenant_kek("ws_a") == cmk
    ring.disabled.clear()
    assert keys.set_tenant_kek("ws_a", None) == 2  # back to the region's KEK
    assert {r[0] for r in rows(keystore, "SELECT kek_id FROM data_keys")} == {ring.region_kek}
    with pytest.raises(ValueError, match="no such key"):
        keys.set_tenant_kek("ws_a", "not-a-key")
    keys.destroy_tenant("ws_b")
    with pytest.raises(TenantErased):
        keys.set_tenant_kek("ws_b", cmk)


def test_rotating_the_kek_rewraps_every_row_and_old_rows_open_until_then(
    keystore: str, ring: KeyRing
) -> None:
    """The operator points the region's key at a new one: rows wrapped under the old one keep
    opening (each row names its KEK), new keys use the new one, `rotate_kek` rewraps all,
    a tenant's own KEK stays its own."""
    keys = ManagedKeyProvider("eu", keystore, ring)
    env = Envelope(keys, cache_ttl_s=0)
    for tenant in ("ws_a", "ws_b", "ws_c"):
        env.create_tenant_key(tenant)
    sealed = {t: env.seal(t.encode(), context(tenant=t)) for t in ("ws_a", "ws_b", "ws_c")}
    old, cmk, new = list(ring.wrappers)
    keys.set_tenant_kek("ws_c", cmk)

    ring.region_kek = new  # `key_id` now names the new key
    keys.rotate_data_key("ws_b")
    assert Counter(r[0] for r in rows(keystore, "SELECT kek_id FROM data_keys")) == \
        Counter({old: 2, new: 1, cmk: 1})
    assert all(env.open(s, context(tenant=t)) == t.encode() for t, s in sealed.items())

    assert keys.rotate_kek() == 4
    assert Counter(r[0] for r in rows(keystore, "SELECT kek_id FROM data_keys")) == \
        Counter({new: 3, cmk: 1})
    assert rows(keystore, "SELECT value FROM keystore_meta WHERE name = 'kek_id'") == [(new,)]
    ring.disabled.add(old)  # the old key scheduled for deletion: nothing needs it
    assert all(env.open(s, context(tenant=t)) == t.encode() for t, s in sealed.items())


def test_a_key_service_that_does_not_answer_is_not_a_missing_key(
    keystore: str, ring: KeyRing
) -> None:
    """Callers answer 503 for `KeyServiceUnavailable`; "no such key" would read as erased."""
    keys = ManagedKeyProvider("eu", keystore, ring)
    keys.create_data_key("ws_a")
    ring.offline = True
    for call in (lambda: keys.current_key("ws_a"), lambda: keys.reserve_seals("ws_a"),
                 lambda: keys.create_data_key("ws_b")):
        with pytest.raises(KeyServiceUnavailable):
            call()
    ring.offline = False
    assert keys.current_key("ws_a") and not keys.has_tenant("ws_b")


def test_the_regions_own_kek_refused_is_the_key_service_down_not_the_tenants_key(
    keystore: str, ring: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    """An expired Vault token or a wrong IAM policy refuses the region's KEK for every tenant:
    `KeyServiceUnavailable` (503), logged once, never the tenant's 403; a tenant's own KEK
    refused stays `KekRefused` (its `tenant_key_refused`)."""
    keys = ManagedKeyProvider("eu", keystore, ring)
    for tenant in ("ws_a", "ws_b", "ws_c"):
        keys.create_data_key(tenant)
    cmk = list(ring.wrappers)[1]
    keys.set_tenant_kek("ws_c", cmk)

    ring.disabled.add(ring.region_kek)
    for call in (lambda: keys.current_key("ws_a"), lambda: keys.current_key("ws_b"),
                 lambda: keys.reserve_seals("ws_a"), lambda: keys.rotate_data_key("ws_b"),
                 lambda: keys.create_data_key("ws_new"), keys.rotate_data_keys):
        with pytest.raises(KeyServiceUnavailable, match="region eu's own key-encryption key"):
            call()
    refusals = [r for r in caplog.records if "refused the region's own" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelname == "ERROR"
    assert keys.current_key("ws_c")  # its own KEK is fine
    ring.disabled.clear()
    assert keys.current_key("ws_a") and keys.current_key("ws_b")

    ring.disabled.add(cmk)  # the customer disables their own key: its tenant only
    with pytest.raises(KekRefused):
        keys.current_key("ws_c")
    assert keys.current_key("ws_a")


def test_rotating_every_tenant_reports_one_whose_own_kek_is_refused(
    keystore: str, ring: KeyRing
) -> None:
    """A refused tenant does not stop the others, and is named at the end (not skipped as if
    it had been erased)."""
    keys = ManagedKeyProvider("eu", keystore, ring)
    for tenant in ("ws_a", "ws_b", "ws_c", "ws_gone"):
        keys.create_data_key(tenant)
    keys.set_tenant_kek("ws_b", list(ring.wrappers)[1])
    keys.destroy_tenant("ws_gone")
    ring.disabled.add(list(ring.wrappers)[1])

    with pytest.raises(DataKeysNotRotated, match="ws_b") as refused:
        keys.rotate_data_keys()
    assert (refused.value.rotated, refused.value.tenants) == (2, ("ws_b",))
    assert (refused.value.status, refused.value.code) == (403, "tenant_key_refused")
    versions = dict(rows(keystore, "SELECT tenant, MAX(version) FROM data_keys GROUP BY tenant"))
    assert versions == {"ws_a": 2, "ws_b": 1, "ws_c": 2}
    ring.disabled.clear()
    assert keys.rotate_data_keys() == 3


def test_an_embedded_keystore_and_a_shared_one_do_not_mix(tmp_path: Path, kek: Path) -> None:
    """`LocalKeyProvider` refuses a keystore of the other region in its own file; the shared
    keystore is a separate database: it never reads `<kek>.keystore.db`."""
    local = LocalKeyProvider("eu", kek)
    local.create_data_key("ws_a")
    shared = ManagedKeyProvider("eu", f"sqlite:///{tmp_path / 'shared.db'}",
                                LocalFileWrapper(kek))
    assert not shared.has_tenant("ws_a")
    local.close()
    shared.close()
