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
    keys = ManagedKeyProvider("eu", "postgresql://…/eu_keys", wrapper)  # a shared keystore:
                                                           # replicas of a postgresql region
    envelope.destroy_tenant_key("ws_123")                  # -> ShredReceipt; tombstoned:
    envelope.create_tenant_key("ws_123")                   # TenantErased (a KeyNotFound)
    keys.rotate_data_key("ws_123") / keys.rotate_data_keys()   # new current data key(s)

Every way opening can fail raises the one `DecryptionError`. Data keys, their versions, seal
counting, subkeys and tombstones: docs/KEYS.md.
"""

from ._context import Context
from ._errors import DecryptionError, KeyFileError, KeyNotFound, TenantErased
from .envelope import Envelope, ShredReceipt
from .keys import (
    DataKey,
    KeyProvider,
    KeyVersion,
    LocalKeyProvider,
    SealGrant,
    keystore_path,
    write_new_kek,
)
from .keystore import LocalFileWrapper, ManagedKeyProvider
from .wrapping import KeyServiceUnavailable, KeyWrapper

__all__ = [
    "Context",
    "DataKey",
    "DecryptionError",
    "Envelope",
    "KeyFileError",
    "KeyNotFound",
    "KeyProvider",
    "KeyServiceUnavailable",
    "KeyVersion",
    "KeyWrapper",
    "LocalFileWrapper",
    "LocalKeyProvider",
    "ManagedKeyProvider",
    "SealGrant",
    "ShredReceipt",
    "TenantErased",
    "keystore_path",
    "write_new_kek",
]
