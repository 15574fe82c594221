"""The crypto package's exceptions.

`DecryptionError` is deliberately the only thing `Envelope.open*` raises for bad input: one
exception with one generic message for every way opening can fail, so callers cannot build an
oracle out of *why* it failed (the pyca Fernet / Tink habit).
"""

from __future__ import annotations

__all__ = ["DecryptionError", "KeyFileError", "KeyNotFound", "TenantErased"]


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
