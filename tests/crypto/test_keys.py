"""The region's keys: KEK files, the keystore beside them, rotation, several processes."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domicile.crypto import (
    Context,
    Envelope,
    KeyFileError,
    KeyNotFound,
    LocalKeyProvider,
    write_new_kek,
)
from domicile.crypto import keys as keys_module
from tests.crypto.support import make_provider, wrapped_key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- KEK files ---------------------------------------------------------------------------


def test_new_kek_file_is_32_random_bytes_readable_only_by_its_owner(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even under a permissive umask
    try:
        write_new_kek(tmp_path / "a.key")
        write_new_kek(tmp_path / "b.key")
    finally:
        os.umask(old_umask)
    a, b = (tmp_path / "a.key").read_bytes(), (tmp_path / "b.key").read_bytes()
    assert len(a) == len(b) == 32 and a != b
    assert mode(tmp_path / "a.key") == 0o600


def test_existing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "kek.key"
    write_new_kek(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_new_kek(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_kek_file_of_wrong_length_is_refused_naming_the_path(tmp_path: Path, length: int) -> None:
    path = tmp_path / "kek.key"
    path.write_bytes(b"k" * length)
    path.chmod(0o600)  # refused for its length, not its mode
    with pytest.raises(KeyFileError, match=f"{path}: a key file must"):
        LocalKeyProvider("eu", path)


def test_missing_kek_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError, match=str(path)):
        LocalKeyProvider("eu", path)
    assert isinstance(KeyFileError("x"), ValueError)


def test_keystore_sits_beside_the_key_file_and_is_private(keys: LocalKeyProvider) -> None:
    keys.create_data_key("ws_a")
    assert keys.keystore_path == keys.kek_path.with_name("kek.key.keystore.db")
    assert mode(keys.keystore_path) == 0o600


def test_keystore_of_one_region_is_refused_by_another(tmp_path: Path) -> None:
    eu = make_provider(tmp_path, "eu")
    eu.close()
    with pytest.raises(KeyFileError, match="region"):
        LocalKeyProvider("us", eu.kek_path)


def test_another_key_file_is_refused_for_an_existing_keystore(
    keys: LocalKeyProvider, tmp_path: Path
) -> None:
    keys.create_data_key("ws_a")
    keys.close()
    keys.kek_path.unlink()
    write_new_kek(keys.kek_path)  # an operator restored the wrong key file
    with pytest.raises(KeyFileError, match="not the KEK"):
        LocalKeyProvider("eu", keys.kek_path)


# -- data keys ---------------------------------------------------------------------------


def test_creating_a_data_key_is_idempotent(keys: LocalKeyProvider) -> None:
    key_id = keys.create_data_key("ws_a")
    assert keys.create_data_key("ws_a") == key_id
    assert keys.current_data_key("ws_a")[0] == key_id
    assert keys.data_key("ws_a", key_id) == keys.current_data_key("ws_a")[1]
    assert len(keys.data_key("ws_a", key_id)) == 32


def test_tenants_have_distinct_keys_and_are_listed(keys: LocalKeyProvider) -> None:
    a, b = keys.create_data_key("ws_a"), keys.create_data_key("ws_b")
    assert a != b and keys.data_key("ws_a", a) != keys.data_key("ws_b", b)
    assert keys.tenants() == ["ws_a", "ws_b"]
    assert keys.has_tenant("ws_a") and not keys.has_tenant("ws_c")


def test_unknown_tenant_or_key_id_is_key_not_found(keys: LocalKeyProvider) -> None:
    a = keys.create_data_key("ws_a")
    with pytest.raises(KeyNotFound):
        keys.current_data_key("ws_c")
    with pytest.raises(KeyNotFound):
        keys.data_key("ws_b", a)  # a's key id asked for as b's
    assert issubclass(KeyNotFound, LookupError)


def test_data_keys_are_stored_only_wrapped(keys: LocalKeyProvider) -> None:
    key_id = keys.create_data_key("ws_a")
    dek = keys.data_key("ws_a", key_id)
    keys.close()
    assert dek not in keys.keystore_path.read_bytes()
    assert dek not in keys.kek_path.read_bytes()


def test_two_processes_agree_on_a_tenants_key(
    keys: LocalKeyProvider, reopen: Callable[..., LocalKeyProvider]
) -> None:
    other = reopen()
    key_id = keys.create_data_key("ws_a")
    assert other.create_data_key("ws_a") == key_id
    assert other.current_data_key("ws_a") == keys.current_data_key("ws_a")


def test_racing_processes_create_one_key_per_tenant(tmp_path: Path) -> None:
    providers = [make_provider(tmp_path) for _ in range(6)]  # one connection each
    start, results = threading.Barrier(len(providers)), []

    def create(provider: LocalKeyProvider) -> None:
        start.wait()
        results.append(provider.create_data_key("ws_race"))

    threads = [threading.Thread(target=create, args=(p,)) for p in providers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(providers) and len(set(results)) == 1
    assert {p.current_data_key("ws_race") for p in providers} == {
        providers[0].current_data_key("ws_race")
    }
    for p in providers:
        p.close()


# -- KEK rotation --------------------------------------------------------------------------


def test_rotation_rewraps_every_key_and_content_still_opens(
    keys: LocalKeyProvider, envelope: Envelope, ctx: Context,
    reopen: Callable[..., LocalKeyProvider],
) -> None:
    sealed = envelope.seal(b"before rotation", ctx)
    blob = envelope.seal_blob(b"blob before rotation", ctx)
    old_kek = keys.kek_path.read_bytes()
    key_id = keys.current_data_key("ws_a")[0]
    old_wrapped = wrapped_key(keys, key_id)

    assert keys.rotate_kek() == 2  # ws_a and ws_b

    new_kek = keys.kek_path.read_bytes()
    assert new_kek != old_kek and len(new_kek) == 32 and stat.S_IMODE(
        keys.kek_path.stat().st_mode) == 0o600
    assert wrapped_key(keys, key_id) != old_wrapped
    with sqlite3.connect(keys.keystore_path) as db:
        kek_ids = {r[0] for r in db.execute("SELECT kek_id FROM data_keys")}
    assert kek_ids == {keys_module.kek_id(new_kek)}
    fresh = Envelope(reopen())  # a process started after the rotation
    assert fresh.open(sealed, ctx) == b"before rotation"
    assert fresh.open_blob(blob, ctx) == b"blob before rotation"
    assert Envelope(keys).open(sealed, ctx) == b"before rotation"
    assert not keys.kek_path.with_name("kek.key.next").exists()


def test_old_kek_can_no_longer_unwrap_after_rotation(
    keys: LocalKeyProvider, envelope: Envelope, tmp_path: Path
) -> None:
    old_kek = keys.kek_path.read_bytes()
    key_id = keys.current_data_key("ws_a")[0]
    keys.rotate_kek()
    keys.close()
    wrapped = wrapped_key(keys, key_id)
    with pytest.raises(InvalidTag):
        AESGCM(old_kek).decrypt(wrapped[:12], wrapped[12:], None)
    with pytest.raises(InvalidTag):  # nor with the right wrap context
        AESGCM(old_kek).decrypt(
            wrapped[:12], wrapped[12:], keys_module._wrap_aad("eu", "ws_a", key_id)
        )
    # A copy of the keystore next to the old key file (an old backup of the key) is refused.
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "kek.key").write_bytes(old_kek)
    (stale / "kek.key").chmod(0o600)
    shutil.copy(keys.keystore_path, stale / "kek.key.keystore.db")
    with pytest.raises(KeyFileError):
        LocalKeyProvider("eu", stale / "kek.key")


def test_rotation_to_a_given_kek(keys: LocalKeyProvider, envelope: Envelope) -> None:
    new = os.urandom(32)
    keys.rotate_kek(new)
    assert keys.kek_path.read_bytes() == new
    with pytest.raises(ValueError, match="32"):
        keys.rotate_kek(b"short")
    with pytest.raises(ValueError, match="current"):
        keys.rotate_kek(new)


def test_another_process_keeps_working_across_a_rotation(
    keys: LocalKeyProvider, envelope: Envelope, ctx: Context,
    reopen: Callable[..., LocalKeyProvider],
) -> None:
    worker = reopen()  # loaded the old KEK
    sealed = envelope.seal(b"x", ctx)
    keys.rotate_kek()
    assert Envelope(worker).open(sealed, ctx) == b"x"  # notices and reloads the key file
    worker.create_data_key("ws_new")  # wrapped under the new KEK, not the old one
    assert Envelope(reopen()).create_tenant_key("ws_new") == keys.create_data_key("ws_new")
    assert keys.data_key("ws_new", keys.create_data_key("ws_new"))


def test_crash_after_rewrapping_but_before_the_key_file_rename_recovers(
    keys: LocalKeyProvider, envelope: Envelope, ctx: Context,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    sealed = envelope.seal(b"survives", ctx)

    def crash(self: LocalKeyProvider, new_id: str) -> None:
        raise SystemExit("power cut")

    monkeypatch.setattr(LocalKeyProvider, "_finish_rotation", crash)
    with pytest.raises(SystemExit):
        keys.rotate_kek()
    monkeypatch.undo()
    keys.close()
    pending = keys.kek_path.with_name("kek.key.next")
    assert pending.exists()  # committed under the new KEK, still in the side file

    restarted = LocalKeyProvider("eu", keys.kek_path)
    assert not pending.exists()
    assert Envelope(restarted).open(sealed, ctx) == b"survives"
    restarted.close()


def test_crash_before_the_rewrap_commits_keeps_the_old_kek(
    keys: LocalKeyProvider, envelope: Envelope, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = envelope.seal(b"survives", ctx)
    old_kek = keys.kek_path.read_bytes()

    def crash(*args: object) -> bytes:
        raise SystemExit("power cut")

    monkeypatch.setattr(keys_module, "_wrap_with", crash)
    with pytest.raises(SystemExit):
        keys.rotate_kek()
    monkeypatch.undo()
    keys.close()
    assert keys.kek_path.read_bytes() == old_kek

    restarted = LocalKeyProvider("eu", keys.kek_path)
    assert not keys.kek_path.with_name("kek.key.next").exists()
    assert Envelope(restarted).open(sealed, ctx) == b"survives"
    assert restarted.rotate_kek() == 2  # and a later rotation works
    restarted.close()
