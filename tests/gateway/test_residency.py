"""GET /v1/residency: the caller's region, retention, eligible endpoints and the providers
(all of this region) that may process its data."""

from __future__ import annotations

from tests.gateway.conftest import EU_REGIONAL_KEY, EU_ZERO_KEY, GLOBAL_KEY, Stack


def test_zero_retention_project_at_its_home_region(stack: Stack) -> None:
    answer = stack.http().get("/v1/residency",
                              headers={"Authorization": f"Bearer {EU_ZERO_KEY}"}).json()
    assert answer["project"] == "proj_key_eu_zero"
    assert (answer["region"], answer["processing_region"]) == ("eu", "eu")
    assert answer["retention"] == "zero"
    assert answer["per_request_residency"] is False
    assert "/v1/chat/completions" in answer["endpoints"]
    assert "/v1/embeddings" in answer["endpoints"]
    assert "/v1/images/generations" in answer["endpoints"]
    assert not any(e.startswith("/v1/files") for e in answer["endpoints"])
    assert {p["region"] for p in answer["providers"]} == {"eu"}
    names = {p["name"]: p for p in answer["providers"]}
    assert "us-solo" not in names
    assert names["eu-embeddings"] == {"name": "eu-embeddings", "kind": "local-embeddings",
                                      "region": "eu", "models": ["all-minilm-l6-v2"],
                                      "capabilities": ["embeddings"]}
    assert names["eu-a"]["capabilities"] == ["chat"]


def test_regional_retention_lists_the_content_keeping_endpoints(stack: Stack) -> None:
    answer = stack.http().get("/v1/residency",
                              headers={"Authorization": f"Bearer {EU_REGIONAL_KEY}"}).json()
    assert answer["retention"] == "regional"
    for kept in ("/v1/files", "/v1/uploads", "/v1/batches", "/v1/responses/{response_id}"):
        assert kept in answer["endpoints"]
    zero = stack.http().get("/v1/residency",
                            headers={"Authorization": f"Bearer {EU_ZERO_KEY}"}).json()
    assert not {"/v1/files", "/v1/uploads", "/v1/batches"} & set(zero["endpoints"])


def test_a_roaming_project_is_processed_where_it_called(stack: Stack) -> None:
    reply = stack.client(GLOBAL_KEY, stack.us).get("/residency", cast_to=object)
    assert reply["region"] == "global"  # type: ignore[index]
    assert reply["processing_region"] == "us"  # type: ignore[index]
    assert reply["per_request_residency"] is True  # type: ignore[index]
    assert {p["region"] for p in reply["providers"]} == {"us"}  # type: ignore[index]
