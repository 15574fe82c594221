"""AWS KMS as a region's key-encryption key: `key_provider = { kind = "aws-kms", ... }`.

Data keys come from `GenerateDataKey` (AES_256) and are opened with `Decrypt`, both under
the EncryptionContext `{"region", "tenant", "key_id"}` (`keys.wrap_context`), so KMS itself
refuses a wrapped key moved to another tenant or region. `wrap` (rewrapping, a tenant moved
onto its own key) is `Encrypt`. Credentials come from boto3's usual chain (environment,
shared files, instance or pod role), never from Domicile's config.

A tenant with its own (customer-managed) KMS key has its data keys wrapped under that key
(`kek_for`): the customer disables or schedules it for deletion, and its content can no
longer be opened anywhere (the EKM promise, docs/KEYS.md). A key in another AWS region than
the configured one is refused: the client talks to one regional endpoint only.

Failures: KMS refusing a key or a wrap (`DisabledException`, `KMSInvalidStateException`,
`NotFoundException`, `AccessDeniedException`, `IncorrectKeyException`,
`InvalidCiphertextException`) raises `KekRefused` (a `KeyNotFound`; under a tenant's own key the
keystore keeps it and opening the tenant's content fails with `TenantKeyRefused`, a 403; under
the region's own key it becomes `KeyServiceUnavailable`, a 503); throttling, 5xx, timeouts and
connection errors (after botocore's retries) raise `KeyServiceUnavailable` (a 503). Messages
name the key id, the operation and KMS's error code; never a plaintext, a ciphertext or a
context.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from domicile.config import AwsKmsSettings

from .wrapping import KekRefused, KeyServiceUnavailable

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

__all__ = ["AwsKmsWrapper"]

DATA_KEY_BYTES = 32
# KMS saying "this key will not open that": the key is gone, off, not ours, or the wrap is
# not for this context. The tenant's content is unreadable until the customer acts.
_REFUSALS = frozenset({
    "InvalidCiphertextException",
    "DisabledException",
    "KMSInvalidStateException",
    "NotFoundException",
    "AccessDeniedException",
    "IncorrectKeyException",
    "InvalidKeyUsageException",
})
# Short, bounded waits: a request thread holding a lock must not hang on a KMS that is gone.
# botocore's "standard" mode retries throttling, 5xx and connection errors with backoff.
_CLIENT_CONFIG = Config(
    connect_timeout=3,
    read_timeout=10,
    retries={"max_attempts": 3, "mode": "standard"},
)


class AwsKmsWrapper:
    """Wraps and unwraps a region's data keys under a KMS key; holds no key material."""

    def __init__(self, settings: AwsKmsSettings, *, client: Any | None = None) -> None:
        self._key_id = settings.key_id
        self._region = settings.region
        if client is None:
            # A session of its own: boto3's default session is not thread-safe to create
            # clients from, a client is safe to share between threads.
            client = boto3.session.Session().client(
                "kms", region_name=settings.region, endpoint_url=settings.endpoint_url,
                config=_CLIENT_CONFIG)
        self._client: KMSClient = client

    def __repr__(self) -> str:
        return f"AwsKmsWrapper(key_id={self._key_id!r}, region={self._region!r})"

    @property
    def kek_id(self) -> str:
        return self._key_id

    def kek_for(self, tenant: str, tenant_kek: str | None) -> str:
        """The tenant's own KMS key when it has one, else the region's."""
        if tenant_kek is None:
            return self._key_id
        key_region = _arn_region(tenant_kek)
        if key_region is not None and key_region != self._region:
            raise ValueError(f"KMS key {tenant_kek} is in {key_region}; this region's keys "
                             f"must be in {self._region}")
        return tenant_kek

    def generate(self, kek_id: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        try:
            made = self._client.generate_data_key(
                KeyId=kek_id, KeySpec="AES_256", EncryptionContext=dict(context))
        except (ClientError, BotoCoreError) as exc:
            _raise_mapped(exc, "GenerateDataKey", kek_id)
        dek, wrapped = made["Plaintext"], made["CiphertextBlob"]
        if len(dek) != DATA_KEY_BYTES or not wrapped:
            raise KeyServiceUnavailable(
                f"KMS GenerateDataKey under {kek_id} returned a {len(dek)}-byte data key, "
                f"not {DATA_KEY_BYTES}")
        return dek, wrapped

    def wrap(self, kek_id: str, dek: bytes, context: Mapping[str, str]) -> bytes:
        if len(dek) != DATA_KEY_BYTES:
            raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes")
        try:
            made = self._client.encrypt(
                KeyId=kek_id, Plaintext=dek, EncryptionContext=dict(context))
        except (ClientError, BotoCoreError) as exc:
            _raise_mapped(exc, "Encrypt", kek_id)
        return made["CiphertextBlob"]

    def unwrap(self, wrapped: bytes, kek_id: str, context: Mapping[str, str]) -> bytes:
        try:
            opened = self._client.decrypt(
                CiphertextBlob=wrapped, KeyId=kek_id, EncryptionContext=dict(context))
        except (ClientError, BotoCoreError) as exc:
            _raise_mapped(exc, "Decrypt", kek_id)
        dek = opened["Plaintext"]
        if len(dek) != DATA_KEY_BYTES:
            raise KekRefused(f"KMS key {kek_id}: the wrap holds no {DATA_KEY_BYTES}-byte "
                              "data key")
        return dek


def _arn_region(key_id: str) -> str | None:
    """The AWS region named in a key or alias ARN; None for a bare key id or alias."""
    parts = key_id.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and parts[2] == "kms":
        return parts[3]
    return None


def _raise_mapped(exc: ClientError | BotoCoreError, operation: str, kek_id: str) -> NoReturn:
    """`KekRefused` for a refusal, `KeyServiceUnavailable` for anything that may pass. The
    original exception is not chained: its text is KMS's, and this message is enough."""
    if isinstance(exc, ParamValidationError):
        raise ValueError(f"KMS {operation}: invalid parameters") from None
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _REFUSALS:
            raise KekRefused(f"KMS key {kek_id} refused {operation} ({code})") from None
        # Throttling, KMSInternalException, DependencyTimeoutException, KeyUnavailable, bad or
        # expired credentials: nothing says the key is gone, so the caller answers 503.
        raise KeyServiceUnavailable(
            f"KMS {operation} under {kek_id} failed ({code}, HTTP {status})") from None
    raise KeyServiceUnavailable(
        f"KMS {operation} under {kek_id} unreachable ({type(exc).__name__})") from None
