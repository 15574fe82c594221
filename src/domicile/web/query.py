"""A request's query string, read strictly: the one parser of every list endpoint.

Each known parameter at most once, percent-decoded UTF-8 text; anything else is a 400 in the
one error shape that never quotes the client's text. Numbers are ASCII digits only
(`str.isdigit` takes "²", which `int` refuses, and `int` refuses more than 4,300 digits).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from urllib.parse import unquote_to_bytes

from domicile.errors import InvalidInput

__all__ = ["int_param", "query_params"]

_DIGITS = re.compile(r"[0-9]{1,10}")


def query_params(raw: bytes, known: Collection[str], *,
                 ignore_unknown: bool = False) -> dict[str, str]:
    """The `known` parameters of a query string. An unknown one is a 400, or skipped with
    `ignore_unknown` (for endpoints whose SDK sends options Domicile has no use for, such as
    `include[]`)."""
    found: dict[str, str] = {}
    for field in raw.split(b"&"):
        if not field:
            continue
        name_raw, _, value_raw = field.partition(b"=")
        try:
            name = unquote_to_bytes(name_raw.replace(b"+", b" ")).decode()
            value = unquote_to_bytes(value_raw.replace(b"+", b" ")).decode()
        except UnicodeDecodeError:
            raise InvalidInput("The query string must be UTF-8 text.") from None
        if name not in known:
            if ignore_unknown:
                continue
            raise InvalidInput("Unknown query parameter: this list takes "
                               f"{', '.join(f'`{p}`' for p in known)}.")
        if name in found:
            raise InvalidInput(f"`{name}` is given more than once.", param=name)
        found[name] = value
    return found


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer parameter from `low` to `high`, `default` when absent."""
    text = params.get(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise InvalidInput(f"`{name}` must be an integer from {low} to {high}.", param=name)
    return int(text)
