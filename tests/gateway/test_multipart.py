"""The streaming multipart parser: any split of the input gives the same parts."""

from __future__ import annotations

import random

import pytest

from domicile.errors import InvalidInput
from domicile.web.multipart import (
    PART_END,
    MultipartParser,
    PartStart,
    boundary_of,
)

BODY = (
    b"preamble to ignore\r\n"
    b"--b0undary\r\n"
    b'Content-Disposition: form-data; name="purpose"\r\n\r\n'
    b"assistants\r\n"
    b"--b0undary\r\n"
    b'Content-Disposition: form-data; name="file"; filename="a \\"q\\".txt"\r\n'
    b"Content-Type: text/plain\r\n\r\n"
    b"line one\r\n--b0undar not yet\r\n\r\nend\r\n"
    b"--b0undary--\r\n"
    b"epilogue"
)


def _parse(chunks: list[bytes]) -> list[object]:
    parser = MultipartParser(b"b0undary")
    events: list[object] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    assert parser.done
    merged: list[object] = []
    for event in events:  # join adjacent data events, however they were split
        if isinstance(event, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + event
        else:
            merged.append(event)
    return merged


EXPECTED = [
    PartStart("purpose", None, None), b"assistants", PART_END,
    PartStart("file", 'a "q".txt', "text/plain"),
    b"line one\r\n--b0undar not yet\r\n\r\nend", PART_END,
]


def test_whole_body() -> None:
    assert _parse([BODY]) == EXPECTED


def test_byte_by_byte() -> None:
    assert _parse([BODY[i:i + 1] for i in range(len(BODY))]) == EXPECTED


def test_random_splits() -> None:
    rng = random.Random(3)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(BODY)), 6))
        pieces = [BODY[a:b] for a, b in zip([0, *cuts], [*cuts, len(BODY)], strict=True)]
        assert _parse(pieces) == EXPECTED


def test_data_is_handed_on_before_the_part_ends() -> None:
    parser = MultipartParser(b"b0undary")
    events = parser.feed(b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"
                         + b"x" * 1000)
    held_back = 1000 - sum(len(e) for e in events if isinstance(e, bytes))
    assert held_back < len(b"\r\n--b0undary")


def test_headers_without_end_are_refused() -> None:
    parser = MultipartParser(b"b")
    with pytest.raises(InvalidInput):
        parser.feed(b"--b\r\n" + b"X-Long: " + b"a" * 20_000)


def test_a_part_without_form_data_disposition_is_refused() -> None:
    with pytest.raises(InvalidInput):
        MultipartParser(b"b").feed(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--")


@pytest.mark.parametrize(("header", "boundary"), [
    (b"multipart/form-data; boundary=abc", b"abc"),
    (b'Multipart/Form-Data; charset=utf-8; boundary="a b:c"', b"a b:c"),
])
def test_boundary_of(header: bytes, boundary: bytes) -> None:
    assert boundary_of(header) == boundary


@pytest.mark.parametrize("header", [None, b"application/json", b"multipart/form-data",
                                    b"multipart/form-data; boundary=" + b"x" * 71])
def test_boundary_of_refuses(header: bytes | None) -> None:
    with pytest.raises(InvalidInput):
        boundary_of(header)
