"""`domicile export`, `domicile erase`, `domicile training export`: the tenant's
ownership of its data (G7, G9)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from domicile.cli._common import (
    ConfigOption,
    JsonOption,
    command,
    emit,
    open_site,
    record_table,
    stderr,
)
from domicile.compliance.erasure import Erasure, ErasurePlan, MemberErasure
from domicile.compliance.export import Exporter
from domicile.errors import InvalidInput
from domicile.site import Site
from domicile.tenancy.directory import ErasureScope

__all__ = ["register"]

OrgOption = Annotated[str | None, typer.Option("--org", help="An org: all its projects and "
                                                            "workspaces, in every region.")]
ProjectOption = Annotated[str | None, typer.Option("--project", help="One project.")]
WorkspaceOption = Annotated[str | None, typer.Option("--workspace", help="One workspace.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("export")(export)
    app.command("erase")(erase)


def _scope(**given: str | None) -> tuple[ErasureScope, str]:
    chosen = [(name, value) for name, value in given.items() if value]
    if len(chosen) != 1:
        options = " | ".join(f"--{name}" for name in given)
        raise InvalidInput(f"name exactly one of {options}", param="scope")
    name, value = chosen[0]
    return name, value  # type: ignore[return-value]


def _exporter(site: Site) -> Exporter:
    return Exporter(site.directory, site.store, list(site.settings.regions))


def _erasure(site: Site) -> Erasure:
    return Erasure(site.directory, site.store, list(site.settings.regions),
                   site.directory_engine)


# -- export -----------------------------------------------------------------------------------


@command
def export(
    out: Annotated[Path, typer.Option("--out", help="The zip file to write (must not exist).")],
    org: OrgOption = None,
    workspace: WorkspaceOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export everything an org or workspace owns, decrypted, into a zip (G9)."""
    scope, scope_id = _scope(org=org, workspace=workspace)
    site = open_site(config)
    try:
        if as_json:
            summary = _exporter(site).export(scope, scope_id, out)
        else:
            with Progress(TextColumn("exporting"), BarColumn(), MofNCompleteColumn(),
                          console=stderr, transient=True) as bar:
                task = bar.add_task("export", total=None)

                def advance(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                summary = _exporter(site).export(scope, scope_id, out, progress=advance)
    finally:
        site.close()
    payload = summary.to_json()
    table = record_table({"path": payload["path"], "entries": summary.entries,
                          "bytes": summary.bytes, "regions": ", ".join(summary.regions),
                          **summary.counts}, title=f"Exported {scope} {scope_id}")
    emit(as_json, payload, table)


# -- erase ------------------------------------------------------------------------------------


@command
def erase(
    org: OrgOption = None,
    project: ProjectOption = None,
    workspace: WorkspaceOption = None,
    member: Annotated[str | None, typer.Option(
        "--member", help="With --workspace: erase only this member's content.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really erase (without it: say what "
                                                    "would be erased, change nothing).")]
    = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Erase an org, project or workspace (crypto-shredding, G9), or a member's content."""
    scope, scope_id = _scope(org=org, project=project, workspace=workspace)
    if member is not None and scope != "workspace":
        raise InvalidInput("--member goes with --workspace", param="member")
    site = open_site(config)
    try:
        erasure = _erasure(site)
        if member is not None:
            _erase_member(erasure, scope_id, member, yes=yes, as_json=as_json)
        else:
            _erase_scope(erasure, scope, scope_id, yes=yes, as_json=as_json)
    finally:
        site.close()


def _erase_scope(erasure: Erasure, scope: ErasureScope, scope_id: str, *, yes: bool,
                 as_json: bool) -> None:
    plan = erasure.plan(scope, scope_id)
    if plan.already_erased:
        emit(as_json, plan.to_json(), f"{scope} {scope_id} is already erased "
                                      f"({plan.ownership.erased_at}): nothing to do.")
        return
    if not yes:
        _refuse_without_yes(as_json, plan.to_json(), _plan_table(plan),
                            f"{scope} {scope_id} and everything it owns")
    report = erasure.erase(scope, scope_id)
    payload = report.to_json()
    table = record_table({
        "data keys destroyed": payload["data_keys_destroyed"],
        "rows deleted": sum(report.rows_deleted.values()),
        "blob files deleted": report.blob_files_deleted,
        "API keys revoked": payload["api_keys_revoked"],
        "tokens revoked": payload["tokens_revoked"],
        "members removed": payload["members_removed"],
        "KEKs rotated": ", ".join(report.keks_rotated),
    }, title=f"Erased {scope} {scope_id}")
    emit(as_json, payload, table)
    if not as_json:
        for statement in report.statements:
            typer.echo(statement)
    for warning in report.backup_warnings:  # stderr: the JSON on stdout stays one object
        typer.echo(f"warning: {warning}", err=True)


def _erase_member(erasure: Erasure, workspace_id: str, user_id: str, *, yes: bool,
                  as_json: bool) -> None:
    if not yes:
        planned = erasure.plan_member(workspace_id, user_id)
        _refuse_without_yes(as_json, planned.to_json(), _member_table(planned),
                            f"the content of member {user_id} in workspace {workspace_id}")
    done = erasure.erase_member(workspace_id, user_id)
    emit(as_json, done.to_json(), _member_table(done))


def _refuse_without_yes(as_json: bool, payload: dict[str, object], table: Table,
                        what: str) -> None:
    emit(as_json, {**payload, "erased": False}, table)
    stderr.print(f"Nothing was erased. This would erase {what}, for good: run again with "
                 "--yes to do it.", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _plan_table(plan: ErasurePlan) -> Table:
    table = Table(title=f"Would erase {plan.ownership.scope} {plan.ownership.scope_id}",
                  title_justify="left")
    for column in ("tenant", "region", "rows", "blob files", "data keys"):
        table.add_column(column)
    for holding in plan.holdings:
        if not holding.empty:
            table.add_row(holding.tenant, holding.region, str(sum(holding.rows.values())),
                          str(holding.blob_files), "yes" if holding.data_keys else "no")
    return table


def _member_table(erased: MemberErasure) -> Table:
    verb = "Erased" if erased.done else "Would erase"
    table = record_table({name: count for name, count in erased.holding.rows.items()},
                         title=f"{verb} the content of {erased.user_id} "
                               f"in {erased.workspace_id}")
    table.add_row("blob files", str(erased.holding.blob_files))
    return table
