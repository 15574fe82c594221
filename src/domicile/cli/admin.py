"""`domicile admin-key ...`: the credentials of the admin API (`/admin/v1`, docs/ADMIN-API.md).

Admin keys are made only here, by whoever holds the site's config: the admin API cannot make
one. Creating and revoking are audited in the directory's chain.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from domicile.cli._common import ConfigOption, JsonOption, command, emit, open_site, record_table
from domicile.site import Site
from domicile.tenancy.admin_keys import AdminKeys
from domicile.tenancy.secrets import CredentialHasher

__all__ = ["register"]

admin_key_app = typer.Typer(no_args_is_help=True, help="Keys of the admin API (`da-…`).")


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.add_typer(admin_key_app, name="admin-key")


def admin_keys(site: Site) -> AdminKeys:
    return AdminKeys(site.directory_engine, CredentialHasher(site.site_secret),
                     site.directory_audit)


@admin_key_app.command("create")
@command
def admin_key_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for (shown in lists).")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an admin key. The secret is shown once and stored only as a keyed hash."""
    site = open_site(config)
    try:
        created = admin_keys(site).create(name)
    finally:
        site.close()
    payload = {"id": created.id, "key": created.secret, "name": created.name}
    emit(as_json, payload, record_table(payload, title="Copy the key now: it is not shown again"))


@admin_key_app.command("revoke")
@command
def admin_key_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke an admin key (refused from the next request on, at every server)."""
    site = open_site(config)
    try:
        key = admin_keys(site).revoke(key_id)
    finally:
        site.close()
    emit(as_json, {"id": key.id, "revoked": True, "revoked_at": key.revoked_at})


@admin_key_app.command("list")
@command
def admin_key_list(
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every admin key (never its secret), revoked ones included."""
    site = open_site(config)
    try:
        keys = admin_keys(site).list()
    finally:
        site.close()
    rows = [{"id": key.id, "name": key.name, "hint": key.hint, "created_at": key.created_at,
             "revoked_at": key.revoked_at} for key in keys]
    table = Table("id", "name", "starts with", "created", "revoked", title="Admin keys",
                  title_justify="left")
    for row in rows:
        table.add_row(*(str(row[name] or "") for name in
                        ("id", "name", "hint", "created_at", "revoked_at")))
    emit(as_json, {"admin_keys": rows}, table)
