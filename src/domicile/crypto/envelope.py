"""`Envelope`: seal and open content under the tenant's data key, bound to a `Context` (G5).

Record format (`seal` / `open`):

    0x01 | len(key_id) (1 byte) | key_id (ASCII) | nonce (12 random bytes) | AES-256-GCM ct+tag
    associated data = everything before the ciphertext | Context encoding

Blob format (`seal_stream`, `seal_blob`, ...): see `_stream`.

Data keys are unwrapped once and cached in this process only, as ready AES-GCM objects, for
`cache_ttl_s` seconds. Destroying a tenant's keys through *this* envelope evicts them at once;
a destruction by *another* process (another server worker, the CLI) takes effect here when the
cached entry expires, i.e. within `cache_ttl_s` (default 5 minutes). Until then this process can
still open the tenant's content and would seal new content under the destroyed key (unreadable
afterwards). Pass `cache_ttl_s=0` to ask the key provider on every call.

Data key versions and counting: `seal` and the blob sealers use the tenant's current data key
and count every seal against a block reserved from the key provider (`reserve_seals`), in
memory; an exhausted block reserves the next one, which rotates the key once it reached its
limit. When a cached key expires, the provider is asked for the current key id: a rotation by
another process is picked up then (the rest of the old block is dropped, never used).

Subkeys: a data key of scheme 2 is never used directly: HKDF-SHA256 derives from it one
AES-256-GCM key for records and one key-derivation key (HMAC-SHA256) for blob keys, under
distinct labels. A scheme-1 key (made before schemes existed) is used as both, as it was.
The record and blob formats are the same for both schemes: the key id says which key.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import NamedTuple, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _stream
from ._context import Context
from ._errors import DecryptionError, KeyNotFound, TenantKeyRefused
from ._nonces import take_nonce
from ._stream import Chunk
from .keys import KEY_SIZE, SCHEME_DIRECT, SCHEME_HKDF, DataKey, KeyProvider
from .wrapping import KekRefused

__all__ = ["Envelope", "ShredReceipt"]

RECORD_VERSION = 0x01
_NONCE = 12
_monotonic = time.monotonic
_MAX_CACHED = 10_000  # past this, expired entries are swept on the next miss
_RECORD_KEY_INFO = b"domicile/dek/record-key/v2"  # HKDF labels of the two subkeys (scheme 2)
_BLOB_KDK_INFO = b"domicile/dek/blob-kdk/v2"


@dataclass(frozen=True, slots=True)
class ShredReceipt:
    """What `destroy_tenant_key` did: proof material for an erasure request (G9)."""

    region: str
    tenant: str
    keys_destroyed: int
    destroyed_at: datetime

    @property
    def statement(self) -> str:
        when = self.destroyed_at.isoformat(timespec="seconds")
        return (
            f"Content of tenant {self.tenant} in region {self.region} can no longer be decrypted:"
            f" its {self.keys_destroyed} data key(s) were destroyed at {when}."
        )


class _SealKey(NamedTuple):
    expires: float  # after this, ask the provider whether the key is still current
    aead: AESGCM
    record_prefix: bytes  # 0x01 | len | key id
    blob_prefix: bytes  # 0x02 | len | key id
    kdk: hmac.HMAC  # keyed HMAC-SHA256, copied to derive per-blob keys
    key_id: str
    taken: itertools.count[int]  # seals taken from the reserved block; shared across renewals
    granted: int  # the block's size: ticket numbers below it may seal


class _OpenKey(NamedTuple):
    expires: float
    aead: AESGCM
    kdk: hmac.HMAC


class Envelope:
    """Seal/open records and blobs for one region's key provider."""

    def __init__(
        self, keys: KeyProvider, *, segment_size: int = 65536, cache_ttl_s: float = 300.0
    ) -> None:
        if not _stream.MIN_SEGMENT <= segment_size <= _stream.MAX_SEGMENT:
            raise ValueError(
                f"segment_size must be between {_stream.MIN_SEGMENT} and {_stream.MAX_SEGMENT}"
            )
        if cache_ttl_s < 0:
            raise ValueError("cache_ttl_s must be >= 0")
        self._keys = keys
        self._region = keys.region
        self._segment_size = segment_size
        self._ttl = float(cache_ttl_s)
        self._sealing: dict[str, _SealKey] = {}
        self._opening: dict[tuple[str, bytes], _OpenKey] = {}
        # A destroy bumps the epoch under the lock; a key looked up before that is then not
        # cached, so a concurrent lookup cannot put a destroyed key back into the cache.
        self._epoch = 0
        self._cache_lock = threading.Lock()
        self._refill_lock = threading.Lock()  # one reservation at a time, not one per thread

    def __repr__(self) -> str:
        return f"Envelope(region={self._region!r}, keys={self._keys!r})"

    @property
    def region(self) -> str:
        return self._region

    # -- records -------------------------------------------------------------------------
    # The two hot paths: every line here is measured (bench/crypto/bench_envelope.py).

    def seal(self, plaintext: bytes, context: Context) -> bytes:
        """Encrypt one record under the tenant's current data key, bound to `context`."""
        key = self._sealing.get(context.tenant)
        # Inlined `_sealing_key`: a ticket from the block, the TTL, the region; else refill.
        if (key is None or next(key.taken) >= key.granted or key.expires < _monotonic()
                or context.region != self._region):
            key = self._refill(context)
        nonce = take_nonce()
        header = key.record_prefix + nonce
        return header + key.aead.encrypt(nonce, plaintext, header + context._aad)

    def open(self, ciphertext: bytes, context: Context) -> bytes:
        """Decrypt a record sealed for exactly this `context`, else `DecryptionError`."""
        if context.region != self._region:
            raise DecryptionError()
        try:
            if ciphertext[0] != RECORD_VERSION:
                raise DecryptionError()
            nonce_at = 2 + ciphertext[1]
            key_id = ciphertext[2:nonce_at]
            key = self._opening.get((context.tenant, key_id))
            if key is None or key.expires < _monotonic():
                key = self._load_opening(context.tenant, key_id)
            body = nonce_at + _NONCE
            return key.aead.decrypt(
                ciphertext[nonce_at:body], ciphertext[body:], ciphertext[:body] + context._aad
            )
        except (InvalidTag, IndexError, ValueError):
            raise DecryptionError() from None  # ValueError: a nonce cut short
        except TypeError:
            if type(ciphertext) is bytes:
                raise
            # e.g. a memoryview from a database driver: its slices cannot be dict keys
            return self.open(bytes(ciphertext), context)

    # -- blobs ---------------------------------------------------------------------------

    def seal_stream(self, chunks: Iterable[Chunk], context: Context) -> Iterator[bytes]:
        """Encrypt plaintext chunks (any sizes) into the segmented blob format, lazily."""
        header, aead = self._new_blob(context)  # eager: a bad context fails at the call
        return _stream.seal_segments(chunks, header, aead)

    def open_stream(self, chunks: Iterable[Chunk], context: Context) -> Iterator[bytes]:
        """Decrypt a segmented blob given in chunks of any sizes; yields verified plaintext.

        Truncation is detected at the end: the data is complete only if the iterator finishes
        without `DecryptionError`.
        """
        if context.region != self._region:
            raise DecryptionError()
        return self._open_stream(iter(chunks), context)

    def seal_blob(self, plaintext: bytes, context: Context) -> bytes:
        """`b"".join(seal_stream([plaintext], context))`, without the intermediate copies."""
        header, aead = self._new_blob(context)
        return _stream.seal_all(plaintext, header, aead)

    def open_blob(self, data: bytes, context: Context) -> bytes:
        """`b"".join(open_stream([data], context))`, without the intermediate copies."""
        if context.region != self._region:
            raise DecryptionError()
        with memoryview(data).cast("B") as view:
            header = _stream.BlobHeader.read(view)
        return _stream.open_all(data, header, self._blob_key(header, context))

    def _sealing_key(self, context: Context) -> _SealKey:
        """The tenant's current data key with one seal taken from its block (see `seal`)."""
        key = self._sealing.get(context.tenant)
        if (key is None or next(key.taken) >= key.granted or key.expires < _monotonic()
                or context.region != self._region):
            key = self._refill(context)
        return key

    def _refill(self, context: Context) -> _SealKey:
        """The slow path of `_sealing_key`: check the region, renew an expired entry if its
        key is still current, or reserve a new block (which may rotate the key)."""
        if context.region != self._region:
            raise ValueError(
                f"context is for region {context.region!r}, this envelope seals {self._region!r}"
            )
        tenant = context.tenant
        with self._refill_lock:
            epoch = self._epoch
            key = self._sealing.get(tenant)
            if key is not None and key.expires >= _monotonic():
                if next(key.taken) < key.granted:
                    return key  # another thread refilled meanwhile
                key = None
            elif key is not None:
                current = self._keys.current_key(tenant)  # KeyNotFound, TenantErased: say so
                if current.key_id == key.key_id and next(key.taken) < key.granted:
                    key = key._replace(expires=self._expiry())
                else:
                    key = None  # rotated elsewhere or used up: drop the rest of the block
            if key is None:
                key = self._reserve(tenant)
            with self._cache_lock:
                if self._epoch == epoch:
                    _remember(self._sealing, tenant, key)
                    if self._ttl:
                        _remember(self._opening, (tenant, key.record_prefix[2:]),
                                  _OpenKey(key.expires, key.aead, key.kdk))
        return key

    def _reserve(self, tenant: str) -> _SealKey:
        """A new block of seals under the current key, one of them taken."""
        grant = self._keys.reserve_seals(tenant)
        key_id = grant.key.key_id
        encoded = key_id.encode("ascii")
        if not 0 < len(encoded) <= 255 or grant.seals < 1:
            raise ValueError("key provider returned a malformed data key")
        aead, kdk = _prepare(grant.key)
        taken = itertools.count()
        next(taken)  # the seal this reservation is for
        return _SealKey(
            self._expiry(), aead,
            bytes((RECORD_VERSION, len(encoded))) + encoded,
            bytes((_stream.BLOB_VERSION, len(encoded))) + encoded,
            kdk, key_id, taken, grant.seals,
        )

    def _expiry(self) -> float:
        # With no TTL the entry only keeps the block: every seal asks the provider first.
        return _monotonic() + self._ttl if self._ttl else float("-inf")

    def _new_blob(self, context: Context) -> tuple[_stream.BlobHeader, AESGCM]:
        key = self._sealing_key(context)
        header = _stream.BlobHeader.new(key.blob_prefix, self._segment_size)
        return header, _derive(key.kdk, header, context)

    def _open_stream(self, chunks: Iterator[Chunk], context: Context) -> Iterator[bytes]:
        head = bytearray()
        for chunk in chunks:  # gather the header, however the input is cut
            if not head and type(chunk) is bytes and _stream.BlobHeader.within(chunk):
                # The usual case: the first chunk holds the header. bytes are immutable, so
                # the rest can be passed on as a view instead of a copy.
                header = _stream.BlobHeader.read(chunk)
                rest: bytes | memoryview = memoryview(chunk)[len(header.raw) :]
                break
            head += chunk
            if _stream.BlobHeader.within(head):
                header = _stream.BlobHeader.read(head)
                rest = bytes(head[len(header.raw) :])
                break
        else:
            raise DecryptionError()  # ended inside the header
        del head
        key = self._blob_key(header, context)
        yield from _stream.open_segments(chain((rest,), chunks), header, key)

    def _blob_key(self, header: _stream.BlobHeader, context: Context) -> AESGCM:
        key = self._opening.get((context.tenant, header.key_id))
        if key is None or key.expires < _monotonic():
            key = self._load_opening(context.tenant, header.key_id)
        return _derive(key.kdk, header, context)

    # -- keys ----------------------------------------------------------------------------

    def create_tenant_key(self, tenant: str) -> str:
        """Create the tenant's data key if it has none (idempotent); return its key id."""
        return self._keys.create_data_key(tenant)

    def destroy_tenant_key(self, tenant: str) -> ShredReceipt:
        """Crypto-shred: destroy every data key of the tenant in this region (G9)."""
        self._forget(tenant)
        destroyed = self._keys.destroy_tenant(tenant)
        self._forget(tenant)  # anything a concurrent lookup cached meanwhile
        return ShredReceipt(self._region, tenant, destroyed, datetime.now(UTC))

    def _forget(self, tenant: str) -> None:
        with self._cache_lock:
            self._epoch += 1
            self._sealing.pop(tenant, None)
            for cached in [k for k in list(self._opening) if k[0] == tenant]:
                self._opening.pop(cached, None)

    def _load_opening(self, tenant: str, key_id: bytes) -> _OpenKey:
        epoch = self._epoch
        try:
            data_key = self._keys.key_by_id(tenant, key_id.decode("ascii"))
            aead, kdk = _prepare(data_key)
        except KekRefused:  # the KMS refused the tenant's KEK: say so (see TenantKeyRefused)
            raise TenantKeyRefused() from None
        except (KeyNotFound, UnicodeDecodeError, ValueError):
            raise DecryptionError() from None
        key = _OpenKey(_monotonic() + self._ttl, aead, kdk)
        with self._cache_lock:
            if self._epoch == epoch and self._ttl:
                _remember(self._opening, (tenant, key_id), key)
        return key


