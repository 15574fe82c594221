"""Signed receipts of audit chain heads (G8): what an auditor keeps to prove a chain later.

The hash chain catches an entry altered, removed or reordered, and `audit_head` a cut tail;
neither catches a tail cut together with its head rewound, or a chain deleted whole. A
receipt does: it is the chain's head (seq and hash) at a moment, signed with the chain's own
Ed25519 key. An auditor keeps it outside the site; later `verify_against_receipt` proves the
chain still holds that entry, unchanged, and is intact up to its head.

One rule for where the signing keys live: beside the secret that chain's site part already
keeps, named `audit-signing.key`. A region's is beside its key-encryption key
(`<kek_path.parent>/audit-signing.key`); the directory's beside the directory secret
(`<secret_file.parent>/audit-signing.key`). Two chains must not share that file: a
configuration that would make them (two KEKs in one folder) is refused when a key is needed.
A key file is 32 raw bytes (the Ed25519 private key), mode 0600, made the first time a
receipt is signed; one that group or others can open is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

from domicile.compliance.audit import GENESIS, AuditLog, AuditProblem
from domicile.config import Settings
from domicile.crypto.signing import BadSignature, SigningKey, VerifyKey
from domicile.errors import ConfigError, DomicileError, InvalidInput
from domicile.storage.private import make_private_dirs
from domicile.tenancy.directory import DIRECTORY_CHAIN

__all__ = ["MAX_RECEIPT_BYTES", "RECEIPT_FORMAT", "RECEIPT_VERSION", "SIGNING_KEY_NAME",
           "AuditSigner", "Receipt", "SigningKeyMissing", "chain_public_key", "chain_signer",
           "key_fingerprint", "signing_key_path", "verify_against_receipt"]

RECEIPT_FORMAT = "domicile-audit-receipt"
RECEIPT_VERSION = 1
SIGNING_KEY_NAME = "audit-signing.key"
MAX_RECEIPT_BYTES = 16 * 1024  # a receipt is about 500 bytes; anything far larger is not one

_KEY_SIZE = 32
_FIELDS = ("format", "version", "chain", "seq", "hash", "at", "key_id", "public_key",
           "signature")
_CHAIN = re.compile(r"directory|[a-z][a-z0-9]{1,15}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}\+00:00")
_MAX_SEQ = 2**63 - 1


class SigningKeyMissing(DomicileError):
    """A receipt cannot be checked: the chain's signing key is gone (exit 1: the site, not
    the receipt, is what is wrong)."""

    code = "audit_signing_key_missing"


def key_fingerprint(public_key: VerifyKey) -> str:
    """The key id a receipt names: the first 16 bytes of SHA-256 of the raw public key, hex."""
    return sha256(public_key.public_bytes_raw()).digest()[:16].hex()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Receipt:
    """A chain's head, signed. `public_key` and `signature` are hex of the raw bytes."""

    chain: str
    seq: int
    hash: str
    at: datetime
    key_id: str
    public_key: str
    signature: str

    def signed_bytes(self) -> bytes:
        return _signed_bytes(self.chain, self.seq, self.hash, self.at, self.key_id)

    def to_json(self) -> str:
        return json.dumps({
            "format": RECEIPT_FORMAT, "version": RECEIPT_VERSION, "chain": self.chain,
            "seq": self.seq, "hash": self.hash, "at": _iso(self.at), "key_id": self.key_id,
            "public_key": self.public_key, "signature": self.signature,
        }, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Receipt:
        """Parse a receipt strictly (it may come from anywhere): InvalidInput naming what is
        wrong, never echoing what the file holds."""
        if len(text) > MAX_RECEIPT_BYTES:
            raise _invalid(f"is larger than {MAX_RECEIPT_BYTES} bytes")
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            parsed = json.loads(text, object_pairs_hook=_no_duplicates,
                                parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise _invalid("is not a JSON object") from None
        if not isinstance(parsed, dict):
            raise _invalid("is not a JSON object")
        missing = [name for name in _FIELDS if name not in parsed]
        if missing:
            raise _invalid(f"lacks {', '.join(missing)}")
        unknown = sorted(set(parsed) - set(_FIELDS))
        if unknown:
            raise _invalid(f"has {len(unknown)} unknown field(s)")
        if parsed["format"] != RECEIPT_FORMAT:
            raise _invalid(f"format is not {RECEIPT_FORMAT!r}")
        if _integer(parsed, "version") != RECEIPT_VERSION:
            raise _invalid(f"version is not {RECEIPT_VERSION} (the only one this version reads)")
        seq = _integer(parsed, "seq")
        if not 0 <= seq <= _MAX_SEQ:
            raise _invalid("seq is out of range")
        try:
            at = datetime.fromisoformat(_text(parsed, "at", _AT))
        except ValueError:  # the pattern's shape, but no such moment (month 13, say)
            raise _invalid("at is not a date and time") from None
        receipt = cls(
            chain=_text(parsed, "chain", _CHAIN), seq=seq,
            hash=_text(parsed, "hash", _HEX64),
            at=at,
            key_id=_text(parsed, "key_id", _HEX32),
            public_key=_text(parsed, "public_key", _HEX64),
            signature=_text(parsed, "signature", _HEX128),
        )
        if (seq == 0) != (receipt.hash == GENESIS):
            raise _invalid("hash does not fit seq (only an empty chain, seq 0, has the "
                           "genesis hash)")
        if key_fingerprint(receipt.embedded_public_key()) != receipt.key_id:
            raise _invalid("key_id is not the fingerprint of its public_key")
        return receipt

    @classmethod
    def load(cls, path: Path) -> Receipt:
        """Read a receipt file (bounded): InvalidInput when it cannot be read or is not one."""
        try:
            with path.open("rb") as source:
                data = source.read(MAX_RECEIPT_BYTES + 1)
        except OSError as exc:
            raise InvalidInput(f"receipt {path}: cannot be read ({exc.strerror or 'error'})",
                               param="receipt") from None
        try:
            return cls.from_json(data)
        except InvalidInput as exc:
            raise InvalidInput(f"receipt {path}: {exc.message}", param="receipt") from None

    def embedded_public_key(self) -> VerifyKey:
        try:
            return VerifyKey.from_public_bytes(bytes.fromhex(self.public_key))
        except ValueError:
            raise _invalid("public_key is not an Ed25519 public key") from None

    def check_signature(self, public_key: VerifyKey) -> None:
        """InvalidInput unless `public_key` (the chain's own, not the receipt's) signed it."""
        expected = key_fingerprint(public_key)
        if self.key_id != expected or self.public_key != public_key.public_bytes_raw().hex():
            raise InvalidInput(
                f"the receipt was not signed by chain {self.chain!r}'s signing key: it names "
                f"key {self.key_id}, the chain's key is {expected}", param="receipt")
        try:
            public_key.verify(bytes.fromhex(self.signature), self.signed_bytes())
        except BadSignature:
            raise InvalidInput(f"the receipt's signature does not verify under chain "
                               f"{self.chain!r}'s key {expected}: it is forged or altered",
                               param="receipt") from None


def _signed_bytes(chain: str, seq: int, head_hash: str, at: datetime, key_id: str) -> bytes:
    """The canonical encoding a receipt's signature covers (domain-separated, versioned)."""
    return json.dumps([RECEIPT_FORMAT, RECEIPT_VERSION, chain, seq, head_hash, _iso(at), key_id],
                      separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _invalid(what: str) -> InvalidInput:
    return InvalidInput(f"not a valid audit receipt: it {what}", param="receipt")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError("duplicate field")
        result[name] = value
    return result


def _no_constant(_name: str) -> None:
    raise ValueError("NaN and Infinity are not JSON")


def _integer(parsed: Mapping[str, Any], name: str) -> int:
    value = parsed[name]
    if type(value) is not int:  # bool is an int to Python, not to a receipt
        raise _invalid(f"{name} is not an integer")
    return value


def _text(parsed: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = parsed[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _invalid(f"{name} is not in its format")
    return value


class AuditSigner:
    """One chain's signing key: signs receipts of the chain's head."""

    def __init__(self, chain: str, private_key: SigningKey) -> None:
        self.chain = chain
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_fingerprint(self.public_key)

    def __repr__(self) -> str:
        return f"AuditSigner(chain={self.chain!r}, key_id={self.key_id!r})"

    @classmethod
    def open(cls, chain: str, path: Path, *, create: bool = True) -> AuditSigner:
        """The key at `path`, made first when missing and `create`; else `SigningKeyMissing`."""
        try:
            return cls(chain, _read_private_key(path))
        except FileNotFoundError:
            if not create:
                raise SigningKeyMissing(
                    f"chain {chain!r} has no audit signing key at {path}: no receipt of it can "
                    "be checked (was it deleted?)") from None
        _create_private_key(path)
        return cls(chain, _read_private_key(path))

    def sign(self, seq: int, head_hash: str, at: datetime | None = None) -> Receipt:
        """A receipt of the chain's head: entry `seq` whose hash is `head_hash`."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        signature = self._key.sign(_signed_bytes(self.chain, seq, head_hash, at, self.key_id))
        return Receipt(self.chain, seq, head_hash, at, self.key_id,
                       self.public_key.public_bytes_raw().hex(), signature.hex())


def key_dir_field(settings: Settings, region: str) -> str:
    """The config field that decides where `region`'s own key files live."""
    config = settings.region(region)
    if config.kek_path is not None and config.key_dir == config.kek_path.parent:
        return f"regions.{region}.key_provider.path"
    return f"regions.{region}.key_dir"


def signing_key_path(settings: Settings, chain: str) -> Path:
    """Where `chain`'s signing key lives (the module's rule); ConfigError for an unknown chain
    or for a key file two chains would share."""
    paths = {DIRECTORY_CHAIN: settings.directory.secret_file.parent / SIGNING_KEY_NAME}
    for name, region in settings.regions.items():
        assert region.key_dir is not None  # resolved at load
        paths[name] = region.key_dir / SIGNING_KEY_NAME
    if chain != DIRECTORY_CHAIN:
        settings.region(chain)  # ConfigError naming the configured regions
    path = paths[chain]
    sharing = sorted(name for name, other in paths.items()
                     if name != chain and os.path.abspath(other) == os.path.abspath(path))
    if sharing:
        field = ("directory.secret_file" if chain == DIRECTORY_CHAIN
                 else key_dir_field(settings, chain))
        raise ConfigError(field, f"the audit signing key of chain {chain!r} would be {path}, "
                                 f"which chain(s) {', '.join(sharing)} use too; give each "
                                 "region's key file (and the directory secret) a folder of "
                                 "its own")
    return path


def chain_signer(settings: Settings, chain: str) -> AuditSigner:
    """`chain`'s signer, its key made the first time one is needed."""
    return AuditSigner.open(chain, signing_key_path(settings, chain), create=True)


def chain_public_key(settings: Settings, chain: str) -> VerifyKey:
    """`chain`'s own public key, from its key file (never made here): SigningKeyMissing."""
    return AuditSigner.open(chain, signing_key_path(settings, chain), create=False).public_key


def verify_against_receipt(log: AuditLog, receipt: Receipt,
                           public_key: VerifyKey) -> AuditProblem | None:
    """The first bad entry of `log` (None: intact and it still extends the receipt's head).

    InvalidInput when the receipt is not one of this chain signed by `public_key` (the
    chain's own key, not the one the receipt carries)."""
    if receipt.chain != log.chain:
        raise InvalidInput(f"the receipt is of chain {receipt.chain!r}, not of {log.chain!r}",
                           param="receipt")
    receipt.check_signature(public_key)
    walked = log.check()
    if walked.problem is not None:
        return walked.problem
    if walked.seq < receipt.seq:
        return AuditProblem(log.chain, walked.seq + 1,
                            f"missing (a signed receipt of {_iso(receipt.at)} shows the chain "
                            f"reached entry {receipt.seq})")
    if receipt.seq == 0:
        return None
    entry = log.entry(receipt.seq)
    if entry is None or entry.hash != receipt.hash:
        return AuditProblem(log.chain, receipt.seq,
                            f"does not match the signed receipt of {_iso(receipt.at)} "
                            "(the chain was rewritten up to here)")
    return None


def _read_private_key(path: Path) -> SigningKey:
    """FileNotFoundError when missing; InvalidInput for a file that is not a private key file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the audit signing key "
                           f"({exc.strerror or 'error'})", param="audit_signing_key") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{path}: the audit signing key is not a regular file",
                               param="audit_signing_key")
        if info.st_mode & 0o077:
            raise InvalidInput(
                f"{path}: the audit signing key has mode {stat.S_IMODE(info.st_mode):04o}, "
                f"which lets group or others at it; it must be 0600 (chmod 600 {path})",
                param="audit_signing_key")
        data = os.read(fd, _KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) != _KEY_SIZE:
        raise InvalidInput(f"{path}: an audit signing key holds exactly {_KEY_SIZE} bytes, "
                           f"this file holds {'more' if len(data) > _KEY_SIZE else len(data)}",
                           param="audit_signing_key")
    return SigningKey.from_private_bytes(data)


def _create_private_key(path: Path) -> None:
    """Write a new key file unless one exists: written whole to a temporary file (O_EXCL,
    0600) and linked into place, so no reader ever sees half a key and a key another process
    made first is never replaced (theirs stands)."""
    make_private_dirs(path.parent)
    raw = SigningKey.generate().private_bytes_raw()
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    fd = os.open(temp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
