"""Envelope encryption for Domicile: where G5 (encrypted at rest, bound to region, tenant and
record) and the key side of G9 (crypto-shredding) live.

A small, misuse-resistant surface over `cryptography.hazmat`, which no other package imports:

    keys = LocalKeyProvider("eu", Path("eu/kek.key"))      # KEK file + wrapped data keys
    keystore_path(Path("eu/kek.key"))                      # where those are: eu/kek.key.keystore.db
    envelope = Envelope(keys)
    envelope.create_tenant_key("ws_123")
    ctx = Context(region="eu", tenant="ws_123", kind="message", record_id="msg_1")
    token = envelope.seal(b"hello", ctx)
    envelope.open(token, ctx)                              # b"hello"; else DecryptionError
    envelope.seal_stream(chunks, ctx) / open_stream(...)    # large blobs, segmented
    envelope.destroy_tenant_key("ws_123")                  # -> ShredReceipt

Every way opening can fail raises the one `DecryptionError`.
"""

from ._context import Context
from ._errors import DecryptionError, KeyFileError, KeyNotFound
from .envelope import Envelope, ShredReceipt
from .keys import KeyProvider, LocalKeyProvider, keystore_path, write_new_kek

__all__ = [
    "Context",
    "DecryptionError",
    "Envelope",
    "KeyFileError",
    "KeyNotFound",
    "KeyProvider",
    "LocalKeyProvider",
    "ShredReceipt",
    "keystore_path",
    "write_new_kek",
]
