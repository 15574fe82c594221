"""Ed25519 signatures for evidence that leaves the site (audit receipts, G8).

A thin, typed surface over `cryptography`'s Ed25519 so that `cryptography.hazmat` stays
inside this package: `SigningKey` signs, `VerifyKey` checks, `BadSignature` is the one error
of a signature that does not verify. Keys travel as their 32 raw bytes.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = ["BadSignature", "SigningKey", "VerifyKey"]


class BadSignature(Exception):
    """The signature was not made by this key over these bytes."""


class VerifyKey:
    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"VerifyKey({self.public_bytes_raw().hex()[:16]}…)"

    @classmethod
    def from_public_bytes(cls, raw: bytes) -> VerifyKey:
        """ValueError unless `raw` is a 32-byte Ed25519 public key."""
        return cls(Ed25519PublicKey.from_public_bytes(raw))

    def public_bytes_raw(self) -> bytes:
        return self._key.public_bytes_raw()

    def verify(self, signature: bytes, data: bytes) -> None:
        """Return if `signature` is this key's over `data`, else `BadSignature`."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            raise BadSignature() from None


class SigningKey:
    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def __repr__(self) -> str:  # never the private bytes
        return f"SigningKey(public={self.public_key().public_bytes_raw().hex()[:16]}…)"

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SigningKey:
        """ValueError unless `raw` is a 32-byte Ed25519 private key."""
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes_raw(self) -> bytes:
        return self._key.private_bytes_raw()

    def public_key(self) -> VerifyKey:
        return VerifyKey(self._key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)
