"""G8: signed receipts of chain heads catch what the chain alone cannot (a cut tail with its
head rewound, a chain deleted whole), and a receipt is refused unless the chain's own key
signed it; receipt files are parsed as hostile input; signing keys are private files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.compliance.receipts import (
    MAX_RECEIPT_BYTES,
    SIGNING_KEY_NAME,
    AuditSigner,
    Receipt,
    SigningKeyMissing,
    chain_public_key,
    chain_signer,
    signing_key_path,
    verify_against_receipt,
)
from domicile.config import KeyProviderSettings
from domicile.errors import ConfigError, InvalidInput
from domicile.site import Site
from tests.compliance.tampering import ATTACKS, attack, tamper
from tests.conftest import SiteFactory


@pytest.fixture
def audited(site: Site) -> Site:
    for index in range(5):
        site.store("eu").audit.append("cli", "test.action", f"obj_{index}", {"n": index})
    return site


@pytest.fixture
def sample(make_site: SiteFactory) -> Receipt:
    """A receipt of a five-entry chain, for the tests of parsing (no database needed)."""
    site = make_site("sqlite")
    for index in range(5):
        site.store("eu").audit.append("cli", "test.action", f"obj_{index}")
    return head_receipt(site)


def head_receipt(site: Site, chain: str = "eu") -> Receipt:
    walked = site.audit_log(chain).check()
    assert walked.problem is None
    return chain_signer(site.settings, chain).sign(walked.seq, walked.hash)


def verify(site: Site, receipt: Receipt, chain: str = "eu") -> Any:
    return verify_against_receipt(site.audit_log(chain), receipt,
                                  chain_public_key(site.settings, chain))


def test_a_chain_that_grew_still_extends_its_receipt(audited: Site) -> None:
    receipt = head_receipt(audited)
    assert verify(audited, receipt) is None
    audited.store("eu").audit.append("cli", "test.action", "obj_later")
    assert verify(audited, receipt) is None


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_is_named_against_a_receipt(audited: Site, name: str) -> None:
    receipt = head_receipt(audited)
    statements, first_bad = attack(name, "eu")
    tamper(audited.store("eu").engine, *statements)
    problem = verify(audited, receipt)
    assert problem is not None and (problem.chain, problem.seq) == ("eu", first_bad)


def test_a_chain_rewritten_up_to_the_receipt_is_caught(audited: Site) -> None:
    """Someone holding the site secret could rebuild a consistent chain; the receipt still
    pins the head's hash."""
    signed_elsewhere = chain_signer(audited.settings, "eu").sign(5, "ab" * 32)
    problem = verify(audited, signed_elsewhere)
    assert problem is not None and problem.seq == 5 and "receipt" in problem.reason


def test_the_directory_chain_has_its_own_key(audited: Site) -> None:
    audited.directory.create_org("Acme")
    receipt = head_receipt(audited, "directory")
    assert receipt.seq == 1 and verify(audited, receipt, "directory") is None
    assert receipt.key_id != head_receipt(audited).key_id
    assert signing_key_path(audited.settings, "directory") == (
        audited.settings.directory.secret_file.parent / SIGNING_KEY_NAME)


def test_a_receipt_of_another_region_is_refused(audited: Site) -> None:
    head_receipt(audited)  # eu has a key of its own
    us_receipt = head_receipt(audited, "us")
    with pytest.raises(InvalidInput, match="of chain 'us', not of 'eu'"):
        verify_against_receipt(audited.store("eu").audit, us_receipt,
                               chain_public_key(audited.settings, "eu"))
    # Relabelled as eu, it names us's key, not eu's.
    relabelled = Receipt("eu", us_receipt.seq, us_receipt.hash, us_receipt.at,
                         us_receipt.key_id, us_receipt.public_key, us_receipt.signature)
    with pytest.raises(InvalidInput, match="not signed by chain 'eu'"):
        verify(audited, relabelled)


def test_a_receipt_signed_by_another_key_is_refused(audited: Site) -> None:
    """A forger's key, carried inside the receipt, proves nothing: eu's own key decides."""
    receipt = head_receipt(audited)
    forger = AuditSigner("eu", Ed25519PrivateKey.generate())
    forged = forger.sign(receipt.seq, receipt.hash)
    forged.check_signature(forger.public_key)  # self-consistent...
    with pytest.raises(InvalidInput, match="not signed by chain 'eu'"):
        verify(audited, forged)  # ...but not eu's


def test_an_altered_receipt_is_refused(audited: Site) -> None:
    receipt = head_receipt(audited)
    flipped = receipt.signature[:-1] + ("0" if receipt.signature[-1] != "0" else "1")
    for altered in (
        Receipt(receipt.chain, receipt.seq, receipt.hash, receipt.at, receipt.key_id,
                receipt.public_key, flipped),
        Receipt(receipt.chain, receipt.seq - 1, receipt.hash, receipt.at, receipt.key_id,
                receipt.public_key, receipt.signature),
    ):
        with pytest.raises(InvalidInput, match="does not verify"):
            verify(audited, altered)


def test_a_missing_signing_key_fails_verification(audited: Site) -> None:
    receipt = head_receipt(audited)
    signing_key_path(audited.settings, "eu").unlink()
    with pytest.raises(SigningKeyMissing, match="no audit signing key"):
        chain_public_key(audited.settings, "eu")
    assert not signing_key_path(audited.settings, "eu").exists()  # never made by a check
    assert receipt.seq == 5


