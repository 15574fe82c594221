"""The workspace's web pages: server-rendered HTML (Jinja2, autoescaped) over the JSON API.

The pages are shells: who is signed in, their workspace and where its data lives come from
the server; conversations, GPTs, tokens and members are drawn by `static/app.js` from the JSON
API. Signing in and out are plain forms (they work without JavaScript). Every page carries a
strict content security policy (no inline script or style: the assets are files of this
origin, named with their digest and checked by the browser with `integrity`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from domicile.errors import (
    CsrfFailed,
    DomicileError,
    InvalidApiKey,
    InvalidCredentials,
    InvalidInput,
    LoginThrottled,
    NotFound,
    WrongRegion,
)
from domicile.tenancy.grants import ROLES, MemberGrant
from domicile.web.guard import read_bounded
from domicile.workspace.rendering import pygments_css

from .auth import WorkspaceAuth
from .services import WorkspaceServices, profile

__all__ = ["CONTENT_SECURITY_POLICY", "MAX_FORM", "StaticAsset", "WorkspacePages",
           "load_assets"]

MAX_FORM = 16 * 1024
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'")
LOGIN_PATH = "/workspace/login"
HOME_PATH = "/workspace/"
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_WRONG_LOGIN = "Wrong email or password."

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class StaticAsset:
    """One static file, held in memory with what its URL and `integrity` attribute need."""

    name: str
    body: bytes
    media_type: str
    version: str  # the first 16 hex digits of its SHA-256: the URL's `?v=`
    integrity: str  # `sha384-…` for Subresource Integrity

    @property
    def url(self) -> str:
        return f"/workspace/static/{self.name}?v={self.version}"


def _asset(name: str, body: bytes) -> StaticAsset:
    suffix = name[name.rfind("."):] if "." in name else ""
    digest = base64.b64encode(hashlib.sha384(body).digest()).decode("ascii")
    return StaticAsset(name, body, _MEDIA_TYPES.get(suffix, "application/octet-stream"),
                       hashlib.sha256(body).hexdigest()[:16], f"sha384-{digest}")


def load_assets() -> dict[str, StaticAsset]:
    """The package's static files, and the code-highlighting stylesheet made from Pygments,
    read once (at start): their digests never change while the server runs."""
    folder = resources.files("domicile.workspace_web") / "static"
    assets = {entry.name: _asset(entry.name, entry.read_bytes())
              for entry in folder.iterdir() if entry.is_file()
              and not entry.name.startswith(".")}
    assets["highlight.css"] = _asset("highlight.css", pygments_css().encode())
    return assets


def _page_headers(secure: bool) -> dict[str, str]:
    headers = {
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-frame-options": "DENY",
        # Not `no-referrer`: under it a browser sends `Origin: null` with the page's own form
        # posts and fetches, which the Origin check (CSRF) must refuse. `same-origin` still
        # tells no other site anything.
        "referrer-policy": "same-origin",
        "x-content-type-options": "nosniff",
        "cache-control": "no-store",
    }
    if secure:
        headers["strict-transport-security"] = "max-age=63072000; includeSubDomains"
    return headers


class WorkspacePages:
    """The HTML pages and static files of one region's workspace."""

    def __init__(self, services: WorkspaceServices, auth: WorkspaceAuth, *,
                 secure: bool = False) -> None:
        self.services = services
        self.region = services.region
        self.auth = auth
        self.secure = secure
        self.assets = load_assets()
        self._headers = _page_headers(secure)
        self._templates = Environment(
            loader=PackageLoader("domicile.workspace_web", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True, lstrip_blocks=True)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/workspace", self._to_home, methods=["GET"]),
            Route(LOGIN_PATH, self.login_form, methods=["GET"]),
            Route(LOGIN_PATH, self.login, methods=["POST"]),
            Route("/workspace/logout", self.logout, methods=["POST"]),
            Route(HOME_PATH, self._signed_in(self.chat), methods=["GET"]),
            Route("/workspace/c/{conversation_id}", self._signed_in(self.chat),
                  methods=["GET"]),
            Route("/workspace/gpts", self._signed_in(self.gpts), methods=["GET"]),
            Route("/workspace/gpts/new", self._signed_in(self.gpt_form), methods=["GET"]),
            Route("/workspace/gpts/{gpt_id}/edit", self._signed_in(self.gpt_form),
                  methods=["GET"]),
            Route("/workspace/settings", self._signed_in(self.settings), methods=["GET"]),
            Route("/workspace/admin", self._signed_in(self.admin), methods=["GET"]),
            Route("/workspace/static/{name}", self.static, methods=["GET", "HEAD"]),
        ]

    # -- rendering -------------------------------------------------------------------------------

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        page = self._templates.get_template(template).render(
            assets=self.assets, region=self.region, **context)
        return Response(page, status, headers=self._headers, media_type="text/html")

    def _redirect(self, url: str) -> Response:
        return RedirectResponse(url, 303, headers=self._headers)

    def _problem(self, error: DomicileError) -> Response:
        titles = {401: "Not signed in", 403: "Not allowed here", 404: "Not found"}
        return self.render("problem.html", error.status,
                           title=titles.get(error.status, "Something went wrong"),
                           message=error.message)

    async def _to_home(self, request: Request) -> Response:
        return self._redirect(HOME_PATH)

    def _signed_in(self, page: Callable[[Request, dict[str, Any]], Awaitable[Response]]
                   ) -> Handler:
        """The page for a signed-in member; a visitor is sent to sign in, a session of
        another region is told which address to use."""
        async def handler(request: Request) -> Response:
            try:
                member = await self.auth.member(request)
            except WrongRegion as error:
                return self._problem(error)
            except InvalidApiKey:
                return self._redirect(LOGIN_PATH)
            try:
                return await page(request, await self._context(request, member))
            except DomicileError as error:
                return self._problem(error)
        return handler

    async def _context(self, request: Request, member: MemberGrant) -> dict[str, Any]:
        me = await asyncio.to_thread(profile, self.services, member)
        return {
            "grant": member,
            "member": {"id": member.user_id, "role": member.role, "is_admin": member.is_admin,
                       "email": me["email"]},
            "workspace": me["workspace"],
            # For the sign-out form; the cookie is checked against the session on sign-out.
            "csrf_token": request.cookies.get(self.auth.csrf_cookie_name, ""),
        }

    # -- the pages -------------------------------------------------------------------------------

    async def chat(self, request: Request, context: dict[str, Any]) -> Response:
        member: MemberGrant = context["grant"]
        gpts = await asyncio.to_thread(self.services.gpts.list, member)
        return self.render("chat.html", page="chat",
                           conversation_id=request.path_params.get("conversation_id", ""),
                           selected_gpt=request.query_params.get("gpt", "")[:40],
                           models=self._models(), gpts=[g.to_json() for g in gpts], **context)

    async def gpts(self, request: Request, context: dict[str, Any]) -> Response:
        found = await asyncio.to_thread(self.services.gpts.list, context["grant"])
        return self.render("gpts.html", page="gpts", gpts=[g.to_json() for g in found],
                           **context)

    async def gpt_form(self, request: Request, context: dict[str, Any]) -> Response:
        gpt_id = request.path_params.get("gpt_id")
        gpt = None
        if gpt_id is not None:
            gpt = (await asyncio.to_thread(self.services.gpts.get, context["grant"],
                                           gpt_id)).to_json()
        return self.render("gpt_form.html", page="gpt-form", gpt=gpt, models=self._models(),
                           **context)

    async def settings(self, request: Request, context: dict[str, Any]) -> Response:
        member: MemberGrant = context["grant"]
        tokens = await asyncio.to_thread(self.services.directory.list_tokens,
                                         member.workspace_id, member.user_id)
        return self.render("settings.html", page="settings", tokens=[{
            "id": token.id, "revoked": token.revoked_at is not None,
            "expires_at": token.expires_at.date().isoformat() if token.expires_at else None,
        } for token in tokens], **context)

    async def admin(self, request: Request, context: dict[str, Any]) -> Response:
        member: MemberGrant = context["grant"]
        if not member.is_admin:
            return self.render("problem.html", 403, title="Not allowed here",
                               message="Only the workspace's owners and admins may see this "
                                       "page.", **context)
        users = await asyncio.to_thread(self.services.directory.list_members,
                                        member.workspace_id)
        residency = await asyncio.to_thread(self.services.residency, member.workspace_id)
        return self.render("admin.html", page="admin", users=users, roles=ROLES,
                           residency=residency, **context)

    def _models(self) -> list[dict[str, Any]]:
        return [model for model in self.services.chat.chat_models()
                if "chat" in model["capabilities"]]

    # -- signing in and out ----------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        # `?workspace=ws_…` (the link an org hands its people): its SSO button, if it has one.
        workspace_id = request.query_params.get("workspace", "").strip()[:40]
        return self.render("login.html", page="login", error=None, email="",
                           workspace_id=workspace_id,
                           sso_workspace=await self._sso_workspace(workspace_id))

    async def _sso_workspace(self, workspace_id: str) -> str | None:
        """`workspace_id` when it is a workspace of this region with single sign-on."""
        if not workspace_id:
            return None
        try:
            config = await asyncio.to_thread(self.services.sso.get, workspace_id)
        except NotFound:
            return None
        return workspace_id if config is not None and config.region == self.region else None

    async def login(self, request: Request) -> Response:
        try:
            self.auth.check_origin(request)
            form = await _read_form(request)
        except DomicileError as error:
            return self._problem(error)
        email = form.get("email", "")
        workspace_id = form.get("workspace_id", "").strip() or None
        address = request.client.host if request.client else "unknown"
        try:
            _member, session = await asyncio.to_thread(
                self.services.accounts.login, self.region, email, form.get("password", ""),
                workspace_id=workspace_id, address=address,
                replacing=self.auth.session_secret(request))
        except InvalidCredentials:
            return self._login_error(_WRONG_LOGIN, 401, email, workspace_id)
        except LoginThrottled as error:
            seconds = _retry_after(error)
            return self._login_error(f"Too many attempts. Try again in {seconds} seconds.",
                                     429, email, workspace_id,
                                     headers={"retry-after": str(seconds)})
        except InvalidInput as error:  # several workspaces share this email: pick one
            return self._login_error(error.message, error.status, email, workspace_id)
        response = self._redirect(HOME_PATH)
        for cookie in self.auth.session_cookies(session, self.secure):
            response.headers.append("set-cookie", cookie)
        return response

    def _login_error(self, message: str, status: int, email: str, workspace_id: str | None,
                     *, headers: dict[str, str] | None = None) -> Response:
        response = self.render("login.html", status, page="login", error=message,
                               email=email[:320], workspace_id=(workspace_id or "")[:40])
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    async def logout(self, request: Request) -> Response:
        """Sign out: the form's hidden `csrf_token` must be the session's (a page of another
        site cannot sign a member out)."""
        try:
            self.auth.check_origin(request)
            form = await _read_form(request)
        except DomicileError as error:
            return self._problem(error)
        secret = self.auth.session_secret(request)
        found = (await asyncio.to_thread(self.services.accounts.session_member, self.region,
                                         secret) if secret else None)
        if found is not None:
            _grant, row = found
            if not self.services.accounts.check_csrf(self.region, row,
                                                     form.get("csrf_token")):
                return self._problem(CsrfFailed(
                    "The sign-out form is out of date. Reload the page and try again."))
            assert secret is not None
            await asyncio.to_thread(self.services.accounts.logout, self.region, secret)
        response = self._redirect(LOGIN_PATH)
        for cookie in self.auth.clear_cookies(self.secure):
            response.headers.append("set-cookie", cookie)
        return response

    # -- static files ----------------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            return self._problem(NotFound("No such file."))
        return Response(asset.body, media_type=asset.media_type, headers={
            "cache-control": "public, max-age=31536000, immutable",
            "x-content-type-options": "nosniff",
            "cross-origin-resource-policy": "same-origin",
        })


async def _read_form(request: Request) -> dict[str, str]:
    """A form-encoded body of at most `MAX_FORM` bytes: the first value of each field."""
    data = await read_bounded(request, MAX_FORM, "form")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("The form is not UTF-8.") from None
    try:
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=20)
    except ValueError:  # more fields than any of our forms has
        raise InvalidInput("The form has too many fields.") from None
    return {name: values[0] for name, values in fields.items() if values}


def _retry_after(error: DomicileError) -> int:
    for name, value in error.headers:
        if name.lower() == b"retry-after" and value.isdigit():
            return max(1, int(value))
    return 60
