"""`domicile audit head|verify --receipt|export` through the real command (G8): an auditor's
receipt catches every attack on a chain, including those the chain alone cannot (a cut tail
with its head rewound, a chain deleted whole); receipt files are hostile input (exit 2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.compliance.receipts import AuditSigner, Receipt
from domicile.config import load_settings
from domicile.site import Site
from tests.cli.conftest import Cli
from tests.compliance.tampering import ATTACKS, attack, tamper_sqlite


@pytest.fixture
def site_dir(site_config: str) -> Path:
    """The site of `site_config`, with five entries on the eu chain."""
    site = Site(load_settings(Path(site_config)))
    for index in range(5):
        site.store("eu").audit.append("cli", "test.action", f"obj_{index}", {"n": index})
    site.close()
    return Path(site_config).parent


def audit(cli: Cli, site_dir: Path, *args: str) -> Any:
    return cli("audit", *args, "--config", str(site_dir / "domicile.toml"))


def keep_receipt(cli: Cli, site_dir: Path, region: str = "eu") -> Path:
    out = site_dir.parent / f"{region}-receipt.json"
    result = audit(cli, site_dir, "head", "--region", region, "--out", str(out), "--json")
    assert result.code == 0, result.stderr
    return out


def test_head_prints_a_signed_receipt_and_appends_nothing(cli: Cli, site_dir: Path) -> None:
    printed = audit(cli, site_dir, "head", "--region", "eu")
    assert printed.code == 0, printed.stderr
    receipt = Receipt.from_json(printed.stdout)
    assert (receipt.chain, receipt.seq) == ("eu", 5)
    out = keep_receipt(cli, site_dir)
    assert out.stat().st_mode & 0o777 == 0o600
    assert Receipt.from_json(out.read_text()).key_id == receipt.key_id
    exported = audit(cli, site_dir, "export", "--region", "eu")
    assert [json.loads(line)["seq"] for line in exported.stdout.splitlines()] == [1, 2, 3, 4, 5]
    assert json.loads(exported.stdout.splitlines()[-1])["hash"] == receipt.hash


def test_an_intact_chain_extends_its_receipt(cli: Cli, site_dir: Path) -> None:
    receipt = keep_receipt(cli, site_dir)
    result = audit(cli, site_dir, "verify", "--receipt", str(receipt), "--json")
    assert result.code == 0, result.stderr
    eu = next(chain for chain in result.json["chains"] if chain["chain"] == "eu")
    assert eu == {"chain": "eu", "ok": True, "problem": None, "first_bad_seq": None,
                  "receipt_seq": 5}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_attack_is_named_against_the_receipt(cli: Cli, site_dir: Path, name: str) -> None:
    receipt = keep_receipt(cli, site_dir)
    statements, first_bad = attack(name, "eu")
    tamper_sqlite(site_dir / "eu" / "store.db", *statements)
    result = audit(cli, site_dir, "verify", "--region", "eu", "--receipt", str(receipt),
                   "--json")
    assert result.code == 1, result.stderr
    assert f"audit chain 'eu': entry {first_bad}:" in result.stderr
    assert result.json["chains"] == [{
        "chain": "eu", "ok": False, "first_bad_seq": first_bad, "receipt_seq": 5,
        "problem": result.json["chains"][0]["problem"]}]


def test_head_refuses_to_sign_a_broken_chain(cli: Cli, site_dir: Path) -> None:
    statements, _ = attack("tampered", "eu")
    tamper_sqlite(site_dir / "eu" / "store.db", *statements)
    result = audit(cli, site_dir, "head", "--region", "eu")
    assert result.code == 1 and result.stdout == ""
    assert "not signing a broken chain" in result.stderr and "entry 3" in result.stderr


def test_a_receipt_of_us_is_refused_for_eu(cli: Cli, site_dir: Path) -> None:
    keep_receipt(cli, site_dir, "eu")
    us_receipt = keep_receipt(cli, site_dir, "us")
    result = audit(cli, site_dir, "verify", "--region", "eu", "--receipt", str(us_receipt))
    assert result.code == 2 and "of chain 'us'" in result.stderr
    # Relabelled as eu's, eu's own key refuses it.
    fields = json.loads(us_receipt.read_text())
    us_receipt.write_text(json.dumps({**fields, "chain": "eu"}))
    result = audit(cli, site_dir, "verify", "--region", "eu", "--receipt", str(us_receipt))
    assert result.code == 2 and "not signed by chain 'eu'" in result.stderr


def test_forged_receipts_are_refused(cli: Cli, site_dir: Path) -> None:
    receipt_file = keep_receipt(cli, site_dir)
    receipt = Receipt.from_json(receipt_file.read_text())
    fields = json.loads(receipt.to_json())
    # A signature that is not eu's key's, on a receipt naming eu's key.
    last = "1" if fields["signature"][-1] == "0" else "0"
    receipt_file.write_text(json.dumps({**fields, "signature": fields["signature"][:-1] + last}))
    result = audit(cli, site_dir, "verify", "--receipt", str(receipt_file))
    assert result.code == 2 and "does not verify" in result.stderr
    # A receipt of a later head, well signed by a forger's own key (carried inside it).
    forged = AuditSigner("eu", Ed25519PrivateKey.generate()).sign(9, receipt.hash)
    receipt_file.write_text(forged.to_json())
    result = audit(cli, site_dir, "verify", "--receipt", str(receipt_file))
    assert result.code == 2 and "not signed by chain 'eu'" in result.stderr


@pytest.mark.parametrize(("content", "words"), [
    (b"this is not json", "not a JSON object"),
    (b'{"format": 1, "version": "1"}', "lacks"),
    (b"x" * (1024 * 1024), "larger than"),
    (b"\xff\xfe\x00", "not a JSON object"),
])
def test_a_hostile_receipt_file_is_exit_2(cli: Cli, site_dir: Path, content: bytes,
                                          words: str) -> None:
    hostile = site_dir.parent / "hostile.json"
    hostile.write_bytes(content)
    result = audit(cli, site_dir, "verify", "--receipt", str(hostile), "--json")
    assert result.code == 2 and result.stdout == ""
    error = json.loads(result.stderr)["error"]
    assert words in error["message"] and error["param"] == "receipt"


def test_a_wrongly_typed_receipt_is_exit_2(cli: Cli, site_dir: Path) -> None:
    receipt_file = keep_receipt(cli, site_dir)
    fields = json.loads(receipt_file.read_text())
    receipt_file.write_text(json.dumps({**fields, "seq": str(fields["seq"])}))
    result = audit(cli, site_dir, "verify", "--receipt", str(receipt_file))
    assert result.code == 2 and "seq is not an integer" in result.stderr
    missing = audit(cli, site_dir, "verify", "--receipt", str(site_dir / "absent.json"))
    assert missing.code == 2 and "cannot be read" in missing.stderr


def test_export_since_filters_and_writes_json_lines(cli: Cli, site_dir: Path) -> None:
    everything = audit(cli, site_dir, "export", "--region", "eu")
    assert everything.code == 0, everything.stderr
    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    assert list(lines[0]) == ["chain", "seq", "at", "actor", "action", "target", "details",
                              "prev_hash", "hash"]
    assert lines[2]["details"] == {"n": 2} and lines[1]["prev_hash"] == lines[0]["hash"]
    third = datetime.fromisoformat(lines[2]["at"])
    naive = third.astimezone(UTC).replace(tzinfo=None).isoformat()  # UTC when unmarked
    later = audit(cli, site_dir, "export", "--region", "eu", "--since", naive)
    assert [json.loads(line)["seq"] for line in later.stdout.splitlines()] == [3, 4, 5]
    tomorrow = (third + timedelta(days=1)).date().isoformat()
    assert audit(cli, site_dir, "export", "--region", "eu", "--since", tomorrow).stdout == ""
    yesterday = (third - timedelta(days=1)).date().isoformat()
    out = site_dir.parent / "eu-audit.jsonl"
    written = audit(cli, site_dir, "export", "--region", "eu", "--since", yesterday,
                    "--out", str(out), "--json")
    assert written.code == 0 and written.json["entries"] == 5
    assert out.read_text() == everything.stdout and out.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("since", ["2026-13-01", "yesterday", "2026-01-01T25:00"])
def test_export_refuses_a_bad_date(cli: Cli, site_dir: Path, since: str) -> None:
    result = audit(cli, site_dir, "export", "--region", "eu", "--since", since)
    assert result.code == 2 and "--since" in result.stderr and result.stdout == ""
