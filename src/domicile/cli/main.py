"""The `domicile` command: thin over the services; errors and output handled in one place.

Every command takes `--config PATH` and `--json` after its own arguments. With `--json`
exactly one JSON object goes to stdout; humans get Rich tables. Errors go to stderr:
exit 2 for bad input, 1 for failures.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from domicile.cli import admin as admin_commands
from domicile.cli import audit, data, keys, residency, sso, training
from domicile.cli._common import (
    ConfigOption,
    JsonOption,
    command,
    emit,
    open_site,
    record_table,
)
from domicile.config import find_config, load_settings
from domicile.errors import DomicileError, InvalidInput
from domicile.failures import describe
from domicile.site import DEFAULT_SITE_DIR, init_site

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Domicile: a sovereign AI platform with verifiable data residency.")
org_app = typer.Typer(no_args_is_help=True, help="Organisations.")
project_app = typer.Typer(no_args_is_help=True, help="API projects, pinned to a region.")
key_app = typer.Typer(no_args_is_help=True, help="API keys of a project.")
workspace_app = typer.Typer(no_args_is_help=True, help="Chat workspaces, pinned to a region.")
user_app = typer.Typer(no_args_is_help=True, help="Workspace members.")
token_app = typer.Typer(no_args_is_help=True, help="Workspace API tokens.")
retention_app = typer.Typer(no_args_is_help=True, help="Workspace retention policies.")
for sub, name in ((org_app, "org"), (project_app, "project"), (key_app, "key"),
                  (workspace_app, "workspace"), (user_app, "user"), (token_app, "token"),
                  (retention_app, "retention")):
    app.add_typer(sub, name=name)
# The trust center's commands, one module each: audit, residency, export/erase, training, keys.
for module in (audit, residency, data, training, keys, admin_commands):
    module.register(app)
sso.register(workspace_app)  # `domicile workspace sso set|show|clear`

# -- site ---------------------------------------------------------------------------------


@app.command("init")
@command
def init_command(
    dir: Annotated[Path, typer.Option("--dir", help="Site folder.")] = DEFAULT_SITE_DIR,
    port_base: Annotated[int, typer.Option("--port-base", help="eu listens here, us on +1.")]
    = 8400,
    force: Annotated[bool, typer.Option("--force", help="Rewrite the config; keys are kept.")]
    = False,
    dev_tls: Annotated[bool, typer.Option(
        "--dev-tls", help="Serve over TLS with a local CA (tls/ca.pem, to trust) and a "
        "certificate for 127.0.0.1, ::1 and localhost.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a site: config, regions eu and us, key files (mode 0600), migrated stores."""
    settings = init_site(dir, port_base=port_base, force=force, dev_tls=dev_tls)
    table = Table(title=f"Site ready: {settings.config_path}", title_justify="left")
    table.add_column("region")
    table.add_column("base URL")
    for name, region in settings.regions.items():
        table.add_row(name, region.public_url)
    payload: dict[str, Any] = {
        "config": str(settings.config_path),
        "regions": {name: region.public_url for name, region in settings.regions.items()},
    }
    if settings.server.tls_cert is not None:
        ca = settings.server.tls_cert.parent / "ca.pem"
        payload["tls"] = {"ca": str(ca), "cert": str(settings.server.tls_cert)}
        table.caption = f"Trust {ca} in your browser or client (docs/TLS.md)."
    emit(as_json, payload, table)


@app.command("serve")
@command
def serve_command(
    region: Annotated[list[str] | None, typer.Option("--region", help="Region to serve; "
                                                     "repeat for several (default: all).")]
    = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64)] = 1,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", exists=True, dir_okay=False)]
    = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", exists=True, dir_okay=False)]
    = None,
    insecure_http: Annotated[bool, typer.Option(
        "--insecure-http", help="Serve plain HTTP on non-loopback addresses (TLS ends in "
        "front of Domicile).")] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve the regions' APIs, each on its own listen address (TLS, except on loopback)."""
    from domicile.observability.logs import configure_logging
    from domicile.server import serve, tls_files

    settings = load_settings(find_config(config))
    # Every `domicile` and HTTP server line from here on, in `[observability] log_format`.
    configure_logging(settings.observability.log_format, log_level)
    tls = tls_files(settings, tls_cert, tls_key)
    try:
        serve(settings, region or (), workers=workers, tls=tls, insecure_http=insecure_http,
              log_level=log_level)
    except DomicileError:
        raise
    except Exception as exc:  # one line for the operator, never a traceback
        raise DomicileError(f"serve failed: {describe(exc)}") from None


# -- orgs ---------------------------------------------------------------------------------


def org_payload(org: Any) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, "training_opt_in": org.training_opt_in}


