"""`domicile audit ...`: the hash-chained audit log (G8): verify, signed head receipts, export."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.table import Table

from domicile.cli._common import ConfigOption, Failure, JsonOption, command, emit, open_site
from domicile.compliance.audit import AuditLog, AuditProblem, parse_since
from domicile.compliance.receipts import (
    Receipt,
    chain_public_key,
    chain_signer,
    verify_against_receipt,
)
from domicile.crypto.signing import VerifyKey
from domicile.errors import InvalidInput
from domicile.failures import describe
from domicile.site import Site
from domicile.storage.private import written_whole
from domicile.tenancy.directory import DIRECTORY_CHAIN

__all__ = ["register"]

audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")

ChainOption = Annotated[str, typer.Option(
    "--region", help="A region's chain, or 'directory' for the directory's.")]
OutOption = Annotated[Path | None, typer.Option(
    "--out", help="Write to this file (mode 0600, replaced whole) instead of stdout.")]


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


def _chain_name(site: Site, region: str) -> str:
    return DIRECTORY_CHAIN if region == DIRECTORY_CHAIN else site.settings.region(region).name


@audit_app.command("verify")
@command
def audit_verify(
    region: Annotated[str | None, typer.Option(
        "--region", help="Only this region's chain ('directory': the directory's).")] = None,
    receipts: Annotated[list[Path] | None, typer.Option(
        "--receipt", help="A receipt from `audit head`: its chain must still extend its head "
                          "(repeatable, one per chain).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check every audit chain (and that each still extends its receipt's head); exit 1
    naming the first bad entry, or a chain that cannot be read (its database unreachable,
    say); exit 2 for a receipt that cannot be read or is not a valid one of its chain."""
    held = [Receipt.load(path) for path in receipts or []]  # a bad file: exit 2, before work
    site = open_site(config)
    names = ([_chain_name(site, region)] if region is not None
             else [DIRECTORY_CHAIN, *site.settings.regions])
    by_chain: dict[str, Receipt] = {}
    for receipt in held:
        if receipt.chain not in names:
            raise InvalidInput(f"the receipt is of chain {receipt.chain!r}, not of "
                               f"{', '.join(map(repr, names))}", param="receipt")
        if receipt.chain in by_chain:
            raise InvalidInput(f"two receipts of chain {receipt.chain!r}: give the latest",
                               param="receipt")
        by_chain[receipt.chain] = receipt
    # The receipts' signatures, against each chain's own key, before any chain is walked.
    keys = {chain: chain_public_key(site.settings, chain) for chain in by_chain}
    for chain, receipt in by_chain.items():
        receipt.check_signature(keys[chain])
    results: list[dict[str, Any]] = []
    first_problem: str | None = None
    for name in names:
        try:
            problem = _verify_chain(site.audit_log(name), by_chain.get(name), keys.get(name))
        except InvalidInput:  # a configuration to fix: exit 2, as for any command
            raise
        except Exception as exc:
            unread = f"chain {name} cannot be read: {describe(exc)}"
            results.append({"chain": name, "ok": False, "problem": unread,
                            "first_bad_seq": None, "receipt_seq": None})
            first_problem = first_problem or unread
            continue
        held_for = by_chain.get(name)
        results.append({"chain": name, "ok": problem is None,
                        "problem": None if problem is None else str(problem),
                        "first_bad_seq": None if problem is None else problem.seq,
                        "receipt_seq": None if held_for is None else held_for.seq})
        if problem is not None:
            first_problem = first_problem or str(problem)
    site.close()
    payload = {"ok": first_problem is None, "chains": results}
    if first_problem is not None:
        raise Failure(first_problem, payload)
    table = Table(title="Audit chains", title_justify="left")
    table.add_column("chain")
    table.add_column("status")
    for result in results:
        seq = result["receipt_seq"]
        table.add_row(result["chain"], "intact" if seq is None
                      else f"intact, extends the receipt's entry {seq}")
    emit(as_json, payload, table)


def _verify_chain(log: AuditLog, receipt: Receipt | None,
                  key: VerifyKey | None) -> AuditProblem | None:
    if receipt is None or key is None:
        return log.verify()
    return verify_against_receipt(log, receipt, key)


@audit_app.command("head")
@command
def audit_head(
    region: ChainOption,
    out: OutOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a signed receipt of the chain's head (JSON), for an auditor to keep and later
    pass to `audit verify --receipt`. Refuses (exit 1) a chain that does not verify. Appends
    nothing to the chain."""
    site = open_site(config)
    try:
        chain = _chain_name(site, region)
        walked = site.audit_log(chain).check()
        if walked.problem is not None:
            raise Failure(f"not signing a broken chain: {walked.problem}",
                          {"ok": False, "chain": chain, "problem": str(walked.problem),
                           "first_bad_seq": walked.problem.seq})
        receipt = chain_signer(site.settings, chain).sign(walked.seq, walked.hash)
    finally:
        site.close()
    text = receipt.to_json()
    if out is None:
        sys.stdout.write(text)  # the receipt is itself the one JSON object
        return
    with _replaced_whole(out) as sink:
        sink.write(text)
    emit(as_json, {"chain": chain, "seq": receipt.seq, "hash": receipt.hash,
                   "key_id": receipt.key_id, "out": str(out)})


@audit_app.command("export")
@command
def audit_export(
    region: ChainOption,
    since: Annotated[str | None, typer.Option(
        "--since", help="Only entries from this ISO date or datetime on (UTC when no offset "
                        "is given).")] = None,
    out: OutOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The chain's entries as JSON Lines, in order, one entry a line (streamed)."""
    start = parse_since(since, name="--since")
    site = open_site(config)
    try:
        chain = _chain_name(site, region)
        entries = site.audit_log(chain).entries(start)
        if out is None:
            for entry in entries:
                sys.stdout.write(entry.json_line())
            return
        count = 0
        with _replaced_whole(out) as sink:
            for entry in entries:
                sink.write(entry.json_line())
                count += 1
    finally:
        site.close()
    emit(as_json, {"chain": chain, "entries": count, "out": str(out)})


@contextlib.contextmanager
def _replaced_whole(path: Path) -> Iterator[IO[str]]:
    """A text file written beside `path` (0600) and moved over it only once complete:
    nothing is half-written."""
    try:
        with written_whole(path) as sink:
            yield sink
    except OSError as exc:
        raise InvalidInput(f"--out {path}: cannot write there ({exc.strerror or 'error'})",
                           param="out") from None
