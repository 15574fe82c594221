"""Schema-driven fuzzing of the running region with schemathesis: for every operation of the
document it serves (`GET /openapi.json`), a bounded number of generated requests (derandomized:
the same requests on every run), each answer checked against that document: no 5xx fault,
its status documented, its content type and headers as documented, its body valid against
the documented schema.

The generated requests are steered a little toward what the region can answer (a `model` the
region offers, an `input` for a response, the id of an object that exists), so successful
answers are checked too, not only refusals; the keys alternate between a zero-retention and a
regional project.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from domicile.gateway.openapi import documented_routes, openapi_document
from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, US_KEY, Stack

EXAMPLES_PER_OPERATION = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Models the region answers in process (no upstream to script), and "as generated".
MODELS = ["dev-echo", "all-minilm-l6-v2", None]

# Operations (and, for the method check, "METHOD path" pairs the document does not list)
# known to answer outside the document, each with why; strict xfail, so an entry fails the
# suite once its endpoint is fixed (then remove it here).
KNOWN_ISSUES: dict[str, str] = {}


def _known(labels: list[str]) -> list[Any]:
    return [pytest.param(label, marks=pytest.mark.xfail(strict=True, reason=KNOWN_ISSUES[label]))
            if label in KNOWN_ISSUES else label for label in labels]


def _labels() -> list[Any]:
    document = openapi_document(documented_routes(), workspace=False)
    return _known([f"{method.upper()} {path}" for path, item in document["paths"].items()
                   for method in item])


def _undocumented_methods() -> list[Any]:
    """One method each path does not document (POST where it can, else DELETE)."""
    document = openapi_document(documented_routes(), workspace=False)
    return _known([f"{'POST' if 'post' not in item else 'DELETE'} {path}"
                   for path, item in document["paths"].items()])


@pytest.fixture(scope="module")
def region_schema(served: Stack) -> Any:
    document = httpx.get(served.eu.url + "/openapi.json", timeout=20).json()
    return schemathesis.openapi.from_dict(document)


# The operations whose body names a model to route (not always required by the schema).
ROUTED = {"POST /v1/chat/completions", "POST /v1/embeddings", "POST /v1/images/generations",
          "POST /v1/responses"}


def _objects(stack: Stack) -> dict[str, list[str]]:
    """One object of each kind the paths name, made by the regional project, by path
    parameter (what the generated ids are sometimes replaced with)."""
    client = stack.client(EU_REGIONAL_KEY)
    line = {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "dev-echo", "messages": [{"role": "user", "content": "hi"}]}}
    batch_file = client.files.create(file=("batch.jsonl", json.dumps(line).encode() + b"\n"),
                                     purpose="batch")
    text_file = client.files.create(file=("notes.txt", b"some notes"), purpose="user_data")
    response = client.responses.create(model="dev-echo", input="Say hello.")
    upload = client.uploads.create(bytes=4, filename="part.txt", mime_type="text/plain",
                                   purpose="user_data")
    batch = client.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    return {"file_id": [text_file.id, batch_file.id], "response_id": [response.id],
            "upload_id": [upload.id], "batch_id": [batch.id]}


def _steer(case: Any, model: str | None, text: str | None, pick: int,
           objects: dict[str, list[str]]) -> None:
    for name, value in list((case.path_parameters or {}).items()):
        if pick and objects.get(name):
            case.path_parameters[name] = objects[name][pick % len(objects[name])]
        else:
            case.path_parameters[name] = value
    body = case.body
    if not isinstance(body, dict) or case.operation.label not in ROUTED:
        return
    if model is not None:
        body["model"] = model
    if text is not None and case.operation.label == "POST /v1/responses":
        body.setdefault("input", text)
    if text is not None and case.operation.label == "POST /v1/embeddings":
        body["input"] = text  # token arrays are refused: the model cannot read OpenAI's ids


@pytest.mark.parametrize("label", _labels())
def test_every_answer_matches_the_document(stack: Stack, region_schema: Any,
                                           label: str) -> None:
    operation = region_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the document the region serves"
    objects = _objects(stack)
    statuses: set[int] = set()

    @given(case=operation.as_strategy(), model=st.sampled_from(MODELS),
           text=st.sampled_from(["Say hello.", None]), pick=st.integers(0, 2),
           key=st.sampled_from([EU_REGIONAL_KEY, EU_ZERO_KEY]))
    @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None,
              deadline=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def check(case: Any, model: str | None, text: str | None, pick: int, key: str) -> None:
        _steer(case, model, text, pick, objects)
        answer = case.call_and_validate(base_url=stack.eu.url, checks=CHECKS,
                                        headers={"Authorization": f"Bearer {key}"})
        statuses.add(answer.status_code)

    check()
    assert statuses, f"no request of {label} was answered"


def _concrete(path: str) -> str:
    return re.sub(r"{\w+}", "x0", path)


@pytest.mark.parametrize("label", _undocumented_methods())
def test_a_method_the_document_does_not_list_is_a_405_naming_those_it_does(
        stack: Stack, region_schema: Any, label: str) -> None:
    method, path = label.split(" ", 1)
    documented = {m.upper() for m in region_schema.raw_schema["paths"][path]}
    # A regional key: under a resource that keeps content, a zero-retention key hears of its
    # retention first, whatever the method (G4).
    answer = stack.http().request(method, _concrete(path),
                                  headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"})
    assert answer.status_code == 405, answer.text
    assert answer.json()["error"]["code"] == "method_not_allowed"
    assert set(answer.headers["allow"].split(", ")) >= documented


@pytest.mark.parametrize("label", [label for label in _labels() if " /v1/" in str(label)])
def test_every_v1_operation_wants_a_key_of_this_region(stack: Stack, region_schema: Any,
                                                       label: str) -> None:
    method, path = label.split(" ", 1)
    responses = region_schema.raw_schema["paths"][path][method.lower()]["responses"]
    http = stack.http()
    for headers, status, code in ((({}, 401, "invalid_api_key")),
                                  ({"Authorization": f"Bearer {US_KEY}"}, 403, "wrong_region")):
        answer = http.request(method, _concrete(path), headers=headers, content=b"{}")
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
        assert str(status) in responses
