"""G5 for large blobs: the segmented format round-trips in any chunking, and truncation,
reordering, duplication, appending or moving a blob are all detected."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.crypto import Context, DecryptionError, Envelope, LocalKeyProvider, _stream
from tests.crypto.support import SMALL_SEGMENT, context

TAG = 16


def cut(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """`data` in consecutive pieces of the given sizes (cycled; zero-size pieces included)."""
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        yield data[pos : pos + size]
        pos += size
        i += 1


def header_len(blob: bytes) -> int:
    return 2 + blob[1] + 4 + 16 + 7


def segments(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Split a sealed blob into its header and sealed segments (test-side format knowledge)."""
    head, body, full = header_len(blob), blob[header_len(blob) :], SMALL_SEGMENT + TAG
    return blob[:head], [body[i : i + full] for i in range(0, len(body), full)]


def opened(envelope: Envelope, chunks: Iterable[bytes], ctx: Context) -> bytes:
    return b"".join(envelope.open_stream(chunks, ctx))


chunk_sizes = st.lists(st.integers(min_value=0, max_value=3 * SMALL_SEGMENT), max_size=6)


@settings(max_examples=150, deadline=None)
@given(plaintext=st.binary(max_size=8 * SMALL_SEGMENT), seal_cuts=chunk_sizes,
       open_cuts=chunk_sizes)
def test_stream_round_trips_for_any_size_and_any_chunking(
    shared_envelope: Envelope, plaintext: bytes, seal_cuts: list[int], open_cuts: list[int]
) -> None:
    ctx = context()
    pieces = [*cut(plaintext, [s or 1 for s in seal_cuts]), b""]  # an empty chunk too
    blob = b"".join(shared_envelope.seal_stream(pieces, ctx))
    assert opened(shared_envelope, cut(blob, [s or 1 for s in open_cuts]), ctx) == plaintext
    assert shared_envelope.open_blob(blob, ctx) == plaintext
    # seal_blob writes the very same format
    same = shared_envelope.seal_blob(plaintext, ctx)
    assert len(same) == len(blob)
    assert opened(shared_envelope, cut(same, [s or 1 for s in open_cuts]), ctx) == plaintext


@pytest.mark.parametrize("size", [0, 1, SMALL_SEGMENT - 1, SMALL_SEGMENT, SMALL_SEGMENT + 1,
                                  3 * SMALL_SEGMENT])
def test_blob_sizes_at_segment_boundaries_round_trip(
    envelope: Envelope, ctx: Context, size: int
) -> None:
    plaintext = os.urandom(size)
    blob = envelope.seal_blob(plaintext, ctx)
    # segments of exactly segment_size, then one shorter (possibly empty) final segment
    assert len(segments(blob)[1]) == size // SMALL_SEGMENT + 1
    assert envelope.open_blob(blob, ctx) == plaintext
    assert opened(envelope, [blob], ctx) == plaintext
    assert opened(envelope, cut(blob, [1]), ctx) == plaintext


def test_empty_plaintext_is_a_valid_blob(envelope: Envelope, ctx: Context) -> None:
    blob = b"".join(envelope.seal_stream([], ctx))
    assert len(segments(blob)[1]) == 1
    assert envelope.open_blob(blob, ctx) == b""
    assert opened(envelope, [blob], ctx) == b""


def test_huge_and_tiny_chunks_work_with_the_default_segment_size(
    keys: LocalKeyProvider, ctx: Context
) -> None:
    envelope = Envelope(keys)  # 64 KiB segments
    envelope.create_tenant_key(ctx.tenant)
    big = os.urandom(10 * 1024 * 1024)
    chunks: list[bytes | bytearray | memoryview] = [
        b"", b"x", big, b"", b"yz", bytearray(b"abc"), memoryview(b"def")
    ]
    blob = b"".join(envelope.seal_stream(chunks, ctx))
    expected = b"x" + big + b"yzabcdef"
    assert envelope.open_blob(blob, ctx) == expected
    assert opened(envelope, [blob[:3], blob[3:5], blob[5:]], ctx) == expected


def test_producer_may_reuse_its_buffer_between_chunks(envelope: Envelope, ctx: Context) -> None:
    def reader() -> Iterator[bytes]:
        buf = bytearray()
        for i in range(10):
            buf.clear()  # would raise BufferError if a view of it were still held
            buf += bytes([i]) * 100
            yield buf  # type: ignore[misc]

    blob = b"".join(envelope.seal_stream(reader(), ctx))
    assert envelope.open_blob(blob, ctx) == b"".join(bytes([i]) * 100 for i in range(10))


def test_plaintext_never_appears_in_the_blob(envelope: Envelope, ctx: Context) -> None:
    canary = b"CANARY-7f3a9c-" * 200
    for blob in (envelope.seal_blob(canary, ctx), b"".join(envelope.seal_stream([canary], ctx))):
        assert b"CANARY" not in blob


