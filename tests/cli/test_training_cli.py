"""`domicile training export` through the real command: exit 2 without consent (G7)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Cli


def test_training_export_needs_the_orgs_consent(cli: Cli, site_config: str,
                                                tmp_path: Path) -> None:
    org = cli("org", "create", "--name", "Acme", "--config", site_config, "--json").json
    out = tmp_path / "train.jsonl"
    refused = cli("training", "export", "--org", org["id"], "--out", str(out),
                  "--config", site_config, "--json")
    assert refused.code == 2
    assert json.loads(refused.stderr)["error"]["code"] == "training_not_consented"
    assert not out.exists()

    assert cli("org", "set", org["id"], "--training-opt-in", "true",
               "--config", site_config).code == 0
    done = cli("training", "export", "--org", org["id"], "--out", str(out),
               "--config", site_config, "--json")
    assert done.code == 0, done.stderr
    assert done.json["examples"] == 0 and out.read_text() == ""
    again = cli("training", "export", "--org", org["id"], "--out", str(out),
                "--config", site_config, "--json")
    assert again.code == 2 and "exists" in json.loads(again.stderr)["error"]["message"]
