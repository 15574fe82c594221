"""G5 for records: `Envelope.seal` / `open` round-trip, and every tampering or move fails."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.crypto import (
    Context,
    DataKey,
    DecryptionError,
    Envelope,
    KeyNotFound,
    LocalKeyProvider,
)
from tests.crypto.support import context

field_text = st.text(min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(plaintext=st.binary(max_size=2048), tenant=st.sampled_from(["ws_a", "ws_b"]),
       kind=field_text, record_id=field_text)
def test_record_round_trips_for_any_plaintext_and_context(
    shared_envelope: Envelope, plaintext: bytes, tenant: str, kind: str, record_id: str
) -> None:
    ctx = context(tenant=tenant, kind=kind, record_id=record_id)
    assert shared_envelope.open(shared_envelope.seal(plaintext, ctx), ctx) == plaintext


def test_sealing_twice_gives_different_ciphertexts(envelope: Envelope, ctx: Context) -> None:
    assert envelope.seal(b"same", ctx) != envelope.seal(b"same", ctx)


def test_plaintext_never_appears_in_the_record(envelope: Envelope, ctx: Context) -> None:
    canary = b"CANARY-7f3a9c-" * 20
    sealed = envelope.seal(canary, ctx)
    assert b"CANARY" not in sealed
    assert canary[:16] not in sealed


def test_every_flipped_bit_is_detected(envelope: Envelope, ctx: Context) -> None:
    sealed = envelope.seal(b"a short record", ctx)  # header, nonce, ciphertext and tag
    for bit in range(len(sealed) * 8):
        tampered = bytearray(sealed)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionError):
            envelope.open(bytes(tampered), ctx)


def test_every_truncation_and_any_appended_byte_is_detected(
    envelope: Envelope, ctx: Context
) -> None:
    sealed = envelope.seal(b"a short record", ctx)
    for length in range(len(sealed)):
        with pytest.raises(DecryptionError):
            envelope.open(sealed[:length], ctx)
    with pytest.raises(DecryptionError):
        envelope.open(sealed + b"\x00", ctx)


@pytest.mark.parametrize(
    "moved",
    [
        {"tenant": "ws_b"},
        {"kind": "file"},
        {"record_id": "msg_2"},
    ],
    ids=["other-tenant", "other-kind", "other-record"],
)
def test_record_moved_to_another_context_does_not_decrypt(
    envelope: Envelope, ctx: Context, moved: dict[str, str]
) -> None:
    sealed = envelope.seal(b"secret", ctx)
    with pytest.raises(DecryptionError):
        envelope.open(sealed, context(**moved))


def test_record_claimed_for_another_region_does_not_decrypt(
    envelope: Envelope, ctx: Context
) -> None:
    sealed = envelope.seal(b"secret", ctx)
    with pytest.raises(DecryptionError):
        envelope.open(sealed, dataclasses.replace(ctx, region="us"))


def test_sealing_for_another_region_is_refused(envelope: Envelope) -> None:
    with pytest.raises(ValueError, match="region"):
        envelope.seal(b"secret", context(region="us"))


def test_record_copied_to_another_regions_keystore_does_not_decrypt(
    envelope: Envelope, ctx: Context, reopen: Callable[..., LocalKeyProvider]
) -> None:
    sealed = envelope.seal(b"secret", ctx)
    us = Envelope(reopen("us"))
    us.create_tenant_key("ws_a")  # even with the same tenant id in that region
    with pytest.raises(DecryptionError):
        us.open(sealed, dataclasses.replace(ctx, region="us"))


def test_wrapped_key_copied_into_another_regions_keystore_does_not_unwrap(
    keys: LocalKeyProvider, envelope: Envelope, ctx: Context,
    reopen: Callable[..., LocalKeyProvider],
) -> None:
    sealed = envelope.seal(b"secret", ctx)
    us_keys = reopen("us")
    with sqlite3.connect(keys.keystore_path) as src:
        row = src.execute(
            "SELECT key_id, tenant, version, kek_id, wrapped, created_at, scheme FROM data_keys"
            " WHERE tenant = 'ws_a'"
        ).fetchone()
    with sqlite3.connect(us_keys.keystore_path) as dst:
        dst.execute("INSERT INTO data_keys (key_id, tenant, version, kek_id, wrapped,"
                    " created_at, scheme) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
    with pytest.raises(DecryptionError):
        Envelope(us_keys).open(sealed, dataclasses.replace(ctx, region="us"))


def test_another_tenants_key_does_not_open_the_record(
    keys: LocalKeyProvider, envelope: Envelope, ctx: Context,
    reopen: Callable[..., LocalKeyProvider],
) -> None:
    sealed = envelope.seal(b"secret", ctx)
    # Swap the two tenants' wrapped keys in the keystore: the wrapping is bound to the tenant.
    with sqlite3.connect(keys.keystore_path) as db:
        db.execute("UPDATE data_keys SET tenant = 'swap' WHERE tenant = 'ws_a'")
        db.execute("UPDATE data_keys SET tenant = 'ws_a' WHERE tenant = 'ws_b'")
        db.execute("UPDATE data_keys SET tenant = 'ws_b' WHERE tenant = 'swap'")
    with pytest.raises(DecryptionError):
        Envelope(reopen(), cache_ttl_s=0).open(sealed, ctx)


class _SwappingProvider(LocalKeyProvider):
    """Hands out tenant B's raw data key whenever tenant A's is asked for."""

    def key_by_id(self, tenant: str, key_id: str) -> DataKey:
        return dataclasses.replace(self.current_key("ws_b"), key_id=key_id)


def test_record_does_not_open_under_a_swapped_data_key(
    keys: LocalKeyProvider, envelope: Envelope, ctx: Context
) -> None:
    sealed = envelope.seal(b"secret", ctx)
    with pytest.raises(DecryptionError):
        Envelope(_SwappingProvider(keys.region, keys.kek_path)).open(sealed, ctx)


def test_unknown_key_id_and_garbage_fail_with_the_one_error(
    envelope: Envelope, ctx: Context
) -> None:
    sealed = envelope.seal(b"secret", ctx)
    key_id_len = sealed[1]
    forged = sealed[:2] + b"f" * key_id_len + sealed[2 + key_id_len :]
    for bad in (b"", b"\x01", b"\x01\xff", b"\x09" + sealed[1:], forged, b"\x01\x02\xff\xfe"):
        with pytest.raises(DecryptionError) as info:
            envelope.open(bad, ctx)
        assert_no_chained_detail(info.value)


def test_decryption_error_is_generic(envelope: Envelope, ctx: Context) -> None:
    sealed = envelope.seal(b"top secret plaintext", ctx)
    with pytest.raises(DecryptionError) as info:
        envelope.open(sealed[:-1], ctx)
    message = str(info.value)
    assert "secret" not in message and ctx.tenant not in message
    assert_no_chained_detail(info.value)


def assert_no_chained_detail(error: BaseException) -> None:
    """Nothing of the underlying failure is attached to what callers see."""
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_a_blob_is_not_accepted_as_a_record_nor_the_reverse(
    envelope: Envelope, ctx: Context
) -> None:
    with pytest.raises(DecryptionError):
        envelope.open(envelope.seal_blob(b"data", ctx), ctx)
    with pytest.raises(DecryptionError):
        envelope.open_blob(envelope.seal(b"data", ctx), ctx)


def test_sealing_for_a_tenant_without_a_key_is_refused(envelope: Envelope) -> None:
    with pytest.raises(KeyNotFound):
        envelope.seal(b"x", context(tenant="ws_unknown"))
    with pytest.raises(DecryptionError):
        envelope.open(b"\x01\x02ab" + bytes(40), context(tenant="ws_unknown"))


def test_records_sealed_by_one_process_open_in_another(
    envelope: Envelope, ctx: Context, reopen: Callable[..., LocalKeyProvider]
) -> None:
    sealed = envelope.seal(b"shared", ctx)
    assert Envelope(reopen()).open(sealed, ctx) == b"shared"


def test_reprs_leak_no_key_material(
    keys: LocalKeyProvider, envelope: Envelope, ctx: Context
) -> None:
    dek = keys.current_data_key("ws_a")[1]
    envelope.open(envelope.seal(b"x", ctx), ctx)  # populate the caches
    kek = keys.kek_path.read_bytes()
    receipt = envelope.destroy_tenant_key("ws_b")
    for text in (repr(envelope), repr(keys), repr(ctx), str(ctx), repr(receipt), str(envelope)):
        for secret in (dek, kek):
            assert secret.hex() not in text
            assert repr(secret)[2:-1] not in text
    assert "_aad" not in repr(ctx)


def test_records_open_from_any_bytes_like_value(envelope: Envelope, ctx: Context) -> None:
    sealed = envelope.seal(b"from a database driver", ctx)
    for value in (bytearray(sealed), memoryview(sealed)):
        assert envelope.open(value, ctx) == b"from a database driver"  # type: ignore[arg-type]
