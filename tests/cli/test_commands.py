"""The `domicile` command as scripts use it: --config/--json after the arguments, exit codes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.cli.conftest import Cli


@pytest.fixture
def cli(cli_process: Cli) -> Cli:
    """Here the real command, each call its own process, as scripts run it."""
    return cli_process


def test_init_writes_a_site_with_private_keys(cli: Cli, tmp_path: Path) -> None:
    result = cli("init", "--dir", "s", "--port-base", "18600", "--json")
    assert result.code == 0, result.stderr
    payload = result.json
    assert payload["regions"] == {"eu": "http://127.0.0.1:18600", "us": "http://127.0.0.1:18601"}
    for region in ("eu", "us"):
        key = tmp_path / "s" / region / "kek.key"
        assert key.stat().st_size == 32
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "s" / "eu" / "store.db").exists()


def test_init_refuses_an_existing_site_and_never_overwrites_keys(cli: Cli, tmp_path: Path) -> None:
    assert cli("init", "--dir", "s").code == 0
    key = tmp_path / "s" / "eu" / "kek.key"
    before = key.read_bytes()
    again = cli("init", "--dir", "s")
    assert again.code == 2 and "--force" in again.stderr
    forced = cli("init", "--dir", "s", "--force", "--port-base", "18700")
    assert forced.code == 0, forced.stderr
    assert key.read_bytes() == before
    assert "18700" in (tmp_path / "s" / "domicile.toml").read_text()


def test_bad_init_input_leaves_nothing_behind(cli: Cli, tmp_path: Path) -> None:
    result = cli("init", "--dir", "s", "--port-base", "70000")
    assert result.code == 2
    assert not (tmp_path / "s").exists()


def test_org_project_key_flow_with_json(cli: Cli, site_config: str) -> None:
    org = cli("org", "create", "--name", "Acme", "--config", site_config, "--json")
    assert org.code == 0, org.stderr
    assert org.json["id"].startswith("org_") and org.json["training_opt_in"] is False
    project = cli("project", "create", "--org", org.json["id"], "--name", "app", "--region", "eu",
                  "--config", site_config, "--json")
    assert project.code == 0, project.stderr
    assert project.json["region"] == "eu" and project.json["retention"] == "zero"
    key = cli("key", "create", "--project", project.json["id"], "--config", site_config, "--json")
    assert key.code == 0 and key.json["key"].startswith("dk-eu-")
    assert key.json["id"].startswith("key_")
    revoke = cli("key", "revoke", key.json["id"], "--config", site_config, "--json")
    assert revoke.code == 0 and revoke.json["revoked"] is True
    consent = cli("org", "set", org.json["id"], "--training-opt-in", "true",
                  "--config", site_config, "--json")
    assert consent.code == 0 and consent.json["training_opt_in"] is True


def test_config_from_environment(cli: Cli, site_config: str, tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.cli.conftest import DOMICILE
    done = subprocess.run([DOMICILE, "org", "create", "--name", "Env", "--json"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "DOMICILE_CONFIG": site_config})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "Env"


def test_bad_input_exits_2_and_creates_nothing(cli: Cli, site_config: str) -> None:
    org = cli("org", "create", "--name", "Acme", "--config", site_config, "--json").json
    for args in (
        ["project", "create", "--org", org["id"], "--name", "x", "--region", "mars"],
        ["project", "create", "--org", org["id"], "--name", "x", "--region", "global"],
        ["project", "create", "--org", org["id"], "--name", "x", "--region", "eu",
         "--retention", "forever"],
        ["project", "create", "--org", "org_nope", "--name", "x", "--region", "eu"],
        ["org", "set", org["id"], "--training-opt-in", "maybe"],
    ):
        result = cli(*args, "--config", site_config, "--json")
        assert result.code == 2, (args, result.stderr)
        assert result.stdout == ""
        assert json.loads(result.stderr)["error"]["message"]
    usage = cli("audit", "verify", "--config", site_config, "--json")
    assert usage.code == 0
    # only the org's creation is on record: no half-made project anywhere
    eu_entries = [c for c in usage.json["chains"]]
    assert all(c["ok"] for c in eu_entries)


def test_project_region_cannot_be_changed_from_the_cli(cli: Cli, site_config: str) -> None:
    org = cli("org", "create", "--name", "Acme", "--config", site_config, "--json").json
    project = cli("project", "create", "--org", org["id"], "--name", "p", "--region", "eu",
                  "--config", site_config, "--json").json
    moved = cli("project", "set", project["id"], "--region", "us", "--config", site_config)
    assert moved.code == 2 and "can never change" in moved.stderr
    shown = cli("project", "show", project["id"], "--config", site_config, "--json")
    assert shown.json["region"] == "eu"


def test_workspace_user_token(cli: Cli, site_config: str) -> None:
    org = cli("org", "create", "--name", "Uni", "--config", site_config, "--json").json
    ws = cli("workspace", "create", "--org", org["id"], "--name", "Lab", "--region", "us",
             "--config", site_config, "--json")
    assert ws.code == 0 and ws.json["id"].startswith("ws_") and ws.json["region"] == "us"
    user = cli("user", "add", "--workspace", ws.json["id"], "--email", "a@uni.edu", "--role",
               "member", "--password-stdin", "--config", site_config, "--json",
               stdin="a long password\n")
    assert user.code == 0, user.stderr
    token = cli("token", "create", "--workspace", ws.json["id"], "--user", user.json["id"],
                "--config", site_config, "--json")
    assert token.code == 0 and token.json["token"].startswith("dw-us-")


def test_audit_verify_exits_1_naming_the_bad_entry(cli: Cli, site_config: str) -> None:
    import sqlite3

    org = cli("org", "create", "--name", "Acme", "--config", site_config, "--json").json
    for name in ("a", "b", "c"):
        cli("project", "create", "--org", org["id"], "--name", name, "--region", "eu",
            "--config", site_config)
    assert cli("audit", "verify", "--config", site_config).code == 0
    db = Path(site_config).parent / "eu" / "store.db"
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_log_refuse_update")
    conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    conn.commit()
    conn.close()
    result = cli("audit", "verify", "--region", "eu", "--config", site_config, "--json")
    assert result.code == 1
    assert result.json["ok"] is False and result.json["chains"][0]["first_bad_seq"] == 2
    human = cli("audit", "verify", "--config", site_config)
    assert human.code == 1 and "entry 2" in human.stderr


def test_audit_verify_with_an_unreachable_database_exits_1_in_one_line(
        cli: Cli, site_config: str) -> None:
    config = Path(site_config)
    config.write_text(config.read_text().replace(
        'database_url = "sqlite:///us/store.db"',
        'database_url = "postgresql://postgres@127.0.0.1:1/nope"\n'  # nothing listens on 1
        'keystore_url = "postgresql://postgres@127.0.0.1:1/nope_keys"'))
    human = cli("audit", "verify", "--config", site_config)
    assert human.code == 1
    assert human.stderr.count("\n") == 1 and "Traceback" not in human.stderr
    assert "chain us cannot be read: OperationalError" in human.stderr
    assert "Connection refused" in human.stderr
    result = cli("audit", "verify", "--config", site_config, "--json")
    assert result.code == 1 and "Traceback" not in result.stderr
    assert [(c["chain"], c["ok"]) for c in result.json["chains"]] == [
        ("directory", True), ("eu", True), ("us", False)]


def test_missing_config_is_exit_2_naming_it(cli: Cli) -> None:
    result = cli("org", "create", "--name", "x", "--config", "nowhere.toml")
    assert result.code == 2 and "nowhere.toml" in result.stderr


def test_kek_rotation_keeps_content_readable(cli: Cli, site_config: str) -> None:
    from domicile.config import load_settings
    from domicile.site import Site
    from domicile.storage.interfaces import TenantRef

    org = cli("org", "create", "--name", "Acme", "--config", site_config, "--json").json
    project = cli("project", "create", "--org", org["id"], "--name", "p", "--region", "eu",
                  "--retention", "regional", "--config", site_config, "--json").json
    site = Site(load_settings(site_config))
    tenant = TenantRef(project["id"], "eu", org["id"])
    site.store("eu").put_record(tenant, "note", "n1", b"kept across rotation")
    site.close()
    kek = Path(site_config).parent / "eu" / "kek.key"
    before = kek.read_bytes()
    rotated = cli("kek", "rotate", "--region", "eu", "--config", site_config, "--json")
    assert rotated.code == 0, rotated.stderr
    assert rotated.json["rotated"]["eu"] >= 1
    assert kek.read_bytes() != before
    site = Site(load_settings(site_config))
    assert site.store("eu").get_record(tenant, "note", "n1") == b"kept across rotation"
    assert [e.action for e in site.store("eu").audit.entries()][-1] == "kek.rotate"
    site.close()
