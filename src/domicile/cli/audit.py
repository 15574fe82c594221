"""`domicile audit ...`: the hash-chained audit log (G8)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from domicile.cli._common import ConfigOption, Failure, JsonOption, command, emit, open_site
from domicile.errors import InvalidInput
from domicile.failures import describe

__all__ = ["register"]

audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
@command
def audit_verify(
    region: Annotated[str | None, typer.Option("--region")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check every audit chain; exit 1 naming the first bad entry, or a chain that cannot be
    read (its database unreachable, say)."""
    site = open_site(config)
    names = site.audit_chain_names(region)
    results: list[dict[str, Any]] = []
    first_problem: str | None = None
    for name in names:
        try:
            problem = site.audit_log(name).verify()
        except InvalidInput:  # a configuration to fix: exit 2, as for any command
            raise
        except Exception as exc:
            unread = f"chain {name} cannot be read: {describe(exc)}"
            results.append({"chain": name, "ok": False, "problem": unread,
                            "first_bad_seq": None})
            first_problem = first_problem or unread
            continue
        results.append({"chain": name, "ok": problem is None,
                        "problem": None if problem is None else str(problem),
                        "first_bad_seq": None if problem is None else problem.seq})
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
        table.add_row(result["chain"], "intact")
    emit(as_json, payload, table)
