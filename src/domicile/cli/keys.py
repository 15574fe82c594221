"""`domicile keys ...`: the regions' key-encryption keys and the tenants' data keys (G5, G9)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from domicile.cli._common import ConfigOption, JsonOption, command, emit, open_site
from domicile.compliance.audit import Detail
from domicile.crypto import KeyNotFound
from domicile.errors import NotFound

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


@keys_app.command("rotate-data")
@command
def data_key_rotate(
    region: Annotated[str, typer.Option("--region", help="The region whose data keys rotate.")],
    tenant: Annotated[str | None, typer.Option(
        "--tenant", help="Only this tenant (a project or workspace id). Default: every tenant.")]
    = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give tenants a new current data key: new content is sealed under it, older content
    stays readable under its own key. Audited in the region's chain (counts, no key material)."""
    site = open_site(config)
    store = site.store(site.settings.region(region).name)
    if tenant is None:
        rotated = store.keys.rotate_data_keys()
        details: dict[str, Detail] = {"tenants_rotated": rotated}
    else:
        try:
            store.keys.rotate_data_key(tenant)
        except KeyNotFound:
            raise NotFound(f"tenant {tenant} has no data key in region {store.region}") from None
        rotated = 1
        details = {"tenant": tenant, "tenants_rotated": rotated}
    store.audit.append("cli", "data_key.rotate", store.region, details)
    table = Table(title="Data keys rotated", title_justify="left")
    table.add_column("region")
    table.add_column("tenants with a new data key")
    table.add_row(store.region, str(rotated))
    emit(as_json, {"region": store.region, **details}, table)
