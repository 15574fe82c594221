"""The request's one JSON parse: what it refuses (with the parameter named) and what it keeps."""

from __future__ import annotations

import json

import pytest

from domicile.errors import InvalidInput
from domicile.gateway.http import MAX_JSON_DEPTH, parse_json_object


def nested(depth: int) -> bytes:
    """An object whose `x` makes the whole body `depth` levels deep."""
    inner = depth - 1
    return b'{"x":' + b"[" * inner + b"]" * inner + b"}"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b'{"model": "CANARY\\ud800"}', "model", "not valid Unicode"),
        (b'{"model": "dev-echo", "input": ["ok", "\\udfff tail"]}', "input", "not valid Unicode"),
        (b'{"model": "m", "messages": [{"content": "\\ud83d"}]}', "messages", "not valid Unicode"),
        (b'{"\\ud800": 1}', None, "not valid Unicode"),
        (b'{"model": "m", "temperature": NaN}', "temperature", "finite"),
        (b'{"model": "m", "x": {"y": [1, Infinity]}}', "x", "finite"),
        (b'{"model": "m", "top_p": -Infinity}', "top_p", "finite"),
        (b'{"model": "m", "temperature": 1e400}', "temperature", "finite"),
        (b'{"model": "m", "metadata": {"x": -1.5E+999}}', "metadata", "finite"),
        (b'{"model": "m", "n": 1' + b"0" * 400 + b'.5}', "n", "finite"),
        (b'{"model": "m", "x": "\\udc00 after"}', "x",
         "not valid Unicode"),
        (b'{"model": "m", "x": "ends high \\ud83d"}', "x",
         "not valid Unicode"),
        (nested(MAX_JSON_DEPTH + 1), None, f"deeper than {MAX_JSON_DEPTH}"),
        (b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "deeper than"),
        (b'{"model": "caf\xe9"}', None, "UTF-8"),  # Latin-1, not UTF-8
        (b'{"model": "\xed\xa0\x80"}', None, "UTF-8"),  # a surrogate encoded as bytes
        ("{}".encode("utf-16"), None, "UTF-8"),
        (b"[1, 2]", None, "must be an object"),
        (b'{"model": ', None, "could not parse"),
    ],
)
def test_hostile_bodies_are_a_400_naming_the_parameter(body: bytes, param: str | None,
                                                        words: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_json_object(body)
    assert refused.value.status == 400
    assert refused.value.param == param
    assert words in refused.value.message
    assert "CANARY" not in refused.value.message  # never echoed


@pytest.mark.parametrize(
    "body",
    [
        b'{"x": "\\ud83d\\ude00"}',  # a surrogate pair is one code point: fine
        b'{"x": "\\\\ud800"}',  # an escaped backslash, then the letters "ud800"
        b'{"x": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}' * 1,
        nested(MAX_JSON_DEPTH),
        json.dumps({"input": [[1, 2, 3]] * 2048}).encode(),  # many brackets, shallow
        json.dumps({"x": "NaN", "y": "Infinity", "z": 1e308}).encode(),
        b'{"x": 1e-400, "y": "5e400", "z": 12345678901234567890}',
        b'{"x": "\\ud83d\\ude00 and \\udbff\\udfff"}',
    ],
)
def test_valid_bodies_pass(body: bytes) -> None:
    assert isinstance(parse_json_object(body), dict)


def test_a_quoted_bracket_does_not_count_towards_depth() -> None:
    deep_text = "[" * (MAX_JSON_DEPTH * 2)
    body = json.dumps({"a": deep_text, "b": [[1]] * (MAX_JSON_DEPTH + 1)}).encode()
    assert parse_json_object(body)["a"] == deep_text