# -- receipt files ---------------------------------------------------------------------------


def test_a_receipt_survives_its_json(sample: Receipt) -> None:
    receipt = sample
    assert Receipt.from_json(receipt.to_json()) == receipt
    assert Receipt.from_json(receipt.to_json().encode()) == receipt
    assert set(json.loads(receipt.to_json())) == {
        "format", "version", "chain", "seq", "hash", "at", "key_id", "public_key",
        "signature"}


Edit = Callable[[dict[str, Any]], Any]


def _set(name: str, value: Any) -> Edit:
    def edit(fields: dict[str, Any]) -> Any:
        fields[name] = value
        return fields
    return edit


def _drop(name: str) -> Edit:
    def edit(fields: dict[str, Any]) -> Any:
        del fields[name]
        return fields
    return edit


HOSTILE: dict[str, Edit] = {
    "a list": lambda fields: [fields],
    "seq as text": _set("seq", "5"),
    "seq as bool": _set("seq", True),
    "seq negative": _set("seq", -1),
    "seq huge": _set("seq", 2**80),
    "version 2": _set("version", 2),
    "version as float": _set("version", 1.0),
    "other format": _set("format", "something-else"),
    "chain not a name": _set("chain", "EU; DROP"),
    "chain as number": _set("chain", 7),
    "hash not hex": _set("hash", "z" * 64),
    "hash upper case": lambda fields: {**fields, "hash": fields["hash"].upper()},
    "genesis hash at seq 5": _set("hash", "0" * 64),
    "naive at": lambda fields: {**fields, "at": fields["at"][:-6]},
    "at as number": _set("at", 1700000000),
    "at in month 13": lambda fields: {**fields, "at": "2026-13" + fields["at"][7:]},
    "key id of another key": _set("key_id", "ab" * 16),
    "signature short": lambda fields: {**fields, "signature": fields["signature"][:-2]},
    "public key null": _set("public_key", None),
    "missing signature": _drop("signature"),
    "unknown field": _set("comment", "hi"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_receipt_is_refused_by_name(sample: Receipt, name: str) -> None:
    fields = json.loads(sample.to_json())
    with pytest.raises(InvalidInput, match="not a valid audit receipt"):
        Receipt.from_json(json.dumps(HOSTILE[name](fields)))


@pytest.mark.parametrize("text", [
    "", "not json", "{", "null", "[]", '"receipt"', "\udcff", b"\xff\xfe{}",
    "[" * 5000 + "]" * 5000,  # under the size limit, deeper than the parser goes
    '{"seq": NaN}',
    " " * (MAX_RECEIPT_BYTES + 1),
])
def test_what_is_not_a_receipt_is_refused(text: str | bytes) -> None:
    with pytest.raises(InvalidInput, match="not a valid audit receipt"):
        Receipt.from_json(text)


def test_duplicate_fields_are_refused(sample: Receipt) -> None:
    text = sample.to_json()
    doubled = text.replace('"seq"', '"seq": 1, "seq"', 1)
    with pytest.raises(InvalidInput, match="not a valid audit receipt"):
        Receipt.from_json(doubled)


def test_a_receipt_file_is_read_bounded(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (50 * MAX_RECEIPT_BYTES))
    with pytest.raises(InvalidInput, match="larger than"):
        Receipt.load(huge)
    with pytest.raises(InvalidInput, match="cannot be read"):
        Receipt.load(tmp_path / "absent.json")
    with pytest.raises(InvalidInput, match="cannot be read"):
        Receipt.load(tmp_path)


# -- signing keys ----------------------------------------------------------------------------


def test_the_signing_key_is_made_once_beside_the_kek_0600(audited: Site) -> None:
    path = signing_key_path(audited.settings, "eu")
    assert path == audited.settings.region("eu").key_provider.path.parent / SIGNING_KEY_NAME
    assert not path.exists()
    first = chain_signer(audited.settings, "eu")
    assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_size == 32
    assert chain_signer(audited.settings, "eu").key_id == first.key_id
    assert path.read_bytes().hex() not in repr(first)
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_signing_key_others_can_reach_is_refused(audited: Site, mode: int) -> None:
    chain_signer(audited.settings, "eu")
    path = signing_key_path(audited.settings, "eu")
    os.chmod(path, mode)
    with pytest.raises(InvalidInput, match="must be 0600"):
        chain_signer(audited.settings, "eu")


def test_a_signing_key_of_the_wrong_size_is_refused(audited: Site) -> None:
    path = signing_key_path(audited.settings, "eu")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"x" * 31)
    os.close(fd)
    with pytest.raises(InvalidInput, match="exactly 32 bytes"):
        chain_signer(audited.settings, "eu")


def test_two_chains_never_share_a_signing_key(audited: Site) -> None:
    settings = audited.settings
    eu = settings.region("eu")
    us = settings.region("us").model_copy(update={"key_provider": KeyProviderSettings(
        path=eu.key_provider.path.parent / "us-kek.key"), "key_dir": eu.key_dir})
    shared = settings.model_copy(update={"regions": {"eu": eu, "us": us}})
    with pytest.raises(ConfigError, match=r"regions\.us\.key_provider\.path"):
        signing_key_path(shared, "us")
    with pytest.raises(ConfigError, match="unknown region"):
        signing_key_path(settings, "mars")
