"""The crypto package's exceptions.

`DecryptionError` is deliberately the only thing `Envelope.open*` raises for bad input: one
exception with one generic message for every way opening can fail, so callers cannot build an
oracle out of *why* it failed (the pyca Fernet / Tink habit).
"""

from __future__ import annotations

from domicile.errors import DomicileError

__all__ = [
    "DataKeysNotRotated",
    "DecryptionError",
    "KeyFileError",
    "KeyNotFound",
    "TenantErased",
    "TenantKeyRefused",
]


class DecryptionError(Exception):
    """The ciphertext could not be opened for this context (any reason, deliberately vague)."""

    def __init__(self, message: str = "ciphertext cannot be decrypted for this context") -> None:
        super().__init__(message)


class KeyNotFound(LookupError):
    """The tenant has no usable data key (never created, destroyed, or unknown key id)."""


class KeyFileError(ValueError):
    """A key-encryption-key file that cannot be used; the message names the path."""


class TenantErased(KeyNotFound):
    """The tenant's data keys were destroyed (crypto-shredded): none is ever made again."""


class TenantKeyRefused(DecryptionError, DomicileError):
    """The key service refused the KEK that wraps the tenant's data keys (a customer-managed
    key disabled, scheduled for deletion or its access revoked: the EKM promise), so nothing
    of the tenant opens or is sealed until it is usable again. Unlike other `DecryptionError`s
    it says why: the state of a KEK is not something a ciphertext can probe. A 403 for API
    callers; no key id, no key material."""

    status = 403
    code = "tenant_key_refused"
    type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__("this tenant's content cannot be opened: the key service refused its "
                         "key-encryption key (disabled, scheduled for deletion or access "
                         "revoked); it opens again once that key is usable")


class DataKeysNotRotated(DomicileError):
    """`rotate_data_keys` rotated every tenant it could, but the key service refused these
    tenants' own key-encryption keys (customer-managed, disabled or revoked): they keep their
    current data key. Names the tenants (ids, no key ids); `rotated` counts the others."""

    status = 403
    code = "tenant_key_refused"
    type = "invalid_request_error"

    def __init__(self, region: str, rotated: int, tenants: list[str]) -> None:
        super().__init__(
            f"region {region}: {rotated} tenant(s) got a new data key; not rotated, the key "
            f"service refused their own key-encryption key: {', '.join(tenants)}")
        self.rotated = rotated
        self.tenants = tuple(tenants)
