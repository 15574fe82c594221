"""`domicile keys ...`: the regions' key-encryption keys and the tenants' data keys (G5, G9)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from domicile.cli._common import ConfigOption, Failure, JsonOption, command, emit, open_site
from domicile.compliance.audit import Detail
from domicile.crypto import KeyNotFound
from domicile.crypto.keys import wrap_context
from domicile.errors import InvalidInput, NotFound

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
    from domicile.crypto.keystore import DataKeysNotRotated
    from domicile.crypto.wrapping import KekRefused

    if tenant is None:
        try:
            rotated = store.keys.rotate_data_keys()
        except DataKeysNotRotated as refused:  # the others did rotate: audited, then said
            store.audit.append("cli", "data_key.rotate", store.region, {
                "tenants_rotated": refused.rotated, "tenants_refused": len(refused.tenants)})
            raise
        details: dict[str, Detail] = {"tenants_rotated": rotated}
    else:
        try:
            store.keys.rotate_data_key(tenant)
        except KekRefused:  # a KeyNotFound, but the tenant's own KEK refused, not "no key"
            raise DataKeysNotRotated(store.region, 0, [tenant]) from None
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


@keys_app.command("set-tenant-kek")
@command
def set_tenant_kek(
    region: Annotated[str, typer.Option("--region", help="The tenant's region.")],
    tenant: Annotated[str, typer.Option(
        "--tenant", help="The tenant (a project or workspace id).")],
    kek_id: Annotated[str | None, typer.Option(
        "--kek-id", help="The tenant's own key: a KMS key ARN (aws-kms) or a transit key "
        "name (vault-transit).")] = None,
    clear: Annotated[bool, typer.Option(
        "--clear", help="Back to the region's key-encryption key.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a tenant its own (customer-managed) key-encryption key in the region's KMS: its
    data keys are re-wrapped under it now, and new ones are made under it. Disabling that key
    in the KMS makes the tenant's content unreadable (docs/KEYS.md). Audited in the region's
    chain (tenant, key id, count; no key material)."""
    if (kek_id is None) == (not clear):
        raise InvalidInput("give either --kek-id KEY or --clear", param="kek_id")
    site = open_site(config)
    store = site.store(site.settings.region(region).name)
    from domicile.crypto.keystore import ManagedKeyProvider
    from domicile.crypto.wrapping import KeyServiceUnavailable

    keys = store.keys
    if not isinstance(keys, ManagedKeyProvider):
        raise InvalidInput(f"region {store.region} keeps its key-encryption key in a local "
                           "file: per-tenant keys need key_provider kind aws-kms or "
                           "vault-transit", param="region")
    if not keys.has_tenant(tenant):
        raise NotFound(f"tenant {tenant} has no data key in region {store.region}")
    target = kek_id or keys.wrapper.kek_id
    try:
        target = keys.wrapper.kek_for(tenant, kek_id)
        if kek_id is not None:
            # A key the KMS refuses is reported now, not at the tenant's next write (a tenant
            # whose keys all rewrap would show it too, but one with none would not).
            keys.wrapper.generate(target, wrap_context(store.region, tenant, "kek-check"))
        rewrapped = keys.set_tenant_kek(tenant, kek_id)
    except ValueError as exc:
        raise InvalidInput(str(exc), param="kek_id") from None
    except KeyNotFound as exc:
        raise InvalidInput(f"the key service refused: {exc}", param="kek_id") from None
    except KeyServiceUnavailable as exc:
        raise Failure(f"the key service did not answer: {exc}",
                      {"error": {"code": "key_service_unavailable", "message": str(exc)}}
                      ) from None
    details: dict[str, Detail] = {"tenant": tenant, "kek_id": target if kek_id else None,
                                  "data_keys_rewrapped": rewrapped}
    store.audit.append("cli", "tenant_kek.set", store.region, details)
    table = Table(title="Tenant key-encryption key", title_justify="left")
    table.add_column("region")
    table.add_column("tenant")
    table.add_column("key-encryption key")
    table.add_column("data keys re-wrapped")
    table.add_row(store.region, tenant, target if kek_id else f"{target} (the region's)",
                  str(rewrapped))
    emit(as_json, {"region": store.region, **details}, table)
