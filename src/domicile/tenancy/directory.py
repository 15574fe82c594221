"""The directory service: tenancy rules as plain methods (the CLI and HTTP stay thin).

G1 lives here: a project's or workspace's region is chosen at creation and there is no
operation that changes it (the database refuses such an UPDATE too: see the migration).
Every change is written to the audit chain of the tenant's region (org changes to the
directory's own chain) before the directory commits, so nothing is half-made.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from argon2 import PasswordHasher
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from domicile.compliance.audit import AuditLog, Detail
from domicile.errors import InvalidInput, NotFound, RegionImmutable
from domicile.tenancy.grants import GLOBAL_REGION, ApiKeyGrant, Retention
from domicile.tenancy.models import ApiKey, Org, Project, User, Workspace, WorkspaceToken
from domicile.tenancy.secrets import CredentialHasher, new_credential, new_id

__all__ = ["CreatedCredential", "Directory", "Role", "WorkspaceGrant"]

Role = Literal["owner", "admin", "member"]
ROLES: tuple[Role, ...] = ("owner", "admin", "member")
RETENTIONS: tuple[Retention, ...] = ("zero", "regional")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DIRECTORY_CHAIN = "directory"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CreatedCredential:
    """A new key or token: `secret` is shown once and never stored."""

    id: str
    secret: str
    region: str

    def __repr__(self) -> str:
        return f"CreatedCredential(id={self.id!r}, secret=<hidden>, region={self.region!r})"


@dataclass(frozen=True, slots=True)
class WorkspaceGrant:
    token_id: str
    workspace_id: str
    org_id: str
    user_id: str
    region: str
    role: str


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
            org = self._get(session, Org, org_id, "org")
            if org.training_opt_in != opt_in:
                org.training_opt_in = opt_in
                org.training_opt_in_since = datetime.now(UTC) if opt_in else None
                session.flush()
                self._audit(session, DIRECTORY_CHAIN, actor, "org.training_opt_in", org.id,
                            {"training_opt_in": opt_in})
        return org

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
            self._get(session, Org, org_id, "org")
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
            project = self._get(session, Project, project_id, "project")
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
            project = self._get(session, Project, project_id, "project")
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
                select(ApiKey, Project).join(Project, Project.id == ApiKey.project_id)
                .where(ApiKey.digest == digest)
            ).first()
            if row is None:
                return None
            key, project = row
            if key.revoked_at is not None or not CredentialHasher.matches(key.digest, digest):
                return None
            return ApiKeyGrant(
                key_id=key.id, project_id=project.id, org_id=project.org_id,
                region=project.region, retention=project.retention,  # type: ignore[arg-type]
                per_request_residency=project.per_request_residency,
                rpm_limit=project.rpm_limit, tpm_limit=project.tpm_limit,
            )

    # -- workspaces, users and tokens -------------------------------------------------------

    def create_workspace(self, org_id: str, name: str, region: str, *,
                         actor: str = "cli") -> Workspace:
        name = _name(name, "name")
        self._check_region(region)
        workspace = Workspace(id=new_id("ws"), org_id=org_id, name=name, region=region,
                              created_at=datetime.now(UTC))
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            self._get(session, Org, org_id, "org")
            session.add(workspace)
            session.flush()
            self._audit(session, region, actor, "workspace.create", workspace.id,
                        {"org": org_id, "region": region})
            self._on_tenant_created(region, workspace.id)
        return workspace

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
            workspace = self._get(session, Workspace, workspace_id, "workspace")
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
                     actor: str = "cli") -> CreatedCredential:
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            workspace = self._get(session, Workspace, workspace_id, "workspace")
            user = self._get(session, User, user_id, "user")
            if user.workspace_id != workspace.id:
                raise NotFound(f"no user {user_id} in workspace {workspace_id}", param="user")
            secret = new_credential("dw", workspace.region)
            token = WorkspaceToken(id=new_id("tok"), workspace_id=workspace.id, user_id=user.id,
                                   digest=self._hasher.digest(secret),
                                   created_at=datetime.now(UTC))
            session.add(token)
            session.flush()
            self._audit(session, workspace.region, actor, "token.create", token.id,
                        {"workspace": workspace.id, "user": user.id})
            return CreatedCredential(token.id, secret, workspace.region)

    def authenticate_token(self, secret: str) -> WorkspaceGrant | None:
        digest = self._hasher.digest(secret)
        with Session(self._engine) as session:
            row = session.execute(
                select(WorkspaceToken, Workspace, User)
                .join(Workspace, Workspace.id == WorkspaceToken.workspace_id)
                .join(User, User.id == WorkspaceToken.user_id)
                .where(WorkspaceToken.digest == digest)
            ).first()
            if row is None:
                return None
            token, workspace, user = row
            if token.revoked_at is not None or not CredentialHasher.matches(token.digest, digest):
                return None
            return WorkspaceGrant(token.id, workspace.id, workspace.org_id, user.id,
                                  workspace.region, user.role)

    # -- helpers ----------------------------------------------------------------------------

    def _check_region(self, region: str) -> None:
        if region not in self._regions:
            known = ", ".join(sorted(self._regions))
            raise InvalidInput(f"unknown region {region!r} (configured: {known})",
                               param="region")

    @staticmethod
    def _chain(region: str) -> str:
        return DIRECTORY_CHAIN if region == GLOBAL_REGION else region

    def _audit(self, session: Session, chain: str, actor: str, action: str, target: str,
               details: dict[str, Detail]) -> None:
        # The directory's own chain shares the directory's transaction: atomic with the change.
        # A region's chain commits first in its own store; if it fails, nothing is created.
        connection = session.connection() if chain == DIRECTORY_CHAIN else None
        self._audit_for(chain).append(actor, action, target, details, connection=connection)

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


def _check_limit(value: int | None, field: str) -> None:
    if value is not None and value < 1:
        raise InvalidInput(f"{field} must be a positive number", param=field)
