"""The route table: matching, 404 and 405, templates, and the HTTP manners every answer has."""

from __future__ import annotations

import pytest

from domicile.errors import MethodNotAllowed, NotFound
from domicile.gateway.http import UNKNOWN_ROUTE
from domicile.gateway.routes import Route, RouteTable
from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, Stack
from tests.gateway.support import grant


async def _handler(*_: object) -> None:
    return None


TABLE = RouteTable([
    Route("GET", "/v1/things", _handler, "listThings", "things"),
    Route("POST", "/v1/things", _handler, "createThing", "things"),
    Route("GET", "/v1/things/{thing_id}", _handler, "getThing", "things"),
    Route("DELETE", "/v1/things/{thing_id}", _handler, "deleteThing", "things"),
    Route("GET", "/v1/things/{thing_id}/parts/{part_id}", _handler, "getPart", "things"),
    Route("POST", "/v1/mixed", _handler, "createMixed"),
    Route("GET", "/v1/mixed/{mixed_id}", _handler, "getMixed", "mixed"),
])


def test_exact_and_templated_paths_match_with_their_parameters() -> None:
    assert TABLE.match("GET", "/v1/things")[0].operation == "listThings"
    route, params = TABLE.match("GET", "/v1/things/t1/parts/p2")
    assert (route.operation, params) == ("getPart", ("t1", "p2"))
    assert TABLE.match("DELETE", "/v1/things/t1")[1] == ("t1",)


@pytest.mark.parametrize("path", ["/v1/things/", "/v1/things//parts/p", "/v1/nothing",
                                  "/v1/things/t1/other", "/v1/things/t1/parts/p2/more"])
def test_anything_else_is_not_found(path: str) -> None:
    with pytest.raises(NotFound):
        TABLE.match("GET", path)
    assert TABLE.template_of(path) == UNKNOWN_ROUTE


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/v1/things", b"GET, POST"),
    ("POST", "/v1/things/t1", b"DELETE, GET"),
    ("GET", "/v1/mixed", b"POST"),
])
def test_a_known_path_with_another_method_names_the_allowed_ones(
        method: str, path: str, allowed: bytes) -> None:
    with pytest.raises(MethodNotAllowed) as refused:
        TABLE.match(method, path)
    assert refused.value.status == 405
    assert dict(refused.value.headers)[b"allow"] == allowed


def test_templates_never_carry_the_path() -> None:
    assert TABLE.template_of("/v1/things/secret/parts/p") == "/v1/things/{thing_id}/parts/{part_id}"
    assert TABLE.template_of("/v1/things") == "/v1/things"


def test_a_resource_is_retained_only_when_every_route_under_it_is() -> None:
    assert TABLE.retained_feature("/v1/things/anything/at/all") == "things"
    assert TABLE.retained_feature("/v1/mixed/x") is None  # createMixed keeps nothing


def test_two_routes_for_one_operation_slot_are_refused() -> None:
    with pytest.raises(ValueError, match="two routes"):
        RouteTable([Route("GET", "/v1/a", _handler, "a"), Route("GET", "/v1/a", _handler, "b")])


# -- over HTTP -----------------------------------------------------------------------------

def test_the_gateway_answers_405_with_allow_in_openai_shape(stack: Stack) -> None:
    answer = stack.http().put("/v1/chat/completions",
                              headers={"Authorization": f"Bearer {EU_ZERO_KEY}"})
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json()["error"]["code"] == "method_not_allowed"
    files = stack.http().post("/v1/files/file-abc",
                              headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    assert files.status_code == 405
    assert files.headers["allow"] == "DELETE, GET"


def test_every_answer_says_how_long_it_took_and_echoes_the_clients_id(stack: Stack) -> None:
    http = stack.http()
    for path in ("/v1/models", "/v1/nowhere"):
        answer = http.get(path, headers={"Authorization": f"Bearer {EU_ZERO_KEY}",
                                         "X-Client-Request-Id": "client-42"})
        assert int(answer.headers["openai-processing-ms"]) >= 0
        assert answer.headers["x-client-request-id"] == "client-42"
        assert answer.headers["x-request-id"].startswith("req_")
    odd = http.get("/v1/models", headers={"Authorization": f"Bearer {EU_ZERO_KEY}",
                                          "X-Client-Request-Id": "x" * 513})
    assert "x-client-request-id" not in odd.headers


LIMITED_KEY = "dk-eu-manners00000000000000"


def test_a_limited_key_gets_rate_limit_headers_on_every_answer(stack: Stack) -> None:
    stack.auth.keys[LIMITED_KEY] = grant("key_manners", rpm=100, tpm=10_000)
    http = stack.http()
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    answers = [http.get("/v1/models", headers=headers),
               http.get("/v1/nowhere", headers=headers),
               http.put("/v1/models", headers=headers),
               http.post("/v1/chat/completions", headers=headers, content=b"{nope")]
    assert [a.status_code for a in answers] == [200, 404, 405, 400]
    for answer in answers:
        for kind in ("requests", "tokens"):
            assert f"x-ratelimit-limit-{kind}" in answer.headers
            assert f"x-ratelimit-remaining-{kind}" in answer.headers
            assert f"x-ratelimit-reset-{kind}" in answer.headers
    remaining = [int(a.headers["x-ratelimit-remaining-requests"]) for a in answers]
    assert remaining == [99, 98, 97, 96]
