"""Data key hygiene (G5): versions and rotation, seal counting in reserved blocks, HKDF
subkeys per key scheme, keystores from before schemes, key file modes."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from domicile.crypto import (
    Context,
    DecryptionError,
    Envelope,
    KeyFileError,
    KeyProvider,
    LocalKeyProvider,
)
from domicile.crypto import envelope as envelope_module
from tests.crypto.conftest import OpenKeys, both_providers
from tests.crypto.support import SMALL_SEGMENT, context, make_provider

LEGACY = Path(__file__).parent / "data" / "legacy_v1"  # sealed by the code before schemes


def key_id_of(sealed: bytes) -> str:
    """The key id a record or blob names (both formats: version, length, key id)."""
    return sealed[2 : 2 + sealed[1]].decode("ascii")


@pytest.fixture
def limited(open_keys: OpenKeys) -> Callable[..., KeyProvider]:
    """Providers on the same keystore with a tiny seal limit and block: several processes."""

    def _open(limit: int = 10, block: int = 4) -> KeyProvider:
        return open_keys(seal_limit=limit, seal_block=block)

    return _open


def hkdf(dek: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(dek)


# -- subkeys -------------------------------------------------------------------------------


@both_providers
def test_a_new_data_key_is_never_used_directly_but_through_two_hkdf_subkeys(
    keys: KeyProvider, envelope: Envelope, ctx: Context
) -> None:
    record = envelope.seal(b"record", ctx)
    blob = envelope.seal_blob(b"blob", ctx)  # shorter than a segment: one final segment
    dek = keys.key_by_id("ws_a", key_id_of(record)).material
    assert keys.key_by_id("ws_a", key_id_of(record)).scheme == 2
    record_key = hkdf(dek, b"domicile/dek/record-key/v2")
    blob_kdk = hkdf(dek, b"domicile/dek/blob-kdk/v2")
    assert len({dek, record_key, blob_kdk}) == 3

    header_end, body = 2 + record[1], 2 + record[1] + 12
    nonce, aad = record[header_end:body], record[:body] + ctx.associated_data
    with pytest.raises(InvalidTag):
        AESGCM(dek).decrypt(nonce, record[body:], aad)
    assert AESGCM(record_key).decrypt(nonce, record[body:], aad) == b"record"

    header_len = 2 + blob[1] + 4 + 16 + 7
    header, segment = blob[:header_len], blob[header_len:]
    seg_nonce = header[-7:] + (0).to_bytes(4, "big") + b"\x01"

    def blob_key(kdk: bytes) -> AESGCM:
        mac = hmac.new(kdk, b"domicile/blob/v1" + header + ctx.associated_data, hashlib.sha256)
        return AESGCM(mac.digest())

    with pytest.raises(InvalidTag):
        blob_key(dek).decrypt(seg_nonce, segment, None)
    assert blob_key(blob_kdk).decrypt(seg_nonce, segment, None) == b"blob"


def test_a_keystore_from_before_schemes_still_opens_its_content(tmp_path: Path) -> None:
    """Records and blobs sealed by the previous code (data key used directly) still open; the
    keystore gains the new columns on open, its key is scheme 1, new keys are scheme 2."""
    shutil.copytree(LEGACY, tmp_path / "old")
    kek = tmp_path / "old" / "kek.key"
    kek.chmod(0o600)  # git keeps no modes
    with sqlite3.connect(kek.with_name("kek.key.keystore.db")) as db:
        assert "scheme" not in {r[1] for r in db.execute("PRAGMA table_info(data_keys)")}
    keys = LocalKeyProvider("eu", kek)
    env = Envelope(keys, segment_size=SMALL_SEGMENT)
    ctx = Context("eu", "ws_old", "message", "msg_1")
    record, blob = (tmp_path / "old" / "record.bin").read_bytes(), (
        tmp_path / "old" / "blob.bin").read_bytes()

    assert env.open(record, ctx) == b"sealed before data key schemes"
    assert env.open_blob(blob, ctx) == b"a blob sealed before data key schemes " * 5
    [old] = keys.key_versions("ws_old")
    assert (old.key_id, old.scheme, old.seals_reserved) == (key_id_of(record), 1, 0)

    new_id = keys.rotate_data_key("ws_old")
    fresh = Envelope(LocalKeyProvider("eu", kek), segment_size=SMALL_SEGMENT)
    assert key_id_of(fresh.seal(b"new", ctx)) == new_id
    assert [v.scheme for v in keys.key_versions("ws_old")] == [1, 2]
    assert fresh.open(record, ctx) == b"sealed before data key schemes"
    assert fresh.open_blob(blob, ctx) == b"a blob sealed before data key schemes " * 5
    keys.close()


def test_a_key_of_the_legacy_scheme_never_seals_again(tmp_path: Path) -> None:
    """A key made before seals were counted has an unknown history and no subkeys: the first
    seal after the upgrade rotates to a new (HKDF) key; the old one still opens."""
    shutil.copytree(LEGACY, tmp_path / "old")
    kek = tmp_path / "old" / "kek.key"
    kek.chmod(0o600)
    keys = LocalKeyProvider("eu", kek)
    ctx = Context("eu", "ws_old", "message", "msg_1")
    record = (tmp_path / "old" / "record.bin").read_bytes()
    sealed = Envelope(keys, segment_size=SMALL_SEGMENT).seal(b"after the upgrade", ctx)
    assert key_id_of(sealed) != key_id_of(record)
    assert [v.scheme for v in keys.key_versions("ws_old")] == [1, 2]
    assert Envelope(keys).open(record, ctx) == b"sealed before data key schemes"
    keys.close()


# -- counting and rotation -------------------------------------------------------------------


@both_providers
def test_seals_are_counted_in_reserved_blocks_not_one_write_per_seal(
    limited: Callable[..., KeyProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = limited(limit=1000, block=10)
    keys.create_data_key("ws_a")
    env = Envelope(keys)
    reservations: list[int] = []
    reserve = keys.reserve_seals

    def counted(tenant: str) -> object:
        grant = reserve(tenant)
        reservations.append(grant.seals)
        return grant

    monkeypatch.setattr(keys, "reserve_seals", counted)
    for n in range(15):
        env.seal(b"r", context(record_id=f"r{n}"))
    for n in range(4):
        env.seal_blob(b"b", context(record_id=f"b{n}"))
    assert reservations == [10, 10]  # 19 seals, two keystore writes
    [version] = keys.key_versions("ws_a")
    assert version.seals_reserved == 20


@both_providers
def test_no_key_seals_past_its_limit_across_processes_and_old_keys_stay_readable(
    limited: Callable[..., KeyProvider],
) -> None:
    """Two processes share a limit of 10 seals per key: whoever reserves past it rotates."""
    first, second = limited(), limited()
    first.create_data_key("ws_a")
    envelopes = [Envelope(first), Envelope(second)]
    sealed: list[tuple[bytes, Context]] = []
    for n in range(47):
        env = envelopes[(n // 3) % 2]  # interleaved in runs, so blocks are left half used
        ctx = context(record_id=f"r{n}")
        sealed.append((env.seal_blob(b"b%d" % n, ctx) if n % 5 == 0
                       else env.seal(b"r%d" % n, ctx), ctx))

    per_key = Counter(key_id_of(token) for token, _ in sealed)
    assert max(per_key.values()) <= 10 and len(per_key) >= 5
    versions = first.key_versions("ws_a")
    assert all(v.seals_reserved <= 10 for v in versions)
    assert [v.version for v in versions] == list(range(1, len(versions) + 1))
    reader = Envelope(limited(), cache_ttl_s=0)
    for n, (token, ctx) in enumerate(sealed):
        opened = reader.open_blob(token, ctx) if n % 5 == 0 else reader.open(token, ctx)
        assert opened in (b"b%d" % n, b"r%d" % n)


@both_providers
def test_a_rotation_by_another_process_is_picked_up_when_the_cache_expires(
    limited: Callable[..., KeyProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(envelope_module, "_monotonic", lambda: clock[0])
    worker, cli = limited(limit=1000, block=100), limited(limit=1000, block=100)
    old_id = worker.create_data_key("ws_a")
    env = Envelope(worker, cache_ttl_s=300)
    before = env.seal(b"before", context(record_id="a"))

    new_id = cli.rotate_data_key("ws_a")

    assert key_id_of(env.seal(b"x", context(record_id="b"))) == old_id  # within the TTL
    clock[0] += 301
    after = env.seal(b"after", context(record_id="c"))
    assert key_id_of(after) == new_id != old_id
    assert env.open(before, context(record_id="a")) == b"before"
    assert [v.key_id for v in cli.key_versions("ws_a")] == [old_id, new_id]


@both_providers
def test_an_expired_entry_keeps_its_block_while_its_key_is_current(
    limited: Callable[..., KeyProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle processes do not burn a block per cache expiry (that would force rotations)."""
    clock = [1000.0]
    monkeypatch.setattr(envelope_module, "_monotonic", lambda: clock[0])
    keys = limited(limit=1000, block=100)
    keys.create_data_key("ws_a")
    env = Envelope(keys, cache_ttl_s=300)
    for n in range(5):
        env.seal(b"x", context(record_id=f"r{n}"))
        clock[0] += 301
    assert [v.seals_reserved for v in keys.key_versions("ws_a")] == [100]


