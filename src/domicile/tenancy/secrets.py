"""Identifiers and credentials: ids, API keys (`dk-<region>-…`), workspace tokens (`dw-…`).

A credential is shown once and kept only as HMAC-SHA256 under the site's secret, so a copy
of the directory cannot be used to authenticate; lookups compare digests in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
from hashlib import sha256
from pathlib import Path

__all__ = [
    "SITE_SECRET_BYTES",
    "CredentialHasher",
    "load_site_secret",
    "new_credential",
    "new_id",
    "write_site_secret",
]

SITE_SECRET_BYTES = 32


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def new_credential(kind: str, region: str) -> str:
    """`dk-eu-…` (API key) or `dw-eu-…` (workspace token): the region is readable up front."""
    return f"{kind}-{region}-{secrets.token_urlsafe(32)}"


class CredentialHasher:
    """Keyed digests of credentials. Its repr shows nothing of the key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < SITE_SECRET_BYTES:
            raise ValueError("the site secret must be at least 32 bytes")
        self._key = key

    def digest(self, credential: str) -> str:
        return hmac.new(self._key, credential.encode("utf-8"), sha256).hexdigest()

    @staticmethod
    def matches(stored: str, presented: str) -> bool:
        return hmac.compare_digest(stored.encode("ascii"), presented.encode("ascii"))

    def __repr__(self) -> str:
        return "CredentialHasher(<secret>)"


def write_site_secret(path: Path) -> None:
    """A fresh secret, mode 0600; refuses to overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(SITE_SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)


def load_site_secret(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) != SITE_SECRET_BYTES:
        raise ValueError(f"{path} must hold exactly {SITE_SECRET_BYTES} bytes")
    return data
