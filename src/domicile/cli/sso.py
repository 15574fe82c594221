"""`domicile workspace sso ...`: a workspace's single sign-on (OIDC), audited in its region."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from domicile.cli._common import ConfigOption, JsonOption, command, emit, open_site
from domicile.errors import InvalidInput
from domicile.site import Site
from domicile.tenancy.sso import WorkspaceSsoSettings

__all__ = ["register", "sso_settings"]

sso_app = typer.Typer(no_args_is_help=True,
                      help="Single sign-on (OpenID Connect) for a workspace.")

WorkspaceArg = Annotated[str, typer.Argument(metavar="WS_ID")]


def register(workspace_app: typer.Typer) -> None:
    workspace_app.add_typer(sso_app, name="sso")


def sso_settings(site: Site) -> WorkspaceSsoSettings:
    return WorkspaceSsoSettings(site.directory_engine, site.audit_log, site.store)


@sso_app.command("set")
@command
def sso_set(
    workspace_id: WorkspaceArg,
    issuer: Annotated[str, typer.Option("--issuer", help="The provider's issuer URL (https; "
                                        "http only to a loopback host).")],
    client_id: Annotated[str, typer.Option("--client-id", help="Domicile's client id there.")],
    allowed_domains: Annotated[str, typer.Option(
        "--allowed-domains", metavar="a.com,b.org",
        help="The email domains that may sign in (exact domains, comma-separated).")],
    client_secret_stdin: Annotated[bool, typer.Option(
        "--client-secret-stdin", help="Read the client secret from stdin (kept sealed). "
        "Without it the client is public (PKCE only).")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set a workspace's SSO: its members sign in at the issuer; first-timers become members."""
    secret = None
    if client_secret_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise InvalidInput("--client-secret-stdin read an empty line",
                               param="client_secret")
    site = open_site(config)
    settings = sso_settings(site)
    found = settings.set(workspace_id, issuer=issuer, client_id=client_id,
                         allowed_domains=allowed_domains, client_secret=secret)
    payload = found.to_json()
    payload["redirect_uri"] = redirect_uri(site, found.region)
    emit(as_json, payload)


@sso_app.command("show")
@command
def sso_show(workspace_id: WorkspaceArg, config: ConfigOption = None,
             as_json: JsonOption = False) -> None:
    """A workspace's SSO settings (the client secret is never shown), with the redirect URI
    to register at the provider."""
    site = open_site(config)
    found = sso_settings(site).get(workspace_id)
    if found is None:
        emit(as_json, {"workspace_id": workspace_id, "sso": None})
        return
    payload = found.to_json()
    payload["redirect_uri"] = redirect_uri(site, found.region)
    emit(as_json, payload)


@sso_app.command("clear")
@command
def sso_clear(workspace_id: WorkspaceArg, config: ConfigOption = None,
              as_json: JsonOption = False) -> None:
    """Turn a workspace's SSO off. Members keep their accounts; SSO-only members can no
    longer sign in until it is set again (or they get a password)."""
    cleared = sso_settings(open_site(config)).clear(workspace_id)
    emit(as_json, {"workspace_id": workspace_id, "cleared": cleared})


def redirect_uri(site: Site, region: str) -> str:
    """Where the provider sends members back: the region's callback."""
    return site.settings.region(region).public_url.rstrip("/") + "/workspace/sso/callback"