@both_providers
def test_region_wide_rotation_gives_every_tenant_a_new_current_key(
    keys: KeyProvider, envelope: Envelope
) -> None:
    a, b = context(tenant="ws_a"), context(tenant="ws_b")
    old = {t: keys.current_key(t).key_id for t in ("ws_a", "ws_b")}
    sealed_a = envelope.seal(b"a", a)
    assert keys.rotate_data_keys() == 2
    fresh = Envelope(keys)
    assert key_id_of(sealed_a) == old["ws_a"]
    assert key_id_of(fresh.seal(b"a2", a)) != old["ws_a"]
    assert key_id_of(fresh.seal(b"b2", b)) != old["ws_b"]
    assert fresh.open(sealed_a, a) == b"a"
    assert [len(keys.key_versions(t)) for t in ("ws_a", "ws_b")] == [2, 2]
    with pytest.raises(DecryptionError):
        fresh.open(sealed_a, b)


def test_seal_limit_and_block_are_checked(tmp_path: Path) -> None:
    make_provider(tmp_path).close()
    for bad in ({"seal_limit": 0}, {"seal_limit": 2**31}, {"seal_block": 0}):
        with pytest.raises(ValueError, match="seal_"):
            LocalKeyProvider("eu", tmp_path / "eu" / "kek.key", **bad)


# -- key file modes ----------------------------------------------------------------------------


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_a_kek_file_open_to_group_or_others_is_refused(tmp_path: Path, loose: int) -> None:
    make_provider(tmp_path).close()
    kek = tmp_path / "eu" / "kek.key"
    kek.chmod(loose)
    with pytest.raises(KeyFileError, match="chmod 600") as refused:
        LocalKeyProvider("eu", kek)
    assert str(kek) in str(refused.value)
    kek.chmod(0o600)
    LocalKeyProvider("eu", kek).close()  # and the owner-only file is accepted