class _Expiring(Protocol):
    @property
    def expires(self) -> float: ...


_K = TypeVar("_K")
_V = TypeVar("_V", bound=_Expiring)


def _remember(cache: dict[_K, _V], name: _K, key: _V) -> None:
    if len(cache) >= _MAX_CACHED:  # bound the memory held by tenants no longer in use
        now = _monotonic()
        for stale in [k for k, v in list(cache.items()) if v.expires < now]:
            cache.pop(stale, None)
    cache[name] = key


def _prepare(key: DataKey) -> tuple[AESGCM, hmac.HMAC]:
    """The cached forms of a data key: the record AEAD and the blob key-derivation key. The raw
    bytes are not kept (Python cannot wipe them, but nothing here holds on to them)."""
    dek = key.material
    if len(dek) != KEY_SIZE:
        raise ValueError("key provider returned a malformed data key")
    if key.scheme == SCHEME_HKDF:
        return AESGCM(_subkey(dek, _RECORD_KEY_INFO)), hmac.new(
            _subkey(dek, _BLOB_KDK_INFO), digestmod=hashlib.sha256)
    if key.scheme == SCHEME_DIRECT:
        return AESGCM(dek), hmac.new(dek, digestmod=hashlib.sha256)
    raise ValueError(f"data key {key.key_id} has an unknown scheme")


def _subkey(dek: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(dek)


def _derive(kdk: hmac.HMAC, header: _stream.BlobHeader, context: Context) -> AESGCM:
    """The blob's own key: HMAC-SHA256(KDK, label | header | context), see `_stream` (the KDK
    is the data key itself for scheme 1, its HKDF subkey for scheme 2)."""
    mac = kdk.copy()
    mac.update(_stream.BLOB_LABEL)
    mac.update(header.raw)
    mac.update(context._aad)
    return AESGCM(mac.digest())
