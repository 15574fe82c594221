"""`domicile residency report` and `domicile residency verify`, as a script runs them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.cli.conftest import Cli


def make_org(cli: Cli, config: str) -> tuple[str, str]:
    org = cli("org", "create", "--name", "Acme", "--config", config, "--json").json["id"]
    workspace = cli("workspace", "create", "--org", org, "--name", "Legal", "--region", "eu",
                    "--config", config, "--json").json["id"]
    return org, workspace


def test_report_in_markdown_and_json(cli: Cli, site_config: str) -> None:
    org, workspace = make_org(cli, site_config)
    markdown = cli("residency", "report", "--org", org, "--config", site_config)
    assert markdown.code == 0, markdown.stderr
    assert f"## Workspace Legal (`{workspace}`)" in markdown.stdout
    assert "| eu-dev | dev-echo | eu |" in markdown.stdout
    for args in (("--format", "json"), ("--json",)):
        result = cli("residency", "report", "--org", org, *args, "--config", site_config)
        assert result.code == 0, result.stderr
        [tenant] = result.json["tenants"]
        assert (tenant["id"], tenant["region"]) == (workspace, "eu")


def test_report_of_an_unknown_org_is_bad_input(cli: Cli, site_config: str) -> None:
    result = cli("residency", "report", "--org", "org_nope", "--config", site_config, "--json")
    assert result.code == 2
    assert "org_nope" in result.stderr


def test_verify_passes_then_names_a_plaintext_column(cli: Cli, site_config: str) -> None:
    make_org(cli, site_config)
    clean = cli("residency", "verify", "--config", site_config, "--json")
    assert clean.code == 0, clean.stderr
    assert clean.json["ok"] is True
    assert clean.json["violations"] == []
    human = cli("residency", "verify", "--region", "eu", "--config", site_config)
    assert human.code == 0, human.stderr
    assert "no violations" in human.stdout

    store = Path(site_config).parent / "eu" / "store.db"
    with sqlite3.connect(store) as conn:
        conn.execute("ALTER TABLE ws_messages ADD COLUMN note TEXT")
    broken = cli("residency", "verify", "--config", site_config, "--json")
    assert broken.code == 1
    assert broken.json["violations"] == [{
        "region": "eu", "table": "ws_messages", "row": None, "tenant": None,
        "problem": "column 'note' is not in the schema (added by hand?)"}]
    human = cli("residency", "verify", "--config", site_config)
    assert human.code == 1
    assert "ws_messages" in human.stderr and "1 violation" in human.stderr
    # another region is still clean
    assert cli("residency", "verify", "--region", "us", "--config", site_config).code == 0
