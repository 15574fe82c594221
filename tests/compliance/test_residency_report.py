"""The residency report: what each tenant of an org holds where, read from the stores."""

from __future__ import annotations

import pytest

from domicile.compliance.residency import (
    ResidencyReport,
    build_report,
    eligible_endpoints,
    key_id_of,
    render_markdown,
)
from domicile.errors import NotFound
from domicile.site import Site
from domicile.storage.regional import RegionalStore
from tests.compliance.residency_site import (
    FILE_BYTES,
    GATEWAY_FILE_BYTES,
    RESPONSE_BYTES,
    Populated,
    populate,
)


@pytest.fixture
def populated(site: Site) -> Populated:
    return populate(site)


@pytest.fixture
def report(site: Site, populated: Populated) -> ResidencyReport:
    return build_report(site, populated.org)


def tenant_data(report: ResidencyReport, tenant_id: str, region: str) -> dict[str, dict]:  # type: ignore[type-arg]
    tenant = next(t for t in report.tenants if t.id == tenant_id)
    held = next(r for r in tenant.regions if r.region == region)
    return {c["data_class"]: c for c in held.to_json()["data"]}


def current_key(store: RegionalStore, tenant: str) -> str:
    return store.keys.current_data_key(tenant)[0]


def test_counts_bytes_and_keys_of_a_known_site(site: Site, populated: Populated,
                                               report: ResidencyReport) -> None:
    eu = site.store("eu")
    ws_key = current_key(eu, populated.eu_workspace)
    data = tenant_data(report, populated.eu_workspace, "eu")
    assert {name: (c["records"], c["blobs"]) for name, c in data.items()} == {
        "conversations": (1, 0), "messages": (2, 0), "files": (1, 2), "gpts": (1, 0),
        "stored responses": (0, 0), "usage metadata": (0, 0),
        "audit entries": (data["audit entries"]["records"], 0)}
    assert data["audit entries"]["records"] >= 1  # its creation at least
    assert all(c["key_ids"] == [ws_key] for name, c in data.items()
               if c["records"] and c["bytes"] is not None)
    # the file's bytes and its extracted text, plus its sealed metadata rows
    assert data["files"]["bytes"] > 2 * len(FILE_BYTES)

    project = tenant_data(report, populated.eu_project, "eu")
    assert project["stored responses"]["records"] == 1
    # 1 version byte, 1 length byte, the key id, a 12-byte nonce, a 16-byte tag
    key = current_key(eu, populated.eu_project)
    assert project["stored responses"]["bytes"] == len(RESPONSE_BYTES) + 2 + len(key) + 28
    assert project["stored responses"]["key_ids"] == [key]
    assert (project["files"]["records"], project["files"]["blobs"]) == (0, 1)
    assert project["files"]["bytes"] > len(GATEWAY_FILE_BYTES)
    assert project["usage metadata"]["records"] == 3


def test_a_per_request_residency_project_is_reported_per_region(
        site: Site, populated: Populated, report: ResidencyReport) -> None:
    tenant = next(t for t in report.tenants if t.id == populated.global_project)
    assert tenant.region == "global"
    assert [held.region for held in tenant.regions] == ["eu", "us"]
    eu, us = tenant.regions
    assert not eu.holds_data
    assert us.holds_data
    assert us.key_ids == [current_key(site.store("us"), populated.global_project)]


def test_providers_and_endpoints_are_those_of_the_tenants_region(
        populated: Populated, report: ResidencyReport) -> None:
    us_workspace = next(t for t in report.tenants if t.id == populated.us_workspace)
    assert [held.region for held in us_workspace.regions] == ["us"]
    assert {p.name for p in us_workspace.regions[0].providers} == {"us-embeddings", "us-dev"}
    assert {p.region for p in us_workspace.regions[0].providers} == {"us"}
    project = next(t for t in report.tenants if t.id == populated.eu_project)
    assert "/v1/files" in project.regions[0].eligible  # regional retention keeps content
    roaming = next(t for t in report.tenants if t.id == populated.global_project)
    assert "/v1/files" not in roaming.regions[0].eligible  # zero retention


def test_the_markdown_names_regions_providers_and_keys(site: Site, populated: Populated,
                                                      report: ResidencyReport) -> None:
    markdown = render_markdown(report)
    assert "# Residency report: Acme" in markdown
    assert f"## Workspace Legal EU (`{populated.eu_workspace}`)" in markdown
    assert "- Region: **eu**" in markdown
    assert "### In region us (United States" in markdown
    assert "| eu-dev | dev-echo | eu |" in markdown
    assert f"`{current_key(site.store('eu'), populated.eu_workspace)}`" in markdown
    assert "Contract review" not in markdown  # never content


def test_an_unknown_org_is_not_found(site: Site) -> None:
    with pytest.raises(NotFound):
        build_report(site, "org_nope")


def test_the_endpoint_rule() -> None:
    assert eligible_endpoints(set(), retention="zero", has_store=True) == [
        "/v1/models", "/v1/residency"]
    assert eligible_endpoints({"chat"}, retention="regional", has_store=False) == [
        "/v1/models", "/v1/residency", "/v1/chat/completions", "/v1/responses"]
    assert "/v1/files" in eligible_endpoints({"chat"}, retention="regional", has_store=True)


def test_key_ids_are_read_from_record_and_blob_headers() -> None:
    assert key_id_of(b"\x01\x03abc" + b"\x00" * 40) == "abc"
    assert key_id_of(b"\x02\x02k1" + b"\x00" * 40) == "k1"
    assert key_id_of(b"plaintext") == "(unreadable)"
    assert key_id_of(b"\x01\x09ab") == "(unreadable)"
