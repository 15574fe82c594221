"""Key wrappers: who holds the key-encryption key (KEK) that wraps a region's data keys.

A `KeyWrapper` is the KMS half of a key provider; the keystore (where the wrapped data keys
live: a SQLite file, or a PostgreSQL database every replica shares) is the other half. The
shape is a cloud KMS's:

- `generate(context)` → (32 plaintext bytes, wrapped bytes): GenerateDataKey;
- `unwrap(wrapped, kek_id, context)` → the 32 bytes: Decrypt;
- `wrap(dek, context)` → wrapped bytes under the current KEK: Encrypt (for rewrapping).

`context` is `{"region", "tenant", "key_id"}` (`keys.wrap_context`), bound into every wrap
(KMS EncryptionContext, AES-GCM associated data, Vault transit context), so a wrapped key
moved to another tenant or region does not unwrap.

`kek_id` names the KEK a wrap was made under (a local key's fingerprint, a KMS key ARN, a
Vault key name); the keystore stores it per data key so rows wrapped under an older or a
tenant's own (customer-managed) KEK stay readable. `kek_for(tenant)` lets a wrapper wrap one
tenant under its own key (the EKM promise: disable that key and the tenant cannot be read).

Failures: a wrap the KEK refuses (wrong context, key disabled or deleted, not ours) raises
`KeyNotFound`; a KMS that cannot be reached raises `KeyServiceUnavailable`, which callers
turn into 503, never into "no such key".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ._errors import KeyNotFound, TenantKeyRefused

__all__ = ["KekRefused", "KeyServiceUnavailable", "KeyWrapper", "TenantKeyRefused"]


class KekRefused(KeyNotFound):
    """The KMS refused a wrap under its KEK: the key is disabled, deleted or no longer ours,
    or the wrap is not for this context. Opening the tenant's content fails with
    `TenantKeyRefused` until the key is usable again."""


class KeyServiceUnavailable(RuntimeError):
    """The KMS holding the KEK did not answer (network, throttling, 5xx): retry later."""


class KeyWrapper(Protocol):
    """Holds a region's KEK(s); never exposes them."""

    @property
    def kek_id(self) -> str:
        """The KEK new data keys are wrapped under (unless a tenant has its own)."""
        ...

    def kek_for(self, tenant: str, tenant_kek: str | None) -> str:
        """The KEK to wrap `tenant`'s new data keys under: its own when it has one."""
        ...

    def generate(self, kek_id: str, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        """A fresh 32-byte data key and its wrap under `kek_id`, bound to `context`."""
        ...

    def wrap(self, kek_id: str, dek: bytes, context: Mapping[str, str]) -> bytes:
        """`dek` wrapped under `kek_id`, bound to `context` (rewrapping, KEK rotation)."""
        ...

    def unwrap(self, wrapped: bytes, kek_id: str, context: Mapping[str, str]) -> bytes:
        """The data key `wrapped` holds; `KeyNotFound` if the KEK refuses it."""
        ...
