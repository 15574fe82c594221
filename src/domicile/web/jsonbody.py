"""The one strict JSON parse of a request body, and JSON out.

Every front door reads client JSON through `parse_json_object`: strict UTF-8, one object,
every number finite, no lone surrogate, nested at most `MAX_JSON_DEPTH` deep. Anything else is
a 400 that names the parameter where it can, never echoing the text (G4: an error message
reaches logs). Upstream answers go through `loads_strict`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from domicile.errors import InvalidInput

__all__ = [
    "MAX_JSON_BODY",
    "MAX_JSON_DEPTH",
    "dump_json",
    "loads_strict",
    "model_of",
    "parse_json_object",
]

MAX_JSON_BODY = 32 * 1024 * 1024
MAX_JSON_DEPTH = 128


def dump_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class _NonFiniteNumber(ValueError):
    """`NaN`, `Infinity`, `-Infinity`, or a literal too large for a float (`1e400`): Python's
    parser takes them (as nan and inf), JSON has no such numbers."""


def _refuse_constant(name: str) -> float:
    raise _NonFiniteNumber(name)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NonFiniteNumber("overflow")
    return value


# A float literal costs one Python call (`_finite_float`: 1e400 parses to inf otherwise); a
# request holds few of them, and a scan of every body for big exponents would cost more.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
# Answers may hold many floats (logprobs): NaN and Infinity are refused, in C.
_ANSWER_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
# A surrogate escape without its other half (a pair decodes to one code point and is fine).
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _decode(body: bytes) -> Any:
    """Strict UTF-8 JSON; `_NonFiniteNumber` for a number JSON does not have."""
    return _DECODER.decode(body.decode("utf-8"))


def loads_strict(data: bytes) -> Any:
    """An upstream's JSON answer: UTF-8, no NaN or Infinity (ValueError otherwise)."""
    return _ANSWER_DECODER.decode(data.decode("utf-8"))


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request's one JSON parse: strict UTF-8 JSON, one object, every number finite, no
    lone surrogate, nested at most `MAX_JSON_DEPTH` deep. Anything else is a 400 that names
    the parameter where it can (never echoing the text)."""
    try:
        parsed = _decode(body)
    except UnicodeDecodeError:
        raise InvalidInput("The request body must be JSON encoded as UTF-8.") from None
    except _NonFiniteNumber:
        raise InvalidInput("Numbers must be finite: NaN, Infinity and numbers too large for "
                           "a double are not JSON.", param=_param_with_non_finite(body)) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise InvalidInput("We could not parse the JSON body of your request.") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("The JSON body of your request must be an object.")
    # The exact checks run only when a scan of the bytes (in C) says a body could fail them.
    if (b"\\" in body and (b"\\ud" in body or b"\\uD" in body)  # one memchr, mostly
            and _LONE_SURROGATE.search(body) is not None):
        _refuse_lone_surrogates(parsed)
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _deeper_than(
            parsed, MAX_JSON_DEPTH):
        raise _too_deep()
    return parsed


def _too_deep() -> InvalidInput:
    return InvalidInput(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")


def _param_with_non_finite(body: bytes) -> str | None:
    """The top-level parameter holding a non-finite number (the rare, refused case)."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    for key, value in parsed.items():
        pending = [value]
        while pending:
            item = pending.pop()
            if isinstance(item, float) and not math.isfinite(item):
                return str(key) if str(key).isascii() else None
            if isinstance(item, dict):
                pending.extend(item.values())
            elif isinstance(item, list):
                pending.extend(item)
    return None


def _refuse_lone_surrogates(parsed: dict[str, Any]) -> None:
    """A 400 naming the parameter that holds a lone surrogate: such a string cannot be
    encoded, forwarded or stored. (The byte scan also matches an escaped backslash followed
    by the letters `ud800`, which is fine text: hence this exact check.)"""
    for key, value in parsed.items():
        try:
            key.encode()
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            param = key if key.isascii() else None
            raise InvalidInput("The request holds text that is not valid Unicode (a lone "
                               "surrogate).", param=param) from None


def _deeper_than(value: object, limit: int) -> bool:
    """Whether a parsed value nests more than `limit` levels (the value itself is level 1).

    Breadth-first, one level at a time, descending only into objects and arrays; a
    container's children are typed in C (`set(map(type, ...))`) so an array of numbers or
    strings costs no Python step per item. The cost follows the number of containers, as
    the parse's does."""
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            kinds = set(map(type, children))
            if dict in kinds or list in kinds:
                below.extend(c for c in children if type(c) is dict or type(c) is list)
        level = below
        depth += 1
    return False


def model_of(parsed: dict[str, Any]) -> str:
    model = parsed.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("You must provide a model parameter.", param="model")
    return model