@org_app.command("create")
@command
def org_create(
    name: Annotated[str, typer.Option("--name")],
    training_opt_in: Annotated[bool, typer.Option("--training-opt-in")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an organisation (no training on its content unless --training-opt-in)."""
    org = open_site(config).directory.create_org(name, training_opt_in=training_opt_in)
    emit(as_json, org_payload(org))


def parse_bool(value: str, param: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise InvalidInput(f"{param} takes true or false", param=param)


@org_app.command("set")
@command
def org_set(
    org_id: Annotated[str, typer.Argument(metavar="ORG_ID")],
    training_opt_in: Annotated[str, typer.Option("--training-opt-in", metavar="true|false")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change an organisation's training consent (audited)."""
    value = parse_bool(training_opt_in, "training_opt_in")
    org = open_site(config).directory.set_training_opt_in(org_id, value)
    emit(as_json, org_payload(org))


# -- projects and keys --------------------------------------------------------------------


def project_payload(project: Any) -> dict[str, Any]:
    return {"id": project.id, "org_id": project.org_id, "name": project.name,
            "region": project.region, "retention": project.retention,
            "per_request_residency": project.per_request_residency,
            "rpm_limit": project.rpm_limit, "tpm_limit": project.tpm_limit}


@project_app.command("create")
@command
def project_create(
    org: Annotated[str, typer.Option("--org", metavar="ORG_ID")],
    name: Annotated[str, typer.Option("--name")],
    region: Annotated[str, typer.Option("--region", help="A configured region, or 'global' "
                                        "with --per-request-residency.")],
    retention: Annotated[str | None, typer.Option("--retention", metavar="zero|regional",
                                                  help="Default: the region's.")] = None,
    per_request_residency: Annotated[bool, typer.Option("--per-request-residency")] = False,
    rpm_limit: Annotated[int | None, typer.Option("--rpm-limit")] = None,
    tpm_limit: Annotated[int | None, typer.Option("--tpm-limit")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API project, pinned to its region forever (G1)."""
    if retention is not None and retention not in ("zero", "regional"):
        raise InvalidInput("--retention must be zero or regional", param="retention")
    project = open_site(config).directory.create_project(
        org, name, region, retention=retention,  # type: ignore[arg-type]
        per_request_residency=per_request_residency, rpm_limit=rpm_limit, tpm_limit=tpm_limit)
    emit(as_json, project_payload(project))


@project_app.command("set")
@command
def project_set(
    project_id: Annotated[str, typer.Argument(metavar="PROJECT_ID")],
    rpm_limit: Annotated[int | None, typer.Option("--rpm-limit")] = None,
    tpm_limit: Annotated[int | None, typer.Option("--tpm-limit")] = None,
    region: Annotated[str | None, typer.Option("--region", hidden=True)] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a project's rate limits. Its region can never change (G1)."""
    directory = open_site(config).directory
    if region is not None:
        directory.refuse_region_change("project", project_id)
    project = directory.set_project_limits(project_id, rpm_limit=rpm_limit, tpm_limit=tpm_limit)
    emit(as_json, project_payload(project))


@project_app.command("show")
@command
def project_show(
    project_id: Annotated[str, typer.Argument(metavar="PROJECT_ID")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a project."""
    emit(as_json, project_payload(open_site(config).directory.get_project(project_id)))


@key_app.command("create")
@command
def key_create(
    project: Annotated[str, typer.Option("--project", metavar="PROJECT_ID")],
    name: Annotated[str, typer.Option("--name")] = "default",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key. The secret is shown once and stored only as a keyed hash."""
    created = open_site(config).directory.create_api_key(project, name=name)
    payload = {"id": created.id, "key": created.secret, "project_id": project,
               "region": created.region}
    emit(as_json, payload, record_table(payload, title="Copy the key now: it is not shown again"))


@key_app.command("revoke")
@command
def key_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke an API key (effective at every server within a second)."""
    key = open_site(config).directory.revoke_api_key(key_id)
    emit(as_json, {"id": key.id, "revoked": True, "revoked_at": key.revoked_at})


# -- workspaces, users, tokens ------------------------------------------------------------


@workspace_app.command("create")
@command
def workspace_create(
    org: Annotated[str, typer.Option("--org", metavar="ORG_ID")],
    name: Annotated[str, typer.Option("--name")],
    region: Annotated[str, typer.Option("--region")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a chat workspace, pinned to its region forever (G1)."""
    workspace = open_site(config).directory.create_workspace(org, name, region)
    emit(as_json, {"id": workspace.id, "org_id": workspace.org_id, "name": workspace.name,
                   "region": workspace.region})


@user_app.command("add")
@command
def user_add(
    workspace: Annotated[str, typer.Option("--workspace", metavar="WS_ID")],
    email: Annotated[str, typer.Option("--email")],
    role: Annotated[str, typer.Option("--role", metavar="owner|admin|member")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="Read the password from stdin.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a member to a workspace (password hashed with argon2id)."""
    if not password_stdin:
        raise InvalidInput("pass the password on stdin with --password-stdin", param="password")
    password = sys.stdin.readline().rstrip("\r\n")
    user = open_site(config).directory.add_user(workspace, email, role, password)
    emit(as_json, {"id": user.id, "workspace_id": user.workspace_id, "email": user.email,
                   "role": user.role})


@workspace_app.command("retention")
@command
def workspace_retention(
    workspace_id: Annotated[str, typer.Argument(metavar="WS_ID")],
    days: Annotated[int | None, typer.Option("--days", min=1,
                                             help="Delete conversations and files older "
                                                  "than N days.")] = None,
    forever: Annotated[bool, typer.Option("--forever",
                                          help="Keep content until it is deleted.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set a workspace's retention: content older than N days is deleted by the sweeper."""
    if (days is None) == (not forever):
        raise InvalidInput("give exactly one of --days N and --forever", param="days")
    workspace = open_site(config).directory.set_retention(workspace_id, days)
    emit(as_json, {"id": workspace.id, "retention_days": workspace.retention_days})


@token_app.command("create")
@command
def token_create(
    workspace: Annotated[str, typer.Option("--workspace", metavar="WS_ID")],
    user: Annotated[str, typer.Option("--user", metavar="USER_ID")],
    expires_days: Annotated[int | None, typer.Option(
        "--expires-days", min=1, max=3650,
        help="The token stops working after N days (default: until revoked).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a workspace API token for a member. Shown once."""
    expires_at = None if expires_days is None else datetime.now(UTC) + timedelta(
        days=expires_days)
    created = open_site(config).directory.create_token(workspace, user, expires_at=expires_at)
    payload = {"id": created.id, "token": created.secret, "region": created.region,
               "expires_at": expires_at}
    emit(as_json, payload, record_table(payload, title="Copy the token now: it is not shown again"))


@token_app.command("revoke")
@command
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a workspace token (effective at every server within a second)."""
    open_site(config).directory.revoke_token(token_id)
    emit(as_json, {"id": token_id, "revoked": True})


@retention_app.command("sweep")
@command
def retention_sweep(
    region: Annotated[str | None, typer.Option("--region")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete now what each workspace keeps past its retention, and the API's files and
    uploads past their expiry (`domicile serve` also does both, on its own schedule). Each
    swept workspace is audited."""
    from domicile.gateway.files import sweep_expired_files
    from domicile.gateway.uploads import sweep_expired_uploads
    from domicile.workspace.retention import sweeper_for

    site = open_site(config)
    names = [site.settings.region(region).name] if region else list(site.settings.regions)
    results: list[dict[str, object]] = []
    for name in names:
        result = sweeper_for(site, name).sweep(actor="cli").to_json()
        store = site.store(name)
        uploads = sweep_expired_uploads(store)
        result.update(api_files_expired=sweep_expired_files(store),
                      api_uploads_expired=uploads.uploads, api_upload_parts_deleted=uploads.parts)
        results.append(result)
    table = Table("region", "workspaces swept", "conversations deleted", "files deleted",
                  "API files expired", "API uploads expired", "upload parts deleted")
    for result in results:
        table.add_row(*(str(value) for value in result.values()))
    emit(as_json, {"regions": results}, table)


# -- usage ----------------------------------------------------------------------


@app.command("usage")
@command
def usage_command(
    project: Annotated[str, typer.Option("--project", metavar="PROJECT_ID")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per-request metadata of a project (time, key, model, provider, status, tokens)."""
    site = open_site(config)
    found = site.directory.get_project(project)
    regions = list(site.settings.regions) if found.region == "global" else [found.region]
    rows = [row for region in regions for row in site.store(region).usage(project)]
    rows.sort(key=lambda row: row.at)
    records: list[dict[str, Any]] = [{
        "at": row.at, "region": row.region, "key_id": row.key_id, "endpoint": row.endpoint,
        "model": row.model, "provider": row.provider, "status": row.status,
        "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
        "latency_ms": round(row.latency_ms, 3), "request_id": row.request_id,
    } for row in rows]
    totals = {
        "requests": len(records),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
    }
    table = Table(title=f"Usage of {project}: {totals['requests']} requests, "
                  f"{totals['prompt_tokens']} prompt and {totals['completion_tokens']} "
                  "completion tokens", title_justify="left")
    columns: tuple[tuple[str, Callable[[dict[str, Any]], object]], ...] = (
               ("time (UTC)", lambda r: r["at"].strftime("%m-%d %H:%M:%S")),
               ("region", lambda r: r["region"]), ("endpoint", lambda r: r["endpoint"]),
               ("model", lambda r: r["model"]), ("provider", lambda r: r["provider"] or "-"),
               ("status", lambda r: r["status"]), ("in", lambda r: r["prompt_tokens"]),
               ("out", lambda r: r["completion_tokens"]), ("ms", lambda r: r["latency_ms"]))
    for title, _value in columns:
        table.add_column(title, overflow="fold")
    for record in records:
        table.add_row(*(str(value(record)) for _title, value in columns))
    emit(as_json, {"project_id": project, "totals": totals, "requests": records}, table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
