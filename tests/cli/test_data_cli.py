"""`domicile export` and `domicile erase` through the real command (G9)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from domicile.config import load_settings
from domicile.site import Site
from tests.cli.conftest import Cli
from tests.compliance.test_export import Tenancy, fill


@pytest.fixture
def tenancy(site_config: str) -> Tenancy:
    site = Site(load_settings(Path(site_config)))
    try:
        return fill(site)
    finally:
        site.close()


def has_key(site_config: str, region: str, tenant: str) -> bool:
    site = Site(load_settings(Path(site_config)))
    try:
        return site.store(region).keys.has_tenant(tenant)
    finally:
        site.close()


def test_export_writes_the_zip_and_never_overwrites(cli: Cli, site_config: str,
                                                    tenancy: Tenancy, tmp_path: Path) -> None:
    out = tmp_path / "acme.zip"
    done = cli("export", "--org", tenancy.org_id, "--out", str(out), "--config", site_config,
               "--json")
    assert done.code == 0, done.stderr
    assert done.json["entries"] > 0 and done.json["regions"] == ["eu", "us"]
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert len(manifest["entries"]) == done.json["entries"]

    before = out.read_bytes()
    again = cli("export", "--org", tenancy.org_id, "--out", str(out), "--config", site_config)
    assert again.code == 2 and "already exists" in again.stderr
    assert out.read_bytes() == before


def test_export_shows_a_summary_without_json(cli: Cli, site_config: str, tenancy: Tenancy,
                                             tmp_path: Path) -> None:
    done = cli("export", "--workspace", tenancy.workspace_id, "--out",
               str(tmp_path / "ws.zip"), "--config", site_config)
    assert done.code == 0, done.stderr
    assert "conversations" in done.stdout and tenancy.workspace_id in done.stdout


@pytest.mark.parametrize("scope", [[], ["--org", "org_a", "--workspace", "ws_b"]])
def test_export_needs_exactly_one_scope(cli: Cli, site_config: str, tmp_path: Path,
                                        scope: list[str]) -> None:
    done = cli("export", *scope, "--out", str(tmp_path / "x.zip"), "--config", site_config)
    assert done.code == 2 and "exactly one" in done.stderr
    assert not (tmp_path / "x.zip").exists()


def test_erase_without_yes_says_what_and_changes_nothing(cli: Cli, site_config: str,
                                                         tenancy: Tenancy) -> None:
    done = cli("erase", "--workspace", tenancy.workspace_id, "--config", site_config, "--json")
    assert done.code == 2
    assert "Nothing was erased" in done.stderr and "--yes" in done.stderr
    plan = done.json
    assert plan["erased"] is False and plan["holdings"][0]["rows"]["ws_conversations"] == 2
    assert has_key(site_config, "eu", tenancy.workspace_id)
    member = cli("erase", "--workspace", tenancy.workspace_id, "--member",
                 tenancy.alice.user_id, "--config", site_config)
    assert member.code == 2 and "Nothing was erased" in member.stderr


def test_erase_an_org_then_again(cli: Cli, site_config: str, tenancy: Tenancy) -> None:
    done = cli("erase", "--org", tenancy.org_id, "--yes", "--config", site_config, "--json")
    assert done.code == 0, done.stderr
    report = done.json
    assert report["data_keys_destroyed"] >= 3 and sorted(report["keks_rotated"]) == ["eu", "us"]
    assert any(tenancy.workspace_id in statement for statement in report["receipts"])
    assert not has_key(site_config, "eu", tenancy.workspace_id)

    again = cli("erase", "--org", tenancy.org_id, "--yes", "--config", site_config)
    assert again.code == 0 and "already erased" in again.stdout
    export = cli("export", "--org", tenancy.org_id, "--out", "after.zip", "--config",
                 site_config)
    assert export.code == 2 and "erased" in export.stderr


def test_erase_one_members_content(cli: Cli, site_config: str, tenancy: Tenancy) -> None:
    done = cli("erase", "--workspace", tenancy.workspace_id, "--member",
               tenancy.alice.user_id, "--yes", "--config", site_config, "--json")
    assert done.code == 0, done.stderr
    assert done.json["erased"] is True and done.json["rows"]["ws_conversations"] == 1
    assert has_key(site_config, "eu", tenancy.workspace_id)
    wrong = cli("erase", "--org", tenancy.org_id, "--member", tenancy.alice.user_id, "--yes",
                "--config", site_config)
    assert wrong.code == 2 and "--member goes with --workspace" in wrong.stderr
    stranger = cli("erase", "--workspace", tenancy.workspace_id, "--member", "user_nobody",
                   "--yes", "--config", site_config)
    assert stranger.code == 2
