"""The one strict query-string reader of the list endpoints."""

from __future__ import annotations

import pytest

from domicile.errors import InvalidInput
from domicile.web.query import int_param, query_params

KNOWN = ("limit", "after")


def test_known_parameters_are_decoded_once_each() -> None:
    assert query_params(b"limit=5&after=file-a%2Bb&", KNOWN) == {"limit": "5",
                                                                "after": "file-a+b"}
    assert query_params(b"", KNOWN) == {}


@pytest.mark.parametrize("raw", [b"limit=1&limit=2", b"nope=1", b"limit=%ff", b"%ff=1"])
def test_repeats_unknown_names_and_bad_utf8_are_refused_without_quoting(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as refused:
        query_params(raw, KNOWN)
    assert "nope" not in refused.value.message and "%ff" not in refused.value.message


def test_unknown_names_may_be_let_through_where_the_sdk_sends_options() -> None:
    assert query_params(b"include[]=a&include[]=b&limit=3", KNOWN,
                        ignore_unknown=True) == {"limit": "3"}


@pytest.mark.parametrize("text", ["²", "-1", "0", "101", "1e3", "NaN", "9" * 5000, " 5"])
def test_integers_are_ascii_digits_within_bounds(text: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        int_param({"limit": text}, "limit", 20, 1, 100)
    assert refused.value.param == "limit"


def test_an_absent_integer_is_the_default() -> None:
    assert int_param({}, "limit", 20, 1, 100) == 20
    assert int_param({"limit": "100"}, "limit", 20, 1, 100) == 100
