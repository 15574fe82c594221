"""`domicile keys ...`: the regions' key-encryption keys and the tenants' data keys (G5, G9)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from domicile.cli._common import ConfigOption, JsonOption, command, emit, open_site

__all__ = ["register"]

keys_app = typer.Typer(no_args_is_help=True, help="Key-encryption keys and data keys.")
# `kek rotate` was this command's name before `keys rotate`; kept, hidden, for scripts.
kek_app = typer.Typer(no_args_is_help=True, help="The regions' key-encryption keys.")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(kek_app, name="kek", hidden=True)


@keys_app.command("rotate")
@kek_app.command("rotate")
@command
def kek_rotate(
    region: Annotated[list[str] | None, typer.Option("--region", help="Default: every region.")]
    = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rotate a region's key-encryption key: data keys are re-wrapped, content is untouched."""
    site = open_site(config)
    names = region or list(site.settings.regions)
    rotated = {name: site.store(site.settings.region(name).name).rotate_kek() for name in names}
    table = Table(title="Key-encryption keys rotated", title_justify="left")
    table.add_column("region")
    table.add_column("data keys re-wrapped")
    for name, count in rotated.items():
        table.add_row(name, str(count))
    emit(as_json, {"rotated": rotated}, table)
