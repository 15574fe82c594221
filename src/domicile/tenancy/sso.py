"""Single sign-on for workspaces (OIDC): each workspace's identity provider and its rules.

A workspace may name one OpenID Connect issuer, the client Domicile is registered as there,
and the email domains whose people may sign in. The rules, checked when an operator sets it:

- the issuer is `https://…` (G6); plain `http://` only to a loopback host (a provider run
  beside the server, or a test). Every endpoint its discovery document names must be
  https, unless the issuer itself is a loopback host (`check_provider_endpoint`): a remote
  issuer's document cannot send a code, the client secret or a token to plain http on this
  machine.
- the allowed domains are lowercase host names (`Example.COM` is kept as `example.com`), at
  least one; an email matches only its exact domain, never a subdomain (`a.example.com` is
  not `example.com`): an operator lists every domain they mean.
- the client secret is never kept in plain: it is sealed (AES-256-GCM) under the workspace's
  data key in its region's key provider, bound to region, workspace and this record (G5),
  and crypto-shredded with the workspace (G9). Without one the client is public and PKCE
  alone protects the code. Why sealed rather than the name of an environment variable: a
  workspace is configured at run time by the CLI or the admin API, and every replica of the
  region can read the secret at once without a restart or a per-workspace secret to deploy.

Members who sign in through SSO for the first time are made on the spot (role member, no
password: `provision_member`); a member an admin removed stays removed. Their email is kept
as `Directory.add_user` keeps one (trimmed, lowercase, its `EMAIL` pattern) and without a
trailing dot on its domain (`sso_email`), so `ann@example.com.` is the member
`ann@example.com`, not a second one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domicile.compliance.audit import AuditLog
from domicile.config import is_loopback_host
from domicile.errors import Forbidden, InvalidInput, NotFound, TenantDataErased
from domicile.storage.interfaces import TenantRef
from domicile.storage.regional import RegionalStore
from domicile.tenancy.directory import EMAIL
from domicile.tenancy.models import User, Workspace, WorkspaceSso
from domicile.tenancy.secrets import new_id

__all__ = [
    "CLIENT_SECRET_KIND",
    "MAX_DOMAINS",
    "MembershipEnded",
    "SsoConfig",
    "WorkspaceSsoSettings",
    "check_client_id",
    "check_endpoint",
    "check_issuer",
    "check_provider_endpoint",
    "email_domain",
    "parse_domains",
    "sso_email",
]

CLIENT_SECRET_KIND = "sso_client_secret"  # noqa: S105 - a sealing context's kind
MAX_DOMAINS = 50
MAX_ISSUER = 500
MAX_CLIENT_ID = 255
MAX_CLIENT_SECRET = 1024
# A host name of at least two labels, each 1-63 letters, digits or inner hyphens (IDNs in
# their xn-- form).
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
                     r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True, slots=True)
class SsoConfig:
    """A workspace's SSO settings as the directory holds them (the secret stays sealed)."""

    workspace_id: str
    org_id: str
    region: str
    issuer: str
    client_id: str
    allowed_domains: tuple[str, ...]
    client_secret_sealed: bytes | None
    created_at: datetime
    updated_at: datetime

    def __repr__(self) -> str:
        return (f"SsoConfig(workspace_id={self.workspace_id!r}, issuer={self.issuer!r}, "
                f"client_id={self.client_id!r}, allowed_domains={self.allowed_domains!r})")

    @property
    def has_client_secret(self) -> bool:
        return self.client_secret_sealed is not None

    @property
    def tenant(self) -> TenantRef:
        return TenantRef(self.workspace_id, self.region, self.org_id)

    def allows(self, email: str) -> bool:
        """Whether `email`'s domain is one of the allowed ones (exactly, case aside)."""
        domain = email_domain(email)
        return domain is not None and domain in self.allowed_domains

    def to_json(self) -> dict[str, Any]:
        return {"workspace_id": self.workspace_id, "region": self.region,
                "issuer": self.issuer, "client_id": self.client_id,
                "allowed_domains": list(self.allowed_domains),
                "client_secret": "sealed" if self.has_client_secret else None,
                "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat()}


class MembershipEnded(Forbidden):
    """SSO for a member an admin removed (403 `forbidden`): not made again. `user_id` is for
    the audit entry."""

    def __init__(self, user_id: str) -> None:
        super().__init__("Your membership of this workspace was ended by an admin; ask them "
                         "to add you again.")
        self.user_id = user_id


# -- the rules --------------------------------------------------------------------------------

def check_endpoint(url: str, field: str) -> str:
    """`url` if it is an absolute https URL, or http to a loopback host (G6); else
    `InvalidInput` naming `field`."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise InvalidInput(f"{field} is not a valid URL", param=field) from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidInput(f"{field} must be an https:// URL", param=field)
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(f"{field} must not hold a user name or password", param=field)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise InvalidInput(f"{field}: plain http to the non-loopback host {parts.hostname!r} "
                           "is refused (G6); use https", param=field)
    return url


def check_provider_endpoint(url: str, field: str, issuer: str) -> str:
    """An endpoint `issuer`'s discovery document names: https, or (`check_endpoint`) http to
    loopback only when the issuer itself is on a loopback host. Else `InvalidInput`: a
    remote provider's document must not make this server send a code and the client secret,
    or an access token, in plain http to a port on its own machine."""
    url = check_endpoint(url, field)
    if urlsplit(url).scheme != "https" and not is_loopback_host(urlsplit(issuer).hostname or ""):
        raise InvalidInput(f"{field} must be https: the issuer is not on a loopback host",
                           param=field)
    return url


def check_issuer(url: str) -> str:
    """An issuer as the provider names itself (kept exactly: ID tokens must carry it)."""
    url = check_endpoint(url, "issuer")
    if len(url) > MAX_ISSUER:
        raise InvalidInput(f"issuer must be at most {MAX_ISSUER} characters", param="issuer")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise InvalidInput("issuer must have no query or fragment", param="issuer")
    return url


def check_client_id(client_id: str) -> str:
    client_id = client_id.strip()
    if not 1 <= len(client_id) <= MAX_CLIENT_ID or not _PRINTABLE.match(client_id):
        raise InvalidInput(f"client_id must be 1 to {MAX_CLIENT_ID} printable characters "
                           "without spaces", param="client_id")
    return client_id


def parse_domains(value: str | Iterable[str]) -> tuple[str, ...]:
    """Allowed email domains from `a.com,b.org` (or a list): lowercase, in order, once each."""
    items = value.split(",") if isinstance(value, str) else list(value)
    domains: list[str] = []
    for item in items:
        domain = item.strip().lower().removeprefix("@").rstrip(".")
        if not domain:
            continue
        if not _DOMAIN.match(domain):
            raise InvalidInput(f"allowed domain {domain[:80]!r} is not a domain name (like "
                               "example.com; no wildcards, no addresses)",
                               param="allowed_domains")
        if domain not in domains:
            domains.append(domain)
    if not domains:
        raise InvalidInput("name at least one allowed email domain", param="allowed_domains")
    if len(domains) > MAX_DOMAINS:
        raise InvalidInput(f"at most {MAX_DOMAINS} allowed domains", param="allowed_domains")
    return tuple(domains)


def email_domain(email: str) -> str | None:
    """The lowercase domain of an address (after its last `@`), None when it has none."""
    local, at, domain = email.strip().lower().rpartition("@")
    if not at or not local or not domain:
        return None
    return domain.rstrip(".")


def sso_email(email: str) -> str | None:
    """The address a provider vouched for, kept as `Directory.add_user` keeps one (trimmed,
    lowercase, matching its `EMAIL` pattern), its domain without a trailing dot (the same
    host: `ann@example.com.` is `ann@example.com`); None for what that pattern refuses."""
    local, at, domain = email.strip().lower().rpartition("@")
    address = f"{local}{at}{domain.rstrip('.')}" if at else domain
    return address if EMAIL.match(address) else None


# -- the settings, in the directory -------------------------------------------------------------

class WorkspaceSsoSettings:
    """Workspaces' SSO settings and the members SSO makes. Every change is audited in the
    workspace's region's chain (ids, issuer and client id; never a secret or an email)."""

    def __init__(self, engine: Engine, audit_for: Callable[[str], AuditLog],
                 store_for: Callable[[str], RegionalStore]) -> None:
        self._engine = engine
        self._audit_for = audit_for
        self._store_for = store_for

    def __repr__(self) -> str:
        return "WorkspaceSsoSettings()"

    def set(self, workspace_id: str, *, issuer: str, client_id: str,
            allowed_domains: str | Iterable[str], client_secret: str | None = None,
            actor: str = "cli") -> SsoConfig:
        """Set (or replace) a workspace's SSO. `client_secret` None: a public client."""
        issuer = check_issuer(issuer)
        client_id = check_client_id(client_id)
        domains = parse_domains(allowed_domains)
        if client_secret is not None and not 1 <= len(client_secret) <= MAX_CLIENT_SECRET:
            raise InvalidInput(f"the client secret must be 1 to {MAX_CLIENT_SECRET} characters",
                               param="client_secret")
        now = datetime.now(UTC)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            workspace = _live_workspace(session, workspace_id)
            sealed = None
            if client_secret is not None:
                tenant = TenantRef(workspace.id, workspace.region, workspace.org_id)
                sealed = self._store_for(workspace.region).seal(
                    tenant, CLIENT_SECRET_KIND, workspace.id, client_secret.encode("utf-8"))
            row = session.get(WorkspaceSso, workspace.id)
            if row is None:
                row = WorkspaceSso(workspace_id=workspace.id, created_at=now)
                session.add(row)
            row.issuer, row.client_id = issuer, client_id
            row.allowed_domains = ",".join(domains)
            row.client_secret_sealed = sealed
            row.updated_at = now
            session.flush()
            self._audit_for(workspace.region).append(actor, "workspace.sso.set", workspace.id, {
                "issuer": issuer, "client_id": client_id, "allowed_domains": len(domains),
                "client_secret": sealed is not None})
            return _config(row, workspace)

    def get(self, workspace_id: str) -> SsoConfig | None:
        """The workspace's SSO, None when it has none (or was erased); 404 for no workspace."""
        with Session(self._engine, expire_on_commit=False) as session:
            workspace = session.get(Workspace, workspace_id)
            if workspace is None:
                raise NotFound(f"no workspace {workspace_id}", param="workspace")
            row = session.get(WorkspaceSso, workspace_id)
            if row is None or workspace.erased_at is not None:
                return None
            return _config(row, workspace)

    def clear(self, workspace_id: str, *, actor: str = "cli") -> bool:
        """Turn SSO off (members keep their accounts and sessions); False if it was off."""
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            workspace = session.get(Workspace, workspace_id)
            if workspace is None:
                raise NotFound(f"no workspace {workspace_id}", param="workspace")
            row = session.get(WorkspaceSso, workspace_id)
            if row is None:
                return False
            session.delete(row)
            session.flush()
            self._audit_for(workspace.region).append(actor, "workspace.sso.clear",
                                                     workspace.id, {})
        return True

    def client_secret(self, config: SsoConfig) -> str | None:
        """The client secret, opened in the workspace's region (`DecryptionError` if it was
        shredded or the row was tampered with)."""
        if config.client_secret_sealed is None:
            return None
        return self._store_for(config.region).open(
            config.tenant, CLIENT_SECRET_KIND, config.workspace_id,
            config.client_secret_sealed).decode("utf-8")

    def provision_member(self, workspace_id: str, email: str) -> tuple[User, bool]:
        """The live member of the workspace with this (IdP-verified) email, made now with
        role member and no password if there is none: (member, made now). A member who was
        removed is refused (403): only an admin brings them back; an address `sso_email`
        refuses is `InvalidInput`."""
        address = sso_email(email)
        if address is None:
            raise InvalidInput("email is not a valid address", param="email")
        email = address
        for _attempt in range(2):  # a concurrent first sign-in may insert the same member
            try:
                return self._provision(workspace_id, email)
            except IntegrityError:
                continue
        return self._provision(workspace_id, email)

    def _provision(self, workspace_id: str, email: str) -> tuple[User, bool]:
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            workspace = _live_workspace(session, workspace_id)
            user = session.scalar(select(User).where(User.workspace_id == workspace.id,
                                                     User.email == email))
            if user is not None:
                if user.removed_at is not None:
                    raise MembershipEnded(user.id)
                return user, False
            user = User(id=new_id("user"), workspace_id=workspace.id, email=email,
                        role="member", password_hash="", created_at=datetime.now(UTC))
            session.add(user)
            session.flush()
            # As `Directory.add_user`: ids only, the email is not needed to account for it.
            self._audit_for(workspace.region).append("sso", "user.add", user.id, {
                "workspace": workspace.id, "role": "member", "via": "sso"})
            return user, True


def _live_workspace(session: Session, workspace_id: str) -> Workspace:
    workspace = session.get(Workspace, workspace_id)
    if workspace is None:
        raise NotFound(f"no workspace {workspace_id}", param="workspace")
    if workspace.erased_at is not None:
        raise TenantDataErased(f"workspace {workspace_id} was erased", param="workspace")
    return workspace


def _config(row: WorkspaceSso, workspace: Workspace) -> SsoConfig:
    return SsoConfig(row.workspace_id, workspace.org_id, workspace.region, row.issuer,
                     row.client_id, tuple(row.allowed_domains.split(",")),
                     row.client_secret_sealed, _utc(row.created_at), _utc(row.updated_at))


def _utc(at: datetime) -> datetime:
    # SQLite hands datetimes back naive; they were written in UTC.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
