"""The segmented ("streaming AEAD") format for large blobs, after Tink's AES-GCM-HKDF streaming
and the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015).

    header  = 0x02 | len(key_id) (1 byte) | key_id (ASCII) | segment_size (u32 BE)
              | salt (16 random bytes) | nonce_prefix (7 random bytes)
    blob key = HMAC-SHA256(DEK, "domicile/blob/v1" | header | context encoding)
    segment i = AES-256-GCM(blob key, nonce = nonce_prefix | u32be(i) | final flag (0 or 1),
                            plaintext_i, no associated data)

Every segment but the last holds exactly `segment_size` plaintext bytes; the last holds fewer,
possibly zero (so an empty blob is one empty final segment). A reader therefore knows where each
segment ends without looking ahead, and:
- reordered or duplicated segments fail: the index is in the nonce;
- dropping trailing segments fails: the new last segment was sealed with final = 0, or no short
  segment ends the stream;
- appending fails: nothing may follow the final segment;
- changing the header (key id, segment size, salt, prefix) or the context changes the blob key,
  so the first segment fails.

Why a key per blob: with a random 7-byte nonce prefix alone, the chance of two blobs under one
data key sharing a prefix passes 2**-32 after a few thousand blobs (birthday bound); a fresh
128-bit salt makes every blob's key independent, as in Tink.

Streaming decryption releases each segment only after its tag verified, but a truncated stream
is only detected at its end: a consumer must not treat what it read as complete until the
iterator finished without `DecryptionError`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import DecryptionError

__all__ = [
    "BLOB_VERSION",
    "MAX_SEGMENT",
    "MIN_SEGMENT",
    "BlobHeader",
    "Chunk",
    "open_all",
    "open_segments",
    "seal_all",
    "seal_segments",
]

BLOB_VERSION: Final = 0x02
BLOB_LABEL: Final = b"domicile/blob/v1"
MIN_SEGMENT: Final = 16
MAX_SEGMENT: Final = 1 << 24  # bounds what a reader buffers before the first tag check
_TAG: Final = 16
_TAIL: Final = 4 + 16 + 7  # segment size, salt, nonce prefix
_MAX_SEGMENTS: Final = 1 << 32
_NONFINAL: Final = b"\x00"
_FINAL: Final = b"\x01"

Chunk = bytes | bytearray | memoryview  # what chunked input may be made of

# encrypt_into/decrypt_into arrived in a recent cryptography release; the project's floor may
# predate them, and then the whole-blob helpers fall back to joining segments (one more copy).
_HAS_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")


class BlobHeader:
    """A parsed blob header (the raw bytes are what the blob key is derived from)."""

    __slots__ = ("key_id", "nonce_prefix", "raw", "segment_size")

    def __init__(self, raw: bytes, key_id: bytes, segment_size: int, nonce_prefix: bytes) -> None:
        self.raw = raw
        self.key_id = key_id
        self.segment_size = segment_size
        self.nonce_prefix = nonce_prefix

    @staticmethod
    def new(key_prefix: bytes, segment_size: int) -> BlobHeader:
        """A fresh header; `key_prefix` is `0x02 | len(key_id) | key_id`."""
        raw = key_prefix + segment_size.to_bytes(4, "big") + os.urandom(16 + 7)
        return BlobHeader(raw, key_prefix[2:], segment_size, raw[-7:])

    @staticmethod
    def length(first_two: bytes | bytearray | memoryview) -> int:
        """The header's total length, from its first two bytes."""
        if first_two[0] != BLOB_VERSION:
            raise DecryptionError()
        return 2 + first_two[1] + _TAIL

    @staticmethod
    def within(data: bytes | bytearray | memoryview) -> bool:
        """Whether `data` is long enough to hold the whole header it starts with."""
        return len(data) >= 2 and len(data) >= BlobHeader.length(data)

    @staticmethod
    def read(data: bytes | bytearray | memoryview) -> BlobHeader:
        """Parse the header `data` starts with, else `DecryptionError`."""
        if not BlobHeader.within(data):
            raise DecryptionError()
        raw = bytes(data[: BlobHeader.length(data)])
        key_end = 2 + raw[1]
        segment_size = int.from_bytes(raw[key_end : key_end + 4], "big")
        if not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
            raise DecryptionError()
        return BlobHeader(raw, raw[2:key_end], segment_size, raw[-7:])


def _nonce(prefix: bytes, index: int, flag: bytes) -> bytes:
    if index >= _MAX_SEGMENTS:
        raise ValueError("blob too large for its segment size")
    return prefix + index.to_bytes(4, "big") + flag


