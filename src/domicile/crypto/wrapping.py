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
`KeyNotFound`; a KMS that cannot be reached raises `KeyServiceUnavailable`, never "no such
key": a `DomicileError`, so every front door answers it 503 `key_service_unavailable` with
`retry-after`. The keystore turns a refusal of the region's own KEK into one too (see
`keystore`): only a tenant's own key being refused is the tenant's 403.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from domicile.errors import DomicileError

from ._errors import KeyNotFound, TenantKeyRefused

__all__ = ["KekRefused", "KeyServiceUnavailable", "KeyWrapper", "TenantKeyRefused"]


class KekRefused(KeyNotFound):
    """The KMS refused a wrap under its KEK: the key is disabled, deleted or no longer ours,
    or the wrap is not for this context. Opening the tenant's content fails with
    `TenantKeyRefused` until the key is usable again."""


class KeyServiceUnavailable(RuntimeError, DomicileError):
    """The KMS holding the KEK did not answer (network, throttling, 5xx), or refused the
    region's own KEK: retry later. A 503 `key_service_unavailable` with `retry-after` for API
    callers, whose message says nothing of the KMS; `str()` is the detail for logs and the
    CLI (operation, KEK id, error code: never key material)."""

    status = 503
    code = "key_service_unavailable"
    type = "server_error"

    def __init__(self, detail: str) -> None:
        DomicileError.__init__(
            self, "The region's key service (KMS or Vault) is unavailable; nothing was "
            "changed. Try again shortly.", headers=((b"retry-after", b"5"),))
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


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
