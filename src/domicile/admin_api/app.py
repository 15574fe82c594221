"""The admin API under `/admin/v1/`: a thin Starlette front door for automation, over the
services the `domicile` command uses.

Every request goes through the same steps: the admin key (`Authorization: Bearer da-…`,
`tenancy.admin_keys`) is checked before a byte of the body is read (401 `invalid_api_key`
for a missing, unknown or revoked one); the body is read bounded, parsed by the one strict
JSON parser of `domicile.web`, and validated by a pydantic model that refuses unknown fields;
then one service call, with the admin key's id as the audit actor. Errors are
`DomicileError`s, rendered once, here, in the one error shape with the request id. Nothing a
client sent is logged: an unexpected error is logged by its type, the request id and the
route template.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, Router

from domicile.compliance.audit import parse_since
from domicile.errors import (
    InvalidApiKey,
    InvalidInput,
    NotFound,
)
from domicile.site import Site
from domicile.tenancy.admin_keys import AdminGrant
from domicile.tenancy.directory import ErasureScope
from domicile.web.asgi import Receive, Scope, Send
from domicile.web.guard import guard, read_bounded, validation_error
from domicile.web.jsonbody import dump_json, parse_json_object
from domicile.web.query import query_params

from .bodies import (
    Confirm,
    NewApiKey,
    NewMember,
    NewOrg,
    NewProject,
    NewToken,
    NewWorkspace,
    OrgChange,
    ProjectChange,
    WorkspaceChange,
)
from .routes import ADMIN_PREFIX, ROUTES, AdminRoute
from .services import (
    AdminServices,
    api_key_json,
    member_json,
    org_json,
    project_json,
    workspace_json,
)

__all__ = ["AdminApi", "AdminMount", "create_admin_app", "mount_admin"]

log = logging.getLogger("domicile.admin")

MAX_JSON = 1024 * 1024
_BEARER = re.compile(r"Bearer ([\x21-\x7e]{1,512})")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


def json_response(request: Request, value: object, status: int = 200) -> Response:
    return Response(dump_json(value), status, media_type="application/json", headers={
        "x-request-id": request.state.request_id, "cache-control": "no-store"})


def _listing(request: Request, items: list[dict[str, Any]]) -> Response:
    return json_response(request, {"object": "list", "data": items})


class AdminApi:
    """The handlers, over one site's services, served at one region's address."""

    def __init__(self, services: AdminServices) -> None:
        self.services = services
        self.directory = services.directory
        self._openapi: bytes | None = None

    @staticmethod
    async def _run(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(function, *args, **kwargs)

    # -- what every handler shares -------------------------------------------------------------

    async def authenticate(self, request: Request) -> AdminGrant:
        """The caller's admin key, before the body is read; 401 otherwise."""
        found = _BEARER.fullmatch(request.headers.get("authorization", ""))
        grant = (await self._run(self.services.admin_keys.authenticate, found.group(1))
                 if found else None)
        if grant is None:
            raise InvalidApiKey("An admin key (`Authorization: Bearer da-…`, made with "
                                "`domicile admin-key create`) is missing, unknown or revoked.",
                                headers=((b"www-authenticate", b'Bearer realm="admin"'),))
        return grant

    async def body(self, request: Request, model: type[M]) -> M:
        """The body as `model`: bounded, strict JSON, unknown fields refused. A `region` in a
        change of a project or workspace is refused as such (G1), before anything else."""
        route: AdminRoute = request.state.route
        data = await read_bounded(request, MAX_JSON)
        parsed: dict[str, Any] = ({} if route.body_optional and not data.strip()
                                  else parse_json_object(data))
        if route.immutable_region is not None and "region" in parsed:
            await self._refuse_region_change(route.immutable_region, request)
        try:
            return model.model_validate(parsed)
        except ValidationError as exc:
            raise validation_error(exc) from None

    async def _refuse_region_change(self, kind: str, request: Request) -> None:
        tenant_id = request.path_params[f"{kind}_id"]
        getter = (self.directory.get_project if kind == "project"
                  else self.directory.get_workspace)
        await self._run(getter, tenant_id)  # an unknown one is a 404 first
        self.directory.refuse_region_change(kind, tenant_id)

    def _query(self, request: Request) -> dict[str, str]:
        route: AdminRoute = request.state.route
        return query_params(request.scope.get("query_string", b""),
                            [param.name for param in route.query])

    async def openapi(self, request: Request) -> Response:
        from .openapi import openapi_document  # made once, on first ask

        if self._openapi is None:
            self._openapi = dump_json(openapi_document())
        return Response(self._openapi, media_type="application/json",
                        headers={"x-request-id": request.state.request_id})

    # -- orgs -----------------------------------------------------------------------------------

    async def list_orgs(self, request: Request) -> Response:
        orgs = await self._run(self.directory.list_orgs)
        return _listing(request, [org_json(org) for org in orgs])

    async def create_org(self, request: Request) -> Response:
        body = await self.body(request, NewOrg)
        org = await self._run(self.directory.create_org, body.name,
                              training_opt_in=body.training_opt_in, actor=_actor(request))
        return json_response(request, org_json(org), 201)

    async def get_org(self, request: Request) -> Response:
        org = await self._run(self.directory.get_org, request.path_params["org_id"])
        return json_response(request, org_json(org))

    async def change_org(self, request: Request) -> Response:
        body = await self.body(request, OrgChange)
        org = await self._run(self.directory.set_training_opt_in, request.path_params["org_id"],
                              body.training_opt_in, actor=_actor(request))
        return json_response(request, org_json(org))

    async def residency_report(self, request: Request) -> Response:
        form = self._query(request).get("format", "json")
        if form not in ("json", "markdown"):
            raise InvalidInput("`format` is json or markdown.", param="format")
        report = await self._run(self.services.residency_report,
                                 request.path_params["org_id"], form == "markdown")
        if isinstance(report, str):
            return Response(report, media_type="text/markdown", headers={
                "x-request-id": request.state.request_id, "cache-control": "no-store"})
        return json_response(request, report)

    async def export_org(self, request: Request) -> Response:
        return await self._export(request, "org", request.path_params["org_id"])

    async def erase_org(self, request: Request) -> Response:
        return await self._erase(request, "org", request.path_params["org_id"])

    # -- projects and API keys ------------------------------------------------------------------

    async def list_projects(self, request: Request) -> Response:
        org_id = self._query(request).get("org_id")
        projects = await self._run(self.directory.list_projects, org_id)
        return _listing(request, [project_json(p) for p in projects])

    async def create_project(self, request: Request) -> Response:
        body = await self.body(request, NewProject)
        project = await self._run(
            self.directory.create_project, body.org_id, body.name, body.region,
            retention=body.retention, per_request_residency=body.per_request_residency,
            rpm_limit=body.rpm_limit, tpm_limit=body.tpm_limit, actor=_actor(request))
        return json_response(request, project_json(project), 201)

    async def get_project(self, request: Request) -> Response:
        project = await self._run(self.directory.get_project, request.path_params["project_id"])
        return json_response(request, project_json(project))

    async def change_project(self, request: Request) -> Response:
        body = await self.body(request, ProjectChange)
        project_id = request.path_params["project_id"]
        await self._run(self._change_project, project_id, body, _actor(request))
        project = await self._run(self.directory.get_project, project_id)
        return json_response(request, project_json(project))

    def _change_project(self, project_id: str, body: ProjectChange, actor: str) -> None:
        given = body.model_fields_set
        if body.name is not None:
            self.directory.rename("project", project_id, body.name, actor=actor)
        if given & {"rpm_limit", "tpm_limit"}:
            current = self.directory.get_project(project_id)
            self.directory.set_project_limits(
                project_id,
                rpm_limit=body.rpm_limit if "rpm_limit" in given else current.rpm_limit,
                tpm_limit=body.tpm_limit if "tpm_limit" in given else current.tpm_limit,
                actor=actor)

    async def project_usage(self, request: Request) -> Response:
        usage = await self._run(self.services.project_usage, request.path_params["project_id"])
        return json_response(request, usage)

    async def erase_project(self, request: Request) -> Response:
        return await self._erase(request, "project", request.path_params["project_id"])

    async def list_api_keys(self, request: Request) -> Response:
        keys = await self._run(self.directory.list_api_keys, request.path_params["project_id"])
        return _listing(request, [api_key_json(key) for key in keys])

    async def create_api_key(self, request: Request) -> Response:
        body = await self.body(request, NewApiKey)
        project_id = request.path_params["project_id"]
        created = await self._run(self.directory.create_api_key, project_id, name=body.name,
                                  actor=_actor(request))
        return json_response(request, {"id": created.id, "object": "api_key",
                                       "key": created.secret, "project_id": project_id,
                                       "region": created.region, "name": body.name}, 201)

    async def revoke_api_key(self, request: Request) -> Response:
        key = await self._run(self.directory.revoke_api_key, request.path_params["key_id"],
                              actor=_actor(request))
        return json_response(request, {**api_key_json(key), "revoked": True})

    # -- workspaces, members, tokens ------------------------------------------------------------

    async def list_workspaces(self, request: Request) -> Response:
        params = self._query(request)
        region, org_id = params.get("region"), params.get("org_id")
        found = await self._run(self.directory.list_workspaces, region)
        return _listing(request, [workspace_json(w) for w in found
                                  if org_id is None or w.org_id == org_id])

    async def create_workspace(self, request: Request) -> Response:
        body = await self.body(request, NewWorkspace)
        workspace = await self._run(self.directory.create_workspace, body.org_id, body.name,
                                    body.region, actor=_actor(request))
        return json_response(request, workspace_json(workspace), 201)

    async def get_workspace(self, request: Request) -> Response:
        workspace = await self._run(self.directory.get_workspace,
                                    request.path_params["workspace_id"])
        return json_response(request, workspace_json(workspace))

    async def change_workspace(self, request: Request) -> Response:
        body = await self.body(request, WorkspaceChange)
        workspace_id = request.path_params["workspace_id"]
        actor = _actor(request)
        if body.name is not None:
            await self._run(self.directory.rename, "workspace", workspace_id, body.name,
                            actor=actor)
        if "retention_days" in body.model_fields_set:
            await self._run(self.directory.set_retention, workspace_id, body.retention_days,
                            actor=actor)
        workspace = await self._run(self.directory.get_workspace, workspace_id)
        return json_response(request, workspace_json(workspace))

    async def list_members(self, request: Request) -> Response:
        workspace_id = request.path_params["workspace_id"]
        await self._run(self.directory.get_workspace, workspace_id)  # 404 for an unknown one
        users = await self._run(self.directory.list_members, workspace_id)
        return _listing(request, [member_json(user) for user in users])

    async def add_member(self, request: Request) -> Response:
        body = await self.body(request, NewMember)
        user = await self._run(self.directory.add_user, request.path_params["workspace_id"],
                               body.email, body.role, body.password, actor=_actor(request))
        return json_response(request, member_json(user), 201)

    async def create_token(self, request: Request) -> Response:
        body = await self.body(request, NewToken)
        expires = (datetime.now(UTC) + timedelta(days=body.expires_days)
                   if body.expires_days else None)
        created = await self._run(self.directory.create_token,
                                  request.path_params["workspace_id"], body.user_id,
                                  expires_at=expires, actor=_actor(request))
        return json_response(request, {
            "id": created.id, "object": "workspace_token", "token": created.secret,
            "region": created.region, "user_id": body.user_id,
            "expires_at": expires.isoformat() if expires else None}, 201)

    async def revoke_token(self, request: Request) -> Response:
        token_id = request.path_params["token_id"]
        await self._run(self.directory.revoke_token, token_id, actor=_actor(request))
        return json_response(request, {"id": token_id, "object": "workspace_token",
                                       "revoked": True})

    async def export_workspace(self, request: Request) -> Response:
        return await self._export(request, "workspace", request.path_params["workspace_id"])

    async def erase_workspace(self, request: Request) -> Response:
        return await self._erase(request, "workspace", request.path_params["workspace_id"])

    # -- export and erasure ---------------------------------------------------------------------

    async def _export(self, request: Request, scope: ErasureScope, scope_id: str) -> Response:
        exported = await self._run(self.services.export, scope, scope_id, _actor(request))
        return StreamingResponse(exported.chunks(), media_type="application/zip", headers={
            "content-length": str(exported.size), "cache-control": "no-store",
            "content-disposition": f'attachment; filename="{exported.filename}"',
            "x-request-id": request.state.request_id})

    async def _erase(self, request: Request, scope: ErasureScope, scope_id: str) -> Response:
        body = await self.body(request, Confirm)
        if body.confirm is not True:
            raise InvalidInput("An erasure cannot be undone: send `{\"confirm\": true}` to "
                               "erase.", param="confirm")
        report = await self._run(self.services.erase, scope, scope_id, _actor(request))
        return json_response(request, report)

    # -- the trust center -----------------------------------------------------------------------

    async def audit_verify(self, request: Request) -> Response:
        chain = self._query(request).get("chain")
        return json_response(request, await self._run(self.services.verify_chains, chain))

    async def audit_entries(self, request: Request) -> Response:
        since = parse_since(self._query(request).get("since"), name="`since`")
        lines = await self._run(self.services.audit_lines, request.path_params["chain"], since)
        return Response(b"".join(lines), media_type="application/jsonl", headers={
            "x-request-id": request.state.request_id, "cache-control": "no-store"})

    async def audit_head(self, request: Request) -> Response:
        receipt = await self._run(self.services.audit_head, request.path_params["chain"])
        return json_response(request, receipt)

    async def residency_verify(self, request: Request) -> Response:
        region = self._query(request).get("region")
        if region is not None and region not in self.services.settings.regions:
            raise NotFound(f"no region {region}", param="region")
        return json_response(request, await self._run(self.services.residency_verify, region))

    # -- the route table ------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        by_path: dict[str, dict[str, tuple[AdminRoute, Handler]]] = {}
        for route in ROUTES:
            by_path.setdefault(ADMIN_PREFIX + route.path, {})[route.method] = (
                route, getattr(self, route.handler))
        return [Route(path, self._dispatch(handlers), methods=list(handlers))
                for path, handlers in by_path.items()]

    def _dispatch(self, handlers: dict[str, tuple[AdminRoute, Handler]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            route, handler = handlers[request.method]
            request.state.route = route
            if not route.public:
                request.state.grant = await self.authenticate(request)
            return await handler(request)

        return endpoint


def _actor(request: Request) -> str:
    grant: AdminGrant = request.state.grant
    return grant.key_id


class _Guarded:
    """The outermost layer: a request id for every request, errors in the one shape, nothing
    a client sent in a log line."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own: nothing to start or stop
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        await guard(self.router, self, scope, receive, send, api="admin API", log=log)


def create_admin_app(site: Site, region: str) -> _Guarded:
    """The ASGI app of the admin API, served at `region`'s address (for the whole
    directory)."""
    api = AdminApi(AdminServices(site, region))
    return _Guarded(Router(routes=api.routes()))


def _is_admin(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


class AdminMount:
    """`/admin/…` to the admin app, everything else (and the lifespan) to `app`."""

    def __init__(self, admin: Any, app: Any) -> None:
        self.admin = admin
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_admin(scope["path"]):
            await self.admin(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def mount_admin(site: Site, region: str, app: Any) -> AdminMount:
    """`app` (the region's gateway) with the admin API in front of it at `/admin/`."""
    return AdminMount(create_admin_app(site, region), app)

