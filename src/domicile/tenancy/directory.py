"""The directory service: tenancy rules as plain methods (the CLI and HTTP stay thin).

G1 lives here: a project's or workspace's region is chosen at creation and there is no
operation that changes it (the database refuses such an UPDATE too: see the migration).
Every change is written to the audit chain of the tenant's region (org changes to the
directory's own chain) before the directory commits, so nothing is half-made.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import CursorResult, Engine, Result, func, select, update
from sqlalchemy.orm import Session

from domicile.compliance.audit import AuditLog, Detail
from domicile.errors import InvalidInput, NotFound, RegionImmutable, TenantDataErased
from domicile.tenancy.grants import GLOBAL_REGION, ROLES, ApiKeyGrant, MemberGrant, Retention, Role
from domicile.tenancy.models import ApiKey, Org, Project, User, Workspace, WorkspaceToken
from domicile.tenancy.secrets import CredentialHasher, new_credential, new_id

__all__ = ["ERASURE_SCOPES", "CreatedCredential", "Directory", "ErasureMark", "ErasureScope",
           "OwnedTenant", "Ownership", "Role", "WorkspaceGrant"]

RETENTIONS: tuple[Retention, ...] = ("zero", "regional")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DIRECTORY_CHAIN = "directory"
MAX_RETENTION_DAYS = 36_500
T = TypeVar("T")
_Erasable = TypeVar("_Erasable", Org, Project, Workspace)


@dataclass(frozen=True, slots=True)
class CreatedCredential:
    """A new key or token: `secret` is shown once and never stored."""

    id: str
    secret: str
    region: str

    def __repr__(self) -> str:
        return f"CreatedCredential(id={self.id!r}, secret=<hidden>, region={self.region!r})"


# The grant of a workspace token (the name earlier code used).
WorkspaceGrant = MemberGrant

ErasureScope = Literal["org", "project", "workspace"]
ERASURE_SCOPES: tuple[ErasureScope, ...] = ("org", "project", "workspace")


@dataclass(frozen=True, slots=True)
class OwnedTenant:
    """A project or workspace: a tenant of the regional stores (its own data key)."""

    kind: Literal["project", "workspace"]
    id: str
    org_id: str
    region: str  # a configured region, or "global" (a per-request-residency project)
    erased_at: datetime | None


@dataclass(frozen=True, slots=True)
class Ownership:
    """What an org, project or workspace owns: its tenants. `erased_at`: the scope's own."""

    scope: ErasureScope
    scope_id: str
    org_id: str
    erased_at: datetime | None
    tenants: tuple[OwnedTenant, ...]


@dataclass(frozen=True, slots=True)
class ErasureMark:
    """What `Directory.mark_erased` changed."""

    tenants_marked: int
    api_keys_revoked: int
    tokens_revoked: int
    members_removed: int


