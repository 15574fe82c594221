"""`AwsKmsWrapper` against moto's KMS in server mode (an emulator, over real HTTP), behind
`tests/crypto/kms_proxy.py`, a loopback proxy that adds the key-state rule moto skips
(disabled / pending-deletion keys refused, as AWS KMS documents)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from domicile.config import AwsKmsSettings
from domicile.crypto import KeyNotFound
from domicile.crypto.aws_kms import AwsKmsWrapper
from domicile.crypto.keys import wrap_context
from domicile.crypto.wrapping import KekRefused, KeyServiceUnavailable, KeyWrapper
from tests.crypto.kms_proxy import KmsStateProxy
from tests.services import MotoServer, free_port

CONTEXT = wrap_context("eu", "ws_a", "dk_1")


@pytest.fixture
def kms(moto: MotoServer) -> Any:
    return moto.client("kms")


@pytest.fixture
def proxy(moto: MotoServer, kms: Any) -> Iterator[KmsStateProxy]:
    with KmsStateProxy(moto.endpoint_url, kms) as started:
        yield started


def make_wrapper(key_id: str, endpoint_url: str, region: str = "eu-central-1") -> AwsKmsWrapper:
    return AwsKmsWrapper(AwsKmsSettings(kind="aws-kms", key_id=key_id, region=region,
                                        endpoint_url=endpoint_url))


@pytest.fixture
def wrapper(kms_key: str, proxy: KmsStateProxy) -> AwsKmsWrapper:
    return make_wrapper(kms_key, proxy.endpoint_url)


def key_uuid(arn: str) -> str:
    """moto's DisableKey & co. want the bare key id, not the ARN."""
    return arn.rsplit("/", 1)[-1]


def test_is_a_key_wrapper(wrapper: AwsKmsWrapper) -> None:
    checked: KeyWrapper = wrapper
    assert issubclass(KekRefused, KeyNotFound)  # callers that know only KeyNotFound see it
    assert checked.kek_id == wrapper.kek_id


def test_generate_and_unwrap_round_trip(wrapper: AwsKmsWrapper) -> None:
    dek, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    assert len(dek) == 32
    assert dek not in wrapped
    assert wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT) == dek
    rewrapped = wrapper.wrap(wrapper.kek_id, dek, CONTEXT)
    assert rewrapped != wrapped
    assert wrapper.unwrap(rewrapped, wrapper.kek_id, CONTEXT) == dek


@pytest.mark.parametrize("other", [
    wrap_context("eu", "ws_b", "dk_1"),   # another tenant
    wrap_context("us", "ws_a", "dk_1"),   # another region
    wrap_context("eu", "ws_a", "dk_2"),   # another data key row
])
def test_a_wrap_is_bound_to_its_context(wrapper: AwsKmsWrapper, other: dict[str, str]) -> None:
    _, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    with pytest.raises(KekRefused, match="InvalidCiphertextException"):
        wrapper.unwrap(wrapped, wrapper.kek_id, other)


def test_a_tenant_key_wraps_that_tenant_only(wrapper: AwsKmsWrapper, moto: MotoServer) -> None:
    tenant_kek = moto.kms_key()
    assert wrapper.kek_for("ws_a", None) == wrapper.kek_id
    assert wrapper.kek_for("ws_a", tenant_kek) == tenant_kek
    dek, wrapped = wrapper.generate(tenant_kek, CONTEXT)
    assert wrapper.unwrap(wrapped, tenant_kek, CONTEXT) == dek
    with pytest.raises(KekRefused):  # KMS: the ciphertext is not under the region's key
        wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT)


def test_a_tenant_key_in_another_aws_region_is_refused(wrapper: AwsKmsWrapper) -> None:
    with pytest.raises(ValueError, match="us-east-1"):
        wrapper.kek_for("ws_a", "arn:aws:kms:us-east-1:123456789012:key/"
                        "11111111-2222-3333-4444-555555555555")


def test_a_disabled_key_opens_nothing_until_enabled(wrapper: AwsKmsWrapper, kms: Any) -> None:
    dek, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    kms.disable_key(KeyId=key_uuid(wrapper.kek_id))
    with pytest.raises(KekRefused, match="DisabledException") as refused:
        wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT)
    assert wrapper.kek_id in str(refused.value)
    with pytest.raises(KekRefused, match="DisabledException"):
        wrapper.generate(wrapper.kek_id, CONTEXT)
    with pytest.raises(KekRefused, match="DisabledException"):
        wrapper.wrap(wrapper.kek_id, dek, CONTEXT)
    kms.enable_key(KeyId=key_uuid(wrapper.kek_id))
    assert wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT) == dek


def test_a_key_pending_deletion_opens_nothing(wrapper: AwsKmsWrapper, kms: Any) -> None:
    _, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    kms.schedule_key_deletion(KeyId=key_uuid(wrapper.kek_id), PendingWindowInDays=7)
    with pytest.raises(KekRefused, match="KMSInvalidStateException"):
        wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT)


def test_an_unknown_key_is_not_found(wrapper: AwsKmsWrapper) -> None:
    missing = "arn:aws:kms:eu-central-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    with pytest.raises(KekRefused, match="NotFoundException"):
        wrapper.generate(missing, CONTEXT)


def test_an_unreachable_kms_is_unavailable_not_missing(kms_key: str) -> None:
    closed = make_wrapper(kms_key, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(KeyServiceUnavailable, match="unreachable") as failed:
        closed.generate(closed.kek_id, CONTEXT)
    assert not isinstance(failed.value, KeyNotFound)


@pytest.mark.parametrize(("status", "code"), [
    (400, "ThrottlingException"), (500, "KMSInternalException"),
    (503, "DependencyTimeoutException")])
def test_throttling_and_server_errors_are_unavailable(
        wrapper: AwsKmsWrapper, proxy: KmsStateProxy, status: int, code: str) -> None:
    _, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    proxy.fail_with = (status, code)
    with pytest.raises(KeyServiceUnavailable, match=code):
        wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT)


def test_no_key_bytes_in_reprs_or_errors(wrapper: AwsKmsWrapper, kms: Any) -> None:
    dek, wrapped = wrapper.generate(wrapper.kek_id, CONTEXT)
    assert repr(wrapper) == (f"AwsKmsWrapper(key_id={wrapper.kek_id!r}, "
                             "region='eu-central-1')")
    kms.disable_key(KeyId=key_uuid(wrapper.kek_id))
    with pytest.raises(KekRefused) as refused:
        wrapper.unwrap(wrapped, wrapper.kek_id, CONTEXT)
    error = refused.value
    assert error.__cause__ is None and error.__suppress_context__
    shown = " ".join((repr(wrapper), str(wrapper), str(error), repr(error)))
    for secret in (dek, wrapped):
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in shown
