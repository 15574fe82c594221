"""`domicile training export`: content for fine-tuning, only with the org's consent (G7)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from domicile.cli._common import ConfigOption, JsonOption, command, emit, open_site, record_table

__all__ = ["register"]

training_app = typer.Typer(no_args_is_help=True, help="Training data (only with consent).")


def register(app: typer.Typer) -> None:
    app.add_typer(training_app, name="training")


@training_app.command("export")
@command
def training_export(
    org: Annotated[str, typer.Option("--org", metavar="ORG_ID")],
    out: Annotated[Path, typer.Option("--out", dir_okay=False,
                                      help="JSON Lines file to write (must not exist).")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export the org's content written while it was opted in, as chat fine-tuning JSON Lines.
    Exit 2 unless the org has opted in. Never reads zero-retention projects. Audited."""
    from domicile.compliance.training import TrainingExport

    result = TrainingExport(open_site(config)).export(org, out)
    payload = result.to_json()
    emit(as_json, payload, record_table(payload, title=f"Training examples written to {out}"))
