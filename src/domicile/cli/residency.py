"""`domicile residency ...`: the residency report and verification (G1, G2, G5)."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from domicile.cli._common import ConfigOption, Failure, JsonOption, command, emit, open_site
from domicile.cli._common import stderr as stderr_console
from domicile.compliance.residency import build_report, render_markdown
from domicile.compliance.verification import planned_work, verify_site

__all__ = ["register"]

residency_app = typer.Typer(no_args_is_help=True,
                            help="Data residency: the report, and verification of the stores.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.add_typer(residency_app, name="residency")


@residency_app.command("report")
@command
def residency_report(
    org: Annotated[str, typer.Option("--org", help="The org to report on.")],
    format: Annotated[Literal["markdown", "json"], typer.Option(
        "--format", help="markdown (for people) or json.")] = "markdown",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Where each project and workspace of ORG is, what it holds there (counts, bytes, the
    key ids read from the ciphertexts), and which providers may process it."""
    site = open_site(config)
    try:
        report = build_report(site, org)
    finally:
        site.close()
    if as_json or format == "json":
        emit(True, report.to_json())
    else:
        sys.stdout.write(render_markdown(report))


@residency_app.command("verify")
@command
def residency_verify(
    region: Annotated[str | None, typer.Option(
        "--region", help="Only this region's store (default: every store).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Read every row and blob of every regional store: each belongs to a tenant of its
    region, opens under its region's keys, and the audit chains verify. Exit 1 with the list
    of violations."""
    site = open_site(config)
    try:
        regions = [site.settings.region(region).name] if region is not None else None
        if as_json:
            result = verify_site(site, regions)
        else:
            records, blob_bytes = planned_work(site, regions or list(site.settings.regions))
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TimeElapsedColumn())
            with Progress(*columns, console=stderr_console, transient=True) as bar:
                rows_task = bar.add_task("records", total=records)
                bytes_task = bar.add_task("blob bytes", total=blob_bytes)

                def advance(done_records: int, done_bytes: int) -> None:
                    if done_records:
                        bar.advance(rows_task, done_records)
                    if done_bytes:
                        bar.advance(bytes_task, done_bytes)

                result = verify_site(site, regions, progress=advance)
    finally:
        site.close()
    payload = result.to_json()
    summary = (f"{result.records:,} records, {result.blobs:,} blobs "
               f"({result.blob_bytes / 1e6:,.1f} MB) in {result.seconds:.2f} s: "
               f"{result.records_per_second:,.0f} records/s, "
               f"{result.megabytes_per_second:,.1f} MB/s")
    if not result.ok:
        count = len(result.violations)
        violations = f"{count} violation{'' if count == 1 else 's'}"
        if not as_json:
            table = Table("region", "table", "row", "tenant", "problem",
                          title=violations, title_justify="left")
            for v in result.violations:
                table.add_row(v.region, v.table, v.row or "", v.tenant or "", v.problem)
            stderr_console.print(table)
            stderr_console.print(summary, highlight=False)
        raise Failure(f"residency verification found {violations}", payload)
    emit(as_json, payload, f"residency verified: {summary}; no violations")
