"""A hostile client against `domicile serve`, end to end (G4 and the one error rule).

Hypothesis draws request bodies for every endpoint (lone surrogates, NaN and infinities,
deep nesting, wrong types, truncated and non-UTF-8 bodies, paths with client text), each
carrying a canary, and sends them raw to a zero-retention project. Every answer must be a
non-5xx in OpenAI's error shape with the `x-domicile-*` headers; afterwards no byte of the
canary may be found in the data folder (usage table included), the server's log or its
temp folder, and the log holds no traceback. Derandomised: the same examples every run.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import scan_for_canary
from tests.e2e.conftest import Deployment, deployed
from tests.gateway.upstream import FakeUpstream

CANARY = f"HOSTILE-{secrets.token_hex(12)}"
LONE_SURROGATES = ("\ud800", "\udfff", "\udbff")
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/images/generations",
             "/v1/responses", "/v1/files")
KEYS = ("model", "messages", "input", "prompt", "role", "content", "type", "text", "stream",
        "store", "temperature", "n", "size", "encoding_format", "instructions",
        "stream_options", "image_url", "url", "dimensions", "previous_response_id")


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory,
             upstreams: tuple[dict[str, FakeUpstream], trustme.CA]) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("hostile"), upstreams) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def http(attacked: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=attacked.site.url("eu"), timeout=60, headers={
            "Authorization": f"Bearer {attacked.keys['eu_zero']}"}) as client:
        yield client


def hostile_text() -> st.SearchStrategy[str]:
    return st.builds(
        lambda prefix, junk, tail: prefix + CANARY + junk + tail,
        st.text(max_size=5), st.sampled_from(("", *LONE_SURROGATES)), st.text(max_size=5))


LEAVES = st.one_of(
    hostile_text(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), st.none(),
    st.sampled_from(("dev-echo", "all-minilm-l6-v2", "user", "text", "input_text", "base64")),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(method, path, raw body) with the canary somewhere in it."""
    path = draw(st.sampled_from(ENDPOINTS))
    body: dict[str, Any] = {"model": draw(st.sampled_from(
        ("dev-echo", "all-minilm-l6-v2", f"{CANARY}-model", f"{CANARY}\ud800")))}
    body.update(draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5)))
    body.setdefault("input", CANARY)
    raw = json.dumps(body, allow_nan=True).encode()  # ASCII: surrogates travel as escapes
    mangle = draw(st.sampled_from(
        ("none", "none", "truncate", "deep", "latin1", "huge number", "canary path")))
    if mangle == "truncate":
        raw = raw[: draw(st.integers(min_value=1, max_value=max(1, len(raw) - 1)))]
    elif mangle == "deep":
        depth = draw(st.integers(min_value=100, max_value=5000))
        nest = b"[" * depth + b'"' + CANARY.encode() + b'"' + b"]" * depth
        raw = raw[:-1] + b', "x": ' + nest + b"}"
    elif mangle == "huge number":  # a literal that overflows a double (json.dumps can't)
        raw = raw[:-1] + b', "temperature": 1e400, "metadata": {"x": -2E+999}}'
    elif mangle == "latin1":
        raw = raw.replace(b'"', b'"\xe9', 1)
    elif mangle == "canary path":
        return draw(st.sampled_from(("GET", "DELETE", "POST"))), draw(st.sampled_from(
            (f"/v1/files/{CANARY}", f"/v1/files/{CANARY}/content", f"/v1/{CANARY}",
             f"/v1/responses/{CANARY}", f"/v1/files/file-x/{CANARY}"))), raw
    return "POST", path, raw


def assert_answered_in_shape(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["x-domicile-region"] == "eu"
    assert response.headers["x-request-id"].startswith("req_")
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=hostile_requests())
def test_hostile_requests_are_answered_in_openai_shape(
        http: httpx.Client, request: tuple[str, str, bytes]) -> None:
    method, path, body = request
    response = http.request(method, path, content=body,
                            headers={"Content-Type": "application/json"})
    assert_answered_in_shape(response)


def test_a_global_project_with_regional_retention_stores_where_it_called(
        attacked: Deployment) -> None:
    site = attacked.site
    _project, key = site.project_key("global", retention="regional", org=attacked.org)
    kept = {}
    for region in ("eu", "us"):
        client = attacked.client("eu_zero", region)
        client.api_key = key
        uploaded = client.files.create(file=("notes.txt", f"{region} notes".encode()),
                                       purpose="assistants")
        stored = client.responses.create(model="dev-echo", input=f"remember {region}",
                                         store=True)
        assert client.responses.retrieve(stored.id).output_text.endswith(region)
        assert client.files.content(uploaded.id).text == f"{region} notes"
        kept[region] = uploaded.id
    for region in ("eu", "us"):  # each region lists what was stored in it, and only that
        client = attacked.client("eu_zero", region)
        client.api_key = key
        assert [f.id for f in client.files.list()] == [kept[region]]
        assert list((site.root / region / "blobs").rglob(f"{kept[region]}*"))


def test_nothing_of_the_attack_reaches_disk_or_log(attacked: Deployment,
                                                   http: httpx.Client) -> None:
    """Last in this module: stops the server, then scans. Sends the issue's cases itself,
    so it proves something even when run alone."""
    cases = [
        ("POST", "/v1/chat/completions",
         json.dumps({"model": f"{CANARY}\ud800", "messages": []}).encode()),
        ("POST", "/v1/responses", json.dumps({"model": "dev-echo", "input": [
            {"role": "user", "content": [{"type": f"{CANARY}\ud800", "text": "x"}]}]}).encode()),
        ("POST", "/v1/responses", json.dumps(
            {"model": "dev-echo", "input": CANARY, "temperature": float("nan")}).encode()),
        ("POST", "/v1/responses", json.dumps({"model": "dev-echo", "input": CANARY}).encode()
         [:-1] + b', "temperature": 1e400}'),
        ("GET", f"/v1/files/{CANARY}", b""),
        ("DELETE", f"/v1/files/{CANARY}", b""),
        ("GET", f"/v1/files/{CANARY}/content", b""),
    ]
    for method, path, body in cases:
        response = http.request(method, path, content=body,
                                headers={"Content-Type": "application/json"})
        assert_answered_in_shape(response)
        assert 400 <= response.status_code < 500
    limited = httpx.Client(base_url=attacked.site.url("eu"), timeout=60, headers={
        "Authorization": f"Bearer {attacked.keys['limited']}"})
    with limited:
        statuses = [limited.post(f"/v1/{CANARY}").status_code for _ in range(4)]
    assert 429 in statuses
    attacked.server.stop()  # flushes usage, closes the log
    assert scan_for_canary(attacked.places(), CANARY) == []
    log = attacked.server.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert "ASGI callable returned without" not in log
    for name in ("eu_zero", "limited"):
        usage = attacked.site.cli("usage", "--project", attacked.projects[name])
        assert usage["totals"]["requests"] >= 1
        assert CANARY not in json.dumps(usage)
        assert {r["endpoint"] for r in usage["requests"]} <= {
            "/v1/chat/completions", "/v1/embeddings", "/v1/images/generations",
            "/v1/responses", "/v1/files", "/v1/files/{file_id}",
            "/v1/files/{file_id}/content", "/v1/responses/{response_id}", "(unknown)"}