class Directory:
    def __init__(
        self,
        engine: Engine,
        hasher: CredentialHasher,
        regions: Collection[str],
        *,
        audit_for: Callable[[str], AuditLog],
        default_retention: Callable[[str], Retention] = lambda _region: "zero",
        on_tenant_created: Callable[[str, str], None] = lambda _region, _tenant: None,
    ) -> None:
        self._engine = engine
        self._hasher = hasher
        self._regions = frozenset(regions)
        self._audit_for = audit_for
        self._default_retention = default_retention
        self._on_tenant_created = on_tenant_created
        self._passwords = PasswordHasher()

    # -- orgs -------------------------------------------------------------------------------

    def create_org(self, name: str, *, training_opt_in: bool = False,
                   actor: str = "cli") -> Org:
        name = _name(name, "name")
        now = datetime.now(UTC)
        org = Org(id=new_id("org"), name=name, training_opt_in=training_opt_in,
                  training_opt_in_since=now if training_opt_in else None, created_at=now)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            session.add(org)
            session.flush()
            self._audit(session, DIRECTORY_CHAIN, actor, "org.create", org.id,
                        {"training_opt_in": training_opt_in})
        return org

    def set_training_opt_in(self, org_id: str, opt_in: bool, *, actor: str = "cli") -> Org:
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            org = self._get_live(session, Org, org_id, "org")
            if org.training_opt_in != opt_in:
                org.training_opt_in = opt_in
                org.training_opt_in_since = datetime.now(UTC) if opt_in else None
                session.flush()
                self._audit(session, DIRECTORY_CHAIN, actor, "org.training_opt_in", org.id,
                            {"training_opt_in": opt_in})
        return org

    def get_org(self, org_id: str) -> Org:
        with Session(self._engine, expire_on_commit=False) as session:
            return self._get(session, Org, org_id, "org")

    def list_orgs(self) -> list[Org]:
        """Every org (erased ones included, marked), oldest first."""
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.scalars(select(Org).order_by(Org.created_at, Org.id)))

    def rename(self, kind: Literal["project", "workspace"], tenant_id: str, name: str, *,
               actor: str = "cli") -> Project | Workspace:
        """A project's or workspace's new name (audited in its region's chain). The name is
        all that changes: there is no region setter (G1)."""
        name = _name(name, "name")
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            tenant: Project | Workspace = (
                self._get_live(session, Project, tenant_id, kind) if kind == "project"
                else self._get_live(session, Workspace, tenant_id, kind))
            if tenant.name != name:
                tenant.name = name
                session.flush()
                self._audit(session, self._chain(tenant.region), actor, f"{kind}.rename",
                            tenant.id, {})
        return tenant

    def list_api_keys(self, project_id: str) -> list[ApiKey]:
        """A project's API keys, revoked ones included, oldest first (never their secrets)."""
        with Session(self._engine, expire_on_commit=False) as session:
            self._get(session, Project, project_id, "project")
            return list(session.scalars(select(ApiKey).where(ApiKey.project_id == project_id)
                                        .order_by(ApiKey.created_at, ApiKey.id)))

    # -- projects and API keys --------------------------------------------------------------

    def create_project(
        self, org_id: str, name: str, region: str, *, retention: Retention | None = None,
        per_request_residency: bool = False, rpm_limit: int | None = None,
        tpm_limit: int | None = None, actor: str = "cli",
    ) -> Project:
        name = _name(name, "name")
        if region == GLOBAL_REGION:
            if not per_request_residency:
                raise InvalidInput("region 'global' needs --per-request-residency: each request "
                                   "is then processed in the region whose URL it calls",
                                   param="region")
        else:
            self._check_region(region)
            if per_request_residency:
                raise InvalidInput("per-request residency is only for projects of region "
                                   "'global'; a pinned project is processed in its region only",
                                   param="per_request_residency")
        if retention is None:
            retention = "zero" if region == GLOBAL_REGION else self._default_retention(region)
        if retention not in RETENTIONS:
            raise InvalidInput(f"retention must be one of {', '.join(RETENTIONS)}",
                               param="retention")
        _check_limit(rpm_limit, "rpm_limit")
        _check_limit(tpm_limit, "tpm_limit")
        project = Project(
            id=new_id("proj"), org_id=org_id, name=name, region=region, retention=retention,
            per_request_residency=per_request_residency, rpm_limit=rpm_limit,
            tpm_limit=tpm_limit, created_at=datetime.now(UTC),
        )
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            self._get_live(session, Org, org_id, "org")
            session.add(project)
            session.flush()
            self._audit(session, self._chain(region), actor, "project.create", project.id, {
                "org": org_id, "region": region, "retention": retention,
                "per_request_residency": per_request_residency,
            })
            if region != GLOBAL_REGION:
                self._on_tenant_created(region, project.id)
        return project

    def set_project_limits(self, project_id: str, *, rpm_limit: int | None,
                           tpm_limit: int | None, actor: str = "cli") -> Project:
        """The only mutable settings of a project. There is no region setter (G1)."""
        _check_limit(rpm_limit, "rpm_limit")
        _check_limit(tpm_limit, "tpm_limit")
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            project = self._get_live(session, Project, project_id, "project")
            project.rpm_limit, project.tpm_limit = rpm_limit, tpm_limit
            session.flush()
            self._audit(session, self._chain(project.region), actor, "project.limits", project.id,
                        {"rpm_limit": rpm_limit, "tpm_limit": tpm_limit})
        return project

    def refuse_region_change(self, kind: str, tenant_id: str) -> None:
        """Every path that could move a tenant ends here (G1)."""
        raise RegionImmutable(f"the region of {kind} {tenant_id} was fixed at its creation and "
                              "can never change; create a new one in the other region",
                              param="region")

    def get_project(self, project_id: str) -> Project:
        with Session(self._engine, expire_on_commit=False) as session:
            return self._get(session, Project, project_id, "project")

    def list_projects(self, org_id: str | None = None) -> list[Project]:
        with Session(self._engine, expire_on_commit=False) as session:
            query = select(Project).order_by(Project.created_at)
            if org_id:
                query = query.where(Project.org_id == org_id)
            return list(session.scalars(query))

    def create_api_key(self, project_id: str, *, name: str = "default",
                       actor: str = "cli") -> CreatedCredential:
        name = _name(name, "name")
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            project = self._get_live(session, Project, project_id, "project")
            secret = new_credential("dk", project.region)
            key = ApiKey(id=new_id("key"), project_id=project.id, name=name, hint=secret[:10],
                         digest=self._hasher.digest(secret), created_at=datetime.now(UTC))
            session.add(key)
            session.flush()
            self._audit(session, self._chain(project.region), actor, "key.create", key.id,
                        {"project": project.id})
            return CreatedCredential(key.id, secret, project.region)

    def revoke_api_key(self, key_id: str, *, actor: str = "cli") -> ApiKey:
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            key = self._get(session, ApiKey, key_id, "key")
            if key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)
                project = self._get(session, Project, key.project_id, "project")
                session.flush()
                self._audit(session, self._chain(project.region), actor, "key.revoke", key.id,
                            {"project": project.id})
        return key

    def authenticate_api_key(self, secret: str) -> ApiKeyGrant | None:
        """The grant of a live key, else None. The key is looked up by its keyed digest."""
        digest = self._hasher.digest(secret)
        with Session(self._engine) as session:
            row = session.execute(
                select(ApiKey, Project, Org.training_opt_in)
                .join(Project, Project.id == ApiKey.project_id)
                .join(Org, Org.id == Project.org_id)
                .where(ApiKey.digest == digest)
            ).first()
            if row is None:
                return None
            key, project, training_opt_in = row
            if key.revoked_at is not None or not CredentialHasher.matches(key.digest, digest):
                return None
            return ApiKeyGrant(
                key_id=key.id, project_id=project.id, org_id=project.org_id,
                region=project.region, retention=project.retention,  # type: ignore[arg-type]
                per_request_residency=project.per_request_residency,
                rpm_limit=project.rpm_limit, tpm_limit=project.tpm_limit,
                training_opt_in=training_opt_in,
            )

    # -- workspaces, users and tokens -------------------------------------------------------

    def create_workspace(self, org_id: str, name: str, region: str, *,
                         actor: str = "cli") -> Workspace:
        name = _name(name, "name")
        self._check_region(region)
        workspace = Workspace(id=new_id("ws"), org_id=org_id, name=name, region=region,
                              created_at=datetime.now(UTC))
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            self._get_live(session, Org, org_id, "org")
            session.add(workspace)
            session.flush()
            self._audit(session, region, actor, "workspace.create", workspace.id,
                        {"org": org_id, "region": region})
            self._on_tenant_created(region, workspace.id)
        return workspace

    def list_workspaces(self, region: str | None = None) -> list[Workspace]:
        """Every workspace (of `region`), oldest first."""
        with Session(self._engine, expire_on_commit=False) as session:
            query = select(Workspace).order_by(Workspace.created_at)
            if region is not None:
                query = query.where(Workspace.region == region)
            return list(session.scalars(query))

    def get_workspace(self, workspace_id: str) -> Workspace:
        with Session(self._engine, expire_on_commit=False) as session:
            return self._get(session, Workspace, workspace_id, "workspace")

    def add_user(self, workspace_id: str, email: str, role: str, password: str, *,
                 actor: str = "cli") -> User:
        email = email.strip().lower()
        if not EMAIL.match(email):
            raise InvalidInput("email is not a valid address", param="email")
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", param="role")
        if len(password) < 8:
            raise InvalidInput("the password must have at least 8 characters", param="password")
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            workspace = self._get_live(session, Workspace, workspace_id, "workspace")
            taken = session.scalar(select(User.id).where(
                User.workspace_id == workspace_id, User.email == email))
            if taken:
                raise InvalidInput(f"{email} is already a member of {workspace_id}",
                                   param="email")
            user = User(id=new_id("user"), workspace_id=workspace_id, email=email, role=role,
                        password_hash=self._passwords.hash(password),
                        created_at=datetime.now(UTC))
            session.add(user)
            session.flush()
            # The email is personal data, not needed to account for the action: ids only.
            self._audit(session, workspace.region, actor, "user.add", user.id,
                        {"workspace": workspace_id, "role": role})
        return user

    def create_token(self, workspace_id: str, user_id: str, *,
                     expires_at: datetime | None = None,
                     actor: str = "cli") -> CreatedCredential:
        """A `dw-<region>-…` token for a live member; it stops working at `expires_at` (None:
        until revoked)."""
        if expires_at is not None and _utc(expires_at) <= datetime.now(UTC):
            raise InvalidInput("the token's expiry must be in the future", param="expires_at")
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            workspace = self._get_live(session, Workspace, workspace_id, "workspace")
            user = self._live_user(session, workspace.id, user_id)
            secret = new_credential("dw", workspace.region)
            token = WorkspaceToken(id=new_id("tok"), workspace_id=workspace.id, user_id=user.id,
                                   digest=self._hasher.digest(secret),
                                   created_at=datetime.now(UTC), expires_at=expires_at)
            session.add(token)
            session.flush()
            self._audit(session, workspace.region, actor, "token.create", token.id, {
                "workspace": workspace.id, "user": user.id,
                "expires_at": None if expires_at is None else _utc(expires_at).isoformat(),
            })
            return CreatedCredential(token.id, secret, workspace.region)

    def authenticate_token(self, secret: str) -> WorkspaceGrant | None:
        """The grant of a live token of a live member; None when the token is unknown,
        revoked or expired, or its member was removed."""
        digest = self._hasher.digest(secret)
        with Session(self._engine) as session:
            row = session.execute(
                select(WorkspaceToken, Workspace, User, Org.training_opt_in)
                .join(Workspace, Workspace.id == WorkspaceToken.workspace_id)
                .join(User, User.id == WorkspaceToken.user_id)
                .join(Org, Org.id == Workspace.org_id)
                .where(WorkspaceToken.digest == digest)
            ).first()
            if row is None:
                return None
            token, workspace, user, training_opt_in = row
            if (token.revoked_at is not None or user.removed_at is not None
                    or (token.expires_at is not None
                        and _utc(token.expires_at) <= datetime.now(UTC))
                    or not CredentialHasher.matches(token.digest, digest)):
                return None
            return MemberGrant(workspace.id, workspace.org_id, user.id, workspace.region,
                               user.role, token_id=token.id,  # type: ignore[arg-type]
                               training_opt_in=training_opt_in)

    def revoke_token(self, token_id: str, *, actor: str = "cli") -> None:
        """Revoke a workspace token (idempotent: a revoked token is audited once)."""
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            token = self._get(session, WorkspaceToken, token_id, "token")
            if token.revoked_at is None:
                token.revoked_at = datetime.now(UTC)
                workspace = self._get(session, Workspace, token.workspace_id, "workspace")
                session.flush()
                self._audit(session, workspace.region, actor, "token.revoke", token.id,
                            {"workspace": workspace.id, "user": token.user_id})

    def list_tokens(self, workspace_id: str, user_id: str) -> list[WorkspaceToken]:
        """A member's tokens, revoked and expired ones included, oldest first."""
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.scalars(
                select(WorkspaceToken)
                .where(WorkspaceToken.workspace_id == workspace_id,
                       WorkspaceToken.user_id == user_id)
                .order_by(WorkspaceToken.created_at, WorkspaceToken.id)))

    def get_member(self, workspace_id: str, user_id: str) -> User:
        """A live member of the workspace (404 otherwise)."""
        with Session(self._engine, expire_on_commit=False) as session:
            return self._live_user(session, workspace_id, user_id)

    def list_members(self, workspace_id: str) -> list[User]:
        """The workspace's members (removed ones left out), oldest first."""
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.scalars(
                select(User)
                .where(User.workspace_id == workspace_id, User.removed_at.is_(None))
                .order_by(User.created_at, User.id)))

    def set_role(self, workspace_id: str, user_id: str, role: str, *,
                 actor: str = "cli", check: Callable[[User], None] | None = None) -> User:
        """Change a member's role. The last owner cannot be demoted: a workspace always has
        someone who may administer it. `check` sees the member as they are in this
        transaction and may refuse the change by raising (the caller's rules of who may
        change whom)."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", param="role")
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            workspace = self._get(session, Workspace, workspace_id, "workspace")
            user = self._live_user(session, workspace.id, user_id)
            if check is not None:
                check(user)
            if user.role == role:
                return user
            if user.role == "owner":
                self._keep_an_owner(session, workspace.id, user.id, "demoted", "role")
            user.role = role
            session.flush()
            self._audit(session, workspace.region, actor, "member.role", user.id,
                        {"workspace": workspace.id, "role": role})
        return user

    def remove_member(self, workspace_id: str, user_id: str, *, actor: str = "cli",
                      check: Callable[[User], None] | None = None) -> None:
        """Remove a member: their tokens are revoked and they can no longer sign in (their
        browser sessions stop at the next request). The row stays, for the audit trail.
        `check` as for `set_role`."""
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            workspace = self._get(session, Workspace, workspace_id, "workspace")
            user = self._live_user(session, workspace.id, user_id)
            if check is not None:
                check(user)
            if user.role == "owner":
                self._keep_an_owner(session, workspace.id, user.id, "removed", "user")
            now = datetime.now(UTC)
            user.removed_at = now
            tokens = list(session.scalars(select(WorkspaceToken).where(
                WorkspaceToken.user_id == user.id, WorkspaceToken.revoked_at.is_(None))))
            for token in tokens:
                token.revoked_at = now
            session.flush()
            self._audit(session, workspace.region, actor, "member.remove", user.id,
                        {"workspace": workspace.id, "tokens_revoked": len(tokens)})

    def set_retention(self, workspace_id: str, days: int | None, *,
                      actor: str = "cli") -> Workspace:
        """Keep content forever (None) or delete conversations and files older than `days`."""
        if days is not None and not 1 <= days <= MAX_RETENTION_DAYS:
            raise InvalidInput(f"retention days must be 1 to {MAX_RETENTION_DAYS}, or none "
                               "to keep content until it is deleted", param="days")
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            workspace = self._get(session, Workspace, workspace_id, "workspace")
            if workspace.retention_days != days:
                workspace.retention_days = days
                session.flush()
                self._audit(session, workspace.region, actor, "workspace.retention",
                            workspace.id, {"days": days})
        return workspace

    def find_members(self, region: str, email: str) -> list[User]:
        """The live members with this email in the workspaces of `region` (sign-in)."""
        email = email.strip().lower()
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.scalars(
                select(User).join(Workspace, Workspace.id == User.workspace_id)
                .where(Workspace.region == region, User.email == email,
                       User.removed_at.is_(None))
                .order_by(User.created_at, User.id)))

    def verify_password(self, user: User, password: str) -> bool:
        """Whether `password` is the member's (argon2id, constant time). A member without a
        password (single sign-on) never matches. An old-parameter hash is upgraded."""
        if not user.password_hash:
            return False
        try:
            self._passwords.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        if self._passwords.check_needs_rehash(user.password_hash):
            rehashed = self._passwords.hash(password)
            with Session(self._engine) as session, session.begin():
                session.execute(update(User).where(User.id == user.id)
                                .values(password_hash=rehashed))
            user.password_hash = rehashed
        return True

    def member_grant(self, user_id: str) -> MemberGrant | None:
        """The grant of a live member, as it is now (its role included); None once removed."""
        with Session(self._engine) as session:
            row = session.execute(
                select(User, Workspace, Org.training_opt_in)
                .join(Workspace, Workspace.id == User.workspace_id)
                .join(Org, Org.id == Workspace.org_id)
                .where(User.id == user_id)
            ).first()
            if row is None or row[0].removed_at is not None:
                return None
            user, workspace, training_opt_in = row
            return MemberGrant(workspace.id, workspace.org_id, user.id, workspace.region,
                               user.role, training_opt_in=training_opt_in)  # type: ignore[arg-type]

    # -- erasure (G9; compliance.erasure does the stores' part) ------------------------------

    def owned_tenants(self, scope: ErasureScope, scope_id: str) -> Ownership:
        """The projects and workspaces an org, project or workspace stands for: the tenants
        whose data keys seal its content. An org's include erased ones (an erasure that
        stopped half-way is finished by running it again)."""
        if scope not in ERASURE_SCOPES:
            raise InvalidInput(f"scope must be one of {', '.join(ERASURE_SCOPES)}",
                               param="scope")
        with Session(self._engine, expire_on_commit=False) as session:
            if scope == "org":
                org = self._get(session, Org, scope_id, "org")
                projects = list(session.scalars(select(Project).where(
                    Project.org_id == org.id).order_by(Project.created_at, Project.id)))
                workspaces = list(session.scalars(select(Workspace).where(
                    Workspace.org_id == org.id).order_by(Workspace.created_at, Workspace.id)))
                org_id, erased_at = org.id, org.erased_at
            elif scope == "project":
                project = self._get(session, Project, scope_id, "project")
                projects, workspaces = [project], []
                org_id, erased_at = project.org_id, project.erased_at
            else:
                workspace = self._get(session, Workspace, scope_id, "workspace")
                projects, workspaces = [], [workspace]
                org_id, erased_at = workspace.org_id, workspace.erased_at
        tenants = [OwnedTenant("project", p.id, p.org_id, p.region, p.erased_at)
                   for p in projects]
        tenants += [OwnedTenant("workspace", w.id, w.org_id, w.region, w.erased_at)
                    for w in workspaces]
        return Ownership(scope, scope_id, org_id, erased_at, tuple(tenants))

    def _owned_ids(self, scope: ErasureScope, scope_id: str) -> tuple[list[str], list[str]]:
        """(project ids, workspace ids) of what `scope_id` owns."""
        tenants = self.owned_tenants(scope, scope_id).tenants
        return ([t.id for t in tenants if t.kind == "project"],
                [t.id for t in tenants if t.kind == "workspace"])

    def revoke_credentials(self, scope: ErasureScope, scope_id: str, *,
                           actor: str = "cli") -> tuple[int, int]:
        """An erasure's first step: the tenants' API keys and tokens stop working (within a
        second at every server), so nothing new is written while their content goes. The
        tenants are marked erased only at the end (`mark_erased`): an erasure interrupted
        before then is run again whole. Returns (keys, tokens) revoked."""
        project_ids, workspace_ids = self._owned_ids(scope, scope_id)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            keys, tokens = _revoke_credentials(session, project_ids, workspace_ids,
                                               datetime.now(UTC))
            self._audit(session, DIRECTORY_CHAIN, actor, "erase.begin", scope_id, {
                "scope": scope, "api_keys_revoked": keys, "tokens_revoked": tokens})
        return keys, tokens

    def mark_erased(self, scope: ErasureScope, scope_id: str, *,
                    details: Mapping[str, Detail], actor: str = "cli") -> ErasureMark:
        """The directory's part of an erasure, in one transaction with its audit entry: the
        tenants are marked erased (their rows stay: ids are never reused), their API keys and
        tokens revoked, their members removed, the members' emails and password hashes
        blanked. `details`: what the stores' part did (counts, receipt statements)."""
        project_ids, workspace_ids = self._owned_ids(scope, scope_id)
        now = datetime.now(UTC)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            if scope == "org":
                session.execute(update(Org).where(Org.id == scope_id, Org.erased_at.is_(None))
                                .values(erased_at=now))
            marked = 0
            for model, ids in ((Project, project_ids), (Workspace, workspace_ids)):
                if ids:
                    marked += _changed(session.execute(
                        update(model).where(model.id.in_(ids), model.erased_at.is_(None))
                        .values(erased_at=now)))
            # Again: credentials made while the content went (revoke_credentials ran first).
            keys, tokens = _revoke_credentials(session, project_ids, workspace_ids, now)
            members = 0
            if workspace_ids:
                users = list(session.scalars(select(User).where(
                    User.workspace_id.in_(workspace_ids))))
                for user in users:
                    if user.removed_at is None:
                        user.removed_at = now
                        members += 1
                    # Personal data the audit trail does not need: the row keeps only its id.
                    user.email = f"{user.id}@erased.invalid"
                    user.password_hash = ""
            mark = ErasureMark(marked, keys, tokens, members)
            session.flush()
            self._audit(session, DIRECTORY_CHAIN, actor, "erase", scope_id, {
                "scope": scope, "tenants_marked": marked, "api_keys_revoked": keys,
                "tokens_revoked": tokens, "members_removed": members, **details})
        return mark

    # -- helpers ----------------------------------------------------------------------------

    def _check_region(self, region: str) -> None:
        if region not in self._regions:
            known = ", ".join(sorted(self._regions))
            raise InvalidInput(f"unknown region {region!r} (configured: {known})",
                               param="region")

    def _live_user(self, session: Session, workspace_id: str, user_id: str) -> User:
        user = session.get(User, user_id)
        if user is None or user.workspace_id != workspace_id or user.removed_at is not None:
            raise NotFound(f"no user {user_id} in workspace {workspace_id}", param="user")
        return user

    @staticmethod
    def _keep_an_owner(session: Session, workspace_id: str, user_id: str, change: str,
                       param: str) -> None:
        others = session.scalar(select(func.count()).select_from(User).where(
            User.workspace_id == workspace_id, User.role == "owner", User.id != user_id,
            User.removed_at.is_(None)))
        if not others:
            raise InvalidInput(f"the last owner of workspace {workspace_id} cannot be "
                               f"{change}; make another member owner first", param=param)

    @staticmethod
    def _chain(region: str) -> str:
        return DIRECTORY_CHAIN if region == GLOBAL_REGION else region

    def _audit(self, session: Session, chain: str, actor: str, action: str, target: str,
               details: dict[str, Detail]) -> None:
        # The directory's own chain shares the directory's transaction: atomic with the change.
        # A region's chain commits first in its own store; if it fails, nothing is created.
        connection = session.connection() if chain == DIRECTORY_CHAIN else None
        self._audit_for(chain).append(actor, action, target, details, connection=connection)

    @classmethod
    def _get_live(cls, session: Session, model: type[_Erasable], ident: str,
                  what: str) -> _Erasable:
        """`_get`, refusing an erased org, project or workspace: nothing new under it (G9)."""
        found = cls._get(session, model, ident, what)
        if found.erased_at is not None:
            raise TenantDataErased(f"{what} {ident} was erased; nothing can be added to it",
                                   param=what)
        return found

    @staticmethod
    def _get(session: Session, model: type[T], ident: str, what: str) -> T:
        found = session.get(model, ident)
        if found is None:
            raise NotFound(f"no {what} {ident}", param=what)
        return found