def _pieces(chunks: Iterable[Chunk], size: int) -> Iterator[tuple[Chunk, bool]]:
    """Re-cut chunks of any sizes into pieces of exactly `size` bytes, then the shorter
    last piece (possibly empty): `(piece, is_last)`. A piece is valid only until the next
    one is pulled (big chunks are sliced as views, without copying)."""
    pending = bytearray()  # fewer than `size` bytes, carried between chunks
    for chunk in chunks:
        # Released before the next chunk is pulled, so a producer may reuse its buffer.
        with memoryview(chunk).cast("B") as view:
            n, pos = view.nbytes, 0
            if pending:
                pos = min(size - len(pending), n)
                pending += view[:pos]
                if len(pending) < size:
                    continue
                yield pending, False
                pending.clear()
            while n - pos >= size:
                with view[pos : pos + size] as piece:  # released when the consumer moves on
                    yield piece, False
                pos += size
            pending += view[pos:]
    yield pending, True


def seal_segments(
    chunks: Iterable[Chunk], header: BlobHeader, aead: AESGCM
) -> Iterator[bytes]:
    """Yield the header, then each sealed segment, for plaintext chunks of any sizes."""
    yield header.raw
    seal, prefix = aead.encrypt, header.nonce_prefix
    for index, (piece, last) in enumerate(_pieces(chunks, header.segment_size)):
        yield seal(_nonce(prefix, index, _FINAL if last else _NONFINAL), piece, None)


def seal_all(plaintext: bytes, header: BlobHeader, aead: AESGCM) -> bytes:
    """`b"".join(seal_segments([plaintext], ...))`, written straight into one output buffer."""
    if not _HAS_INTO:
        return b"".join(seal_segments((plaintext,), header, aead))
    size, prefix, raw = header.segment_size, header.nonce_prefix, header.raw
    with memoryview(plaintext).cast("B") as src:
        length = src.nbytes
        full = length // size  # segments of exactly `size` bytes, then one shorter
        final_nonce = _nonce(prefix, full, _FINAL)  # checks the segment count once
        out, view = _output(len(raw) + length + _TAG * (full + 1))
        view[: len(raw)] = raw
        at, pos = len(raw), 0
        seal_into = aead.encrypt_into
        for index in range(full):
            at += seal_into(
                prefix + index.to_bytes(4, "big") + _NONFINAL, src[pos : pos + size], None,
                view[at : at + size + _TAG],
            )
            pos += size
        seal_into(final_nonce, src[pos:], None, view[at:])
    view.release()
    return out.getvalue()


def open_segments(
    chunks: Iterable[Chunk], header: BlobHeader, aead: AESGCM
) -> Iterator[bytes]:
    """Yield verified plaintext segments from the ciphertext after the header, in any chunking."""
    opn, prefix = aead.decrypt, header.nonce_prefix
    full = header.segment_size + _TAG  # a sealed segment of exactly this length is not final
    try:
        for index, (piece, last) in enumerate(_pieces(chunks, full)):
            if last and len(piece) < _TAG:
                raise DecryptionError()  # truncated: no final segment
            yield opn(_nonce(prefix, index, _FINAL if last else _NONFINAL), piece, None)
    except (InvalidTag, ValueError):
        raise DecryptionError() from None


def open_all(data: bytes, header: BlobHeader, aead: AESGCM) -> bytes:
    """`b"".join(open_segments(...))` for a whole blob in memory, into one output buffer."""
    if not _HAS_INTO:
        with memoryview(data).cast("B") as src:
            return b"".join(open_segments((src[len(header.raw) :],), header, aead))
    prefix, size = header.nonce_prefix, header.segment_size
    full_ct = size + _TAG
    with memoryview(data).cast("B") as src:
        body = src.nbytes - len(header.raw)
        full = body // full_ct
        last = body - full * full_ct  # the final segment: shorter than a full one
        if last < _TAG:
            raise DecryptionError()
        if full >= _MAX_SEGMENTS:
            raise DecryptionError()
        final_nonce = _nonce(prefix, full, _FINAL)
        out, view = _output(full * size + last - _TAG)
        try:
            pos, at = len(header.raw), 0
            open_into = aead.decrypt_into
            for index in range(full):
                at += open_into(
                    prefix + index.to_bytes(4, "big") + _NONFINAL, src[pos : pos + full_ct],
                    None, view[at : at + size],
                )
                pos += full_ct
            open_into(final_nonce, src[pos:], None, view[at:])
        except (InvalidTag, ValueError):
            raise DecryptionError() from None
        finally:
            view.release()
    return out.getvalue()


def _output(size: int) -> tuple[io.BytesIO, memoryview]:
    """A writable buffer of `size` bytes whose contents become a `bytes` without a copy.

    `BytesIO.getvalue()` hands over its internal bytes object when nothing else references it,
    so filling it through `getbuffer()` avoids the final 1 MiB copy that `bytes(bytearray)` or
    `b"".join` would cost (measured: that copy alone is a third of the encryption time).
    """
    out = io.BytesIO()
    if size:
        out.seek(size - 1)
        out.write(b"\x00")
    return out, out.getbuffer()