def test_every_flipped_bit_is_detected(envelope: Envelope, ctx: Context) -> None:
    blob = envelope.seal_blob(os.urandom(2 * SMALL_SEGMENT + 5), ctx)  # header + 3 segments
    for bit in range(len(blob) * 8):
        tampered = bytearray(blob)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionError):
            envelope.open_blob(bytes(tampered), ctx)
        with pytest.raises(DecryptionError):
            opened(envelope, [bytes(tampered)], ctx)


def test_every_truncation_is_detected(envelope: Envelope, ctx: Context) -> None:
    blob = envelope.seal_blob(os.urandom(2 * SMALL_SEGMENT), ctx)  # ends in an empty segment
    for length in range(len(blob)):
        with pytest.raises(DecryptionError):
            envelope.open_blob(blob[:length], ctx)
        with pytest.raises(DecryptionError):
            opened(envelope, cut(blob[:length], [7]), ctx)


def test_dropping_trailing_segments_is_detected(envelope: Envelope, ctx: Context) -> None:
    head, segs = segments(envelope.seal_blob(os.urandom(3 * SMALL_SEGMENT + 9), ctx))
    for keep in range(len(segs)):
        with pytest.raises(DecryptionError):
            envelope.open_blob(head + b"".join(segs[:keep]), ctx)


def test_reordered_duplicated_or_dropped_segments_are_detected(
    envelope: Envelope, ctx: Context
) -> None:
    head, segs = segments(envelope.seal_blob(os.urandom(3 * SMALL_SEGMENT + 9), ctx))
    a, b, c, final = segs
    for bad in ([b, a, c, final], [a, c, b, final], [a, a, b, c, final], [a, b, b, c, final],
                [a, c, final], [b, c, final], [a, b, c, final, final], [final]):
        with pytest.raises(DecryptionError):
            envelope.open_blob(head + b"".join(bad), ctx)
        with pytest.raises(DecryptionError):
            opened(envelope, [head, *bad], ctx)


def test_appending_anything_is_detected(envelope: Envelope, ctx: Context) -> None:
    blob = envelope.seal_blob(os.urandom(SMALL_SEGMENT + 3), ctx)
    other = envelope.seal_blob(os.urandom(SMALL_SEGMENT + 3), ctx)
    for extra in (b"\x00", b"x" * TAG, segments(other)[1][0], segments(blob)[1][-1]):
        with pytest.raises(DecryptionError):
            envelope.open_blob(blob + extra, ctx)
        with pytest.raises(DecryptionError):
            opened(envelope, [blob, extra], ctx)


def test_segments_of_two_blobs_cannot_be_mixed(envelope: Envelope, ctx: Context) -> None:
    head1, segs1 = segments(envelope.seal_blob(os.urandom(SMALL_SEGMENT + 3), ctx))
    head2, segs2 = segments(envelope.seal_blob(os.urandom(SMALL_SEGMENT + 3), ctx))
    for bad in (head1 + segs2[0] + segs1[1], head2 + b"".join(segs1)):
        with pytest.raises(DecryptionError):
            envelope.open_blob(bad, ctx)


@pytest.mark.parametrize(
    "moved",
    [{"tenant": "ws_b"}, {"kind": "avatar"}, {"record_id": "file_2"}, {"region": "us"}],
    ids=["other-tenant", "other-kind", "other-record", "other-region"],
)
def test_blob_moved_to_another_context_does_not_decrypt(
    envelope: Envelope, ctx: Context, moved: dict[str, str]
) -> None:
    blob = envelope.seal_blob(b"file contents" * 20, ctx)
    other = context(**moved)
    with pytest.raises(DecryptionError):
        envelope.open_blob(blob, other)
    with pytest.raises(DecryptionError):
        opened(envelope, [blob], other)


def test_sealing_a_stream_for_another_region_is_refused_at_the_call(envelope: Envelope) -> None:
    with pytest.raises(ValueError, match="region"):
        envelope.seal_stream([b"x"], context(region="us"))  # not only once iterated


def test_blobs_open_whatever_segment_size_the_reader_is_configured_with(
    keys: LocalKeyProvider, envelope: Envelope, ctx: Context
) -> None:
    blob = envelope.seal_blob(os.urandom(1000), ctx)  # the segment size is in the header
    assert len(Envelope(keys, segment_size=4096).open_blob(blob, ctx)) == 1000


def test_segment_size_outside_bounds_is_refused(keys: LocalKeyProvider) -> None:
    for size in (0, 15, (1 << 24) + 1):
        with pytest.raises(ValueError, match="segment_size"):
            Envelope(keys, segment_size=size)


def test_whole_blob_helpers_work_without_encrypt_into(
    envelope: Envelope, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older cryptography releases lack encrypt_into: same format, one more copy."""
    plaintext = os.urandom(3 * SMALL_SEGMENT + 7)
    fast = envelope.seal_blob(plaintext, ctx)
    monkeypatch.setattr(_stream, "_HAS_INTO", False)
    slow = envelope.seal_blob(plaintext, ctx)
    assert len(slow) == len(fast)
    assert envelope.open_blob(fast, ctx) == plaintext
    assert envelope.open_blob(slow, ctx) == plaintext
    with pytest.raises(DecryptionError):
        envelope.open_blob(slow[:-1], ctx)