def _name(value: str, field: str) -> str:
    value = value.strip()
    if not value or len(value) > 200:
        raise InvalidInput(f"{field} must be 1 to 200 characters", param=field)
    return value


def _utc(at: datetime) -> datetime:
    # SQLite hands datetimes back naive; they were written in UTC.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _check_limit(value: int | None, field: str) -> None:
    if value is not None and value < 1:
        raise InvalidInput(f"{field} must be a positive number", param=field)


def _revoke_credentials(session: Session, project_ids: list[str], workspace_ids: list[str],
                        now: datetime) -> tuple[int, int]:
    """Revoke the live API keys of `project_ids` and tokens of `workspace_ids`: (keys, tokens)."""
    keys = tokens = 0
    if project_ids:
        keys = _changed(session.execute(
            update(ApiKey).where(ApiKey.project_id.in_(project_ids),
                                 ApiKey.revoked_at.is_(None))
            .values(revoked_at=now)))
    if workspace_ids:
        tokens = _changed(session.execute(
            update(WorkspaceToken).where(WorkspaceToken.workspace_id.in_(workspace_ids),
                                         WorkspaceToken.revoked_at.is_(None))
            .values(revoked_at=now)))
    return keys, tokens


def _changed(result: Result[Any]) -> int:
    """The rows an UPDATE changed."""
    return int(cast(CursorResult[Any], result).rowcount)
