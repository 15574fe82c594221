"""The workspace's JSON API under `/workspace/api/`: a thin Starlette front door.

Every handler does the same three things: find the member (`WorkspaceAuth.member`, before a
byte of the body is read: G3, CSRF), read and check the body (the one strict JSON parse of
`domicile.web`, then a pydantic model that forbids unknown fields), and call a service. Rules
live in the services (`domicile.workspace`, `domicile.tenancy`); errors are `DomicileError`s,
rendered once, here, in OpenAI's shape with the request id. Nothing a client sent is ever
logged: an unexpected error is logged by its type, the request id and the route template.

Mounted by the region's gateway app (everything outside `/v1`), so the workspace and the API
share one router, one set of provider connections, one error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from domicile.errors import (
    BodyTooLarge,
    Forbidden,
    InvalidInput,
    NotFound,
)
from domicile.tenancy.grants import MemberGrant
from domicile.web.asgi import Receive, Scope, Send, mark_retrieved, until_disconnect
from domicile.web.guard import (
    answerable,
    guard,
    read_bounded,
    validation_error,
)
from domicile.web.jsonbody import dump_json, parse_json_object
from domicile.web.multipart import MultipartReader, boundary_of
from domicile.workspace.chat import ChatRequest, Turn
from domicile.workspace.conversations import Conversation
from domicile.workspace.files import WorkspaceFile

from .auth import WorkspaceAuth
from .services import WorkspaceServices, profile

__all__ = ["API_PREFIX", "ROUTES", "ApiRoute", "WorkspaceApi", "create_workspace_app"]

log = logging.getLogger("domicile.workspace")

API_PREFIX = "/workspace/api"
MAX_JSON = 4 * 1024 * 1024
API_NAME = "workspace API"  # in "Invalid URL: no such workspace API route."
# ASCII digits only: `str.isdigit` also takes "²", which `int` then refuses.
_DIGITS = re.compile(r"[0-9]{1,12}")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# -- request bodies -------------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LoginBody(_Body):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    workspace_id: str | None = Field(default=None, max_length=40)


class NewConversation(_Body):
    title: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, max_length=200)
    gpt_id: str | None = Field(default=None, max_length=40)


class ConversationChange(_Body):
    title: str = Field(min_length=1, max_length=200)


class NewMessage(_Body):
    content: str = Field(max_length=200_000)
    model: str | None = Field(default=None, max_length=200)
    gpt_id: str | None = Field(default=None, max_length=40)
    file_ids: list[str] = Field(default_factory=list, max_length=10)
    parent_id: str | None = Field(default=None, max_length=40)
    edit: bool = False
    image: bool = False
    stream: bool = False


class Regenerate(_Body):
    message_id: str | None = Field(default=None, max_length=40)
    model: str | None = Field(default=None, max_length=200)
    stream: bool = False


class SelectBranch(_Body):
    message_id: str = Field(max_length=40)


class NewGpt(_Body):
    name: str
    instructions: str
    model: str
    description: str = ""
    file_ids: list[str] = Field(default_factory=list, max_length=20)
    conversation_starters: list[str] = Field(default_factory=list)
    sharing: str = "private"


class GptChange(_Body):
    name: str | None = None
    instructions: str | None = None
    model: str | None = None
    description: str | None = None
    file_ids: list[str] | None = Field(default=None, max_length=20)
    conversation_starters: list[str] | None = None
    sharing: str | None = None


class NewToken(_Body):
    expires_days: int | None = Field(default=None, ge=1, le=3650)


class NewMember(_Body):
    email: str = Field(max_length=320)
    role: str
    password: str = Field(max_length=1024)


class MemberChange(_Body):
    role: str


class WorkspaceChange(_Body):
    retention_days: int | None = Field(ge=1, le=36_500)


# -- helpers --------------------------------------------------------------------------------

def json_response(value: object, status: int = 200, request: Request | None = None) -> Response:
    response = Response(dump_json(value), status, media_type="application/json")
    if request is not None:
        response.headers["x-request-id"] = request.state.request_id
        response.headers["cache-control"] = "no-store"
    return response


async def read_body(request: Request, model: type[M], *, optional: bool = False) -> M:
    """The body as `model`: bounded, strict JSON, unknown fields refused."""
    data = await read_bounded(request, MAX_JSON)
    if optional and not data.strip():
        parsed: dict[str, Any] = {}
    else:
        parsed = parse_json_object(data)
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        raise validation_error(exc) from None


class WorkspaceApi:
    """The handlers, over one region's services."""

    def __init__(self, services: WorkspaceServices, *, secure: bool = False) -> None:
        self.services = services
        self.region = services.region
        self.secure = secure
        self.auth = WorkspaceAuth(services.settings, services.region, services.accounts,
                                  services.directory)
        self._openapi: bytes | None = None

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(function, *args, **kwargs)

    async def openapi(self, request: Request) -> Response:
        from .openapi import openapi_document  # made once, on first ask

        if self._openapi is None:
            self._openapi = dump_json(openapi_document())
        return Response(self._openapi, media_type="application/json")

    # -- accounts ----------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        self.auth.check_origin(request)  # no sign-in from another site's page
        body = await read_body(request, LoginBody)
        address = request.client.host if request.client else "unknown"
        # The session id changes at sign-in: any session this browser had ends here.
        member, session = await self._run(
            self.services.accounts.login, self.region, body.email, body.password,
            workspace_id=body.workspace_id, address=address,
            replacing=self.auth.session_secret(request))
        response = json_response({"member": await self._me(member),
                                  "csrf_token": session.csrf}, request=request)
        for cookie in self.auth.session_cookies(session, self.secure):
            response.headers.append("set-cookie", cookie)
        return response

    async def logout(self, request: Request) -> Response:
        member = await self.auth.member(request)
        secret = request.cookies.get(self.auth.cookie_name)
        if member.session is not None and secret:
            await self._run(self.services.accounts.logout, self.region, secret)
        response = json_response({"signed_out": True}, request=request)
        for cookie in self.auth.clear_cookies(self.secure):
            response.headers.append("set-cookie", cookie)
        return response

    async def end_other_sessions(self, request: Request) -> Response:
        member = await self.auth.member(request)
        ended = await self._run(self.services.sessions.delete_others, member,
                                member.session or "")
        return json_response({"ended": ended}, request=request)

    async def me(self, request: Request) -> Response:
        member = await self.auth.member(request)
        return json_response(await self._me(member), request=request)

    async def _me(self, member: MemberGrant) -> dict[str, Any]:
        return await self._run(profile, self.services, member)

    async def models(self, request: Request) -> Response:
        await self.auth.member(request)
        return json_response({"object": "list", "data": self.services.chat.chat_models()},
                             request=request)

    async def list_tokens(self, request: Request) -> Response:
        member = await self.auth.member(request)
        tokens = await self._run(self.services.directory.list_tokens, member.workspace_id,
                                 member.user_id)
        return json_response({"object": "list", "data": [_token_json(t) for t in tokens]},
                             request=request)

    async def create_token(self, request: Request) -> Response:
        member = await self.auth.member(request)
        body = await read_body(request, NewToken, optional=True)
        expires = (datetime.now(UTC) + timedelta(days=body.expires_days)
                   if body.expires_days else None)
        created = await self._run(self.services.directory.create_token, member.workspace_id,
                                  member.user_id, expires_at=expires, actor=member.user_id)
        return json_response({"id": created.id, "object": "workspace.token",
                              "token": created.secret,
                              "expires_at": int(expires.timestamp()) if expires else None},
                             201, request=request)

    async def revoke_token(self, request: Request) -> Response:
        member = await self.auth.member(request)
        token_id = request.path_params["token_id"]
        tokens = await self._run(self.services.directory.list_tokens, member.workspace_id,
                                 member.user_id)
        if not any(t.id == token_id for t in tokens):
            raise NotFound(f"No token {token_id}.", param="token_id")
        await self._run(self.services.directory.revoke_token, token_id, actor=member.user_id)
        return json_response({"id": token_id, "deleted": True}, request=request)

    # -- members and the workspace's settings (admins) --------------------------------------------

    async def _admin(self, request: Request) -> MemberGrant:
        member = await self.auth.member(request)
        if not member.is_admin:
            raise Forbidden("Only the workspace's owners and admins may do this.")
        return member

    async def list_members(self, request: Request) -> Response:
        member = await self._admin(request)
        users = await self._run(self.services.directory.list_members, member.workspace_id)
        return json_response({"object": "list", "data": [_member_json(u) for u in users]},
                             request=request)

    async def add_member(self, request: Request) -> Response:
        member = await self._admin(request)
        body = await read_body(request, NewMember)
        if body.role == "owner" and member.role != "owner":
            raise Forbidden("Only an owner may add another owner.")
        user = await self._run(self.services.directory.add_user, member.workspace_id,
                               body.email, body.role, body.password, actor=member.user_id)
        return json_response(_member_json(user), 201, request=request)

    async def change_member(self, request: Request) -> Response:
        member = await self._admin(request)
        body = await read_body(request, MemberChange)
        user_id = request.path_params["user_id"]
        # Accounts decides who may change whom (an admin cannot make, demote or remove owners).
        await self._run(self.services.accounts.change_role, member, user_id, body.role)
        return json_response({"id": user_id, "role": body.role}, request=request)

    async def remove_member(self, request: Request) -> Response:
        member = await self._admin(request)
        user_id = request.path_params["user_id"]
        await self._run(self.services.accounts.remove_member, member, user_id)
        return json_response({"id": user_id, "deleted": True}, request=request)

    async def usage(self, request: Request) -> Response:
        member = await self._admin(request)
        totals = await self._run(self.services.store.usage_totals, member.workspace_id)
        users = await self._run(self.services.directory.list_members, member.workspace_id)
        # A removed member's usage stays in the store; the list shows the members there are.
        return json_response({"object": "list", "data": [
            {"user_id": user.id, "email": user.email, "messages": replies,
             "prompt_tokens": prompt, "completion_tokens": completion}
            for user in users
            for replies, prompt, completion in [totals.get(user.id, (0, 0, 0))]]},
            request=request)

    async def change_workspace(self, request: Request) -> Response:
        member = await self._admin(request)
        body = await read_body(request, WorkspaceChange)
        await self._run(self.services.directory.set_retention, member.workspace_id,
                        body.retention_days, actor=member.user_id)
        return json_response((await self._me(member))["workspace"], request=request)

    # -- conversations ---------------------------------------------------------------------------

    async def list_conversations(self, request: Request) -> Response:
        member = await self.auth.member(request)
        params = request.query_params
        limit = _limit(params.get("limit"), 50, 100)
        found, cursor = await self._run(
            self.services.conversations.list, member, limit=limit, cursor=params.get("cursor"),
            query=params.get("q") or None)
        return json_response({"object": "list", "data": [c.to_json() for c in found],
                              "next_cursor": cursor, "has_more": cursor is not None},
                             request=request)

    async def create_conversation(self, request: Request) -> Response:
        member = await self.auth.member(request)
        body = await read_body(request, NewConversation, optional=True)
        if body.model is not None:
            self.services.chat.router.route(body.model, "chat")  # 404 unless offered here
        if body.gpt_id is not None:
            await self._run(self.services.gpts.get, member, body.gpt_id)
        created = await self._run(self.services.conversations.create, member,
                                  title=body.title or "", model=body.model, gpt_id=body.gpt_id)
        return json_response(created.to_json(), 201, request=request)

    async def get_conversation(self, request: Request) -> Response:
        member = await self.auth.member(request)
        found = await self._run(self._read_conversation, member,
                                request.path_params["conversation_id"])
        return json_response(found.to_json(), request=request)

    def _read_conversation(self, member: MemberGrant, conversation_id: str) -> Conversation:
        """The conversation, its reading audited (G8; ids only). No audit entry, no content."""
        found = self.services.conversations.get(member, conversation_id)
        self.services.store.audit.content_read(member.user_id, "conversation", found.summary.id)
        return found

    async def rename_conversation(self, request: Request) -> Response:
        member = await self.auth.member(request)
        body = await read_body(request, ConversationChange)
        renamed = await self._run(self.services.conversations.rename, member,
                                  request.path_params["conversation_id"], body.title)
        return json_response(renamed.to_json(), request=request)

    async def delete_conversation(self, request: Request) -> Response:
        member = await self.auth.member(request)
        conversation_id = request.path_params["conversation_id"]
        await self._run(self.services.conversations.delete, member, conversation_id)
        return json_response({"id": conversation_id, "object": "workspace.conversation",
                              "deleted": True}, request=request)

    async def select_branch(self, request: Request) -> Response:
        member = await self.auth.member(request)
        body = await read_body(request, SelectBranch)
        found = await self._run(self.services.conversations.select, member,
                                request.path_params["conversation_id"], body.message_id)
        return json_response(found.to_json(), request=request)

    async def send_message(self, request: Request) -> Response | ReplyStream:
        member = await self.auth.member(request)
        body = await read_body(request, NewMessage)
        turn = await self.services.chat.send(
            member, request.path_params["conversation_id"], ChatRequest(
                content=body.content, model=body.model, gpt_id=body.gpt_id,
                file_ids=tuple(body.file_ids), parent_id=body.parent_id, edit=body.edit,
                image=body.image))
        return await self._reply(request, turn, body.stream)

    async def regenerate(self, request: Request) -> Response | ReplyStream:
        member = await self.auth.member(request)
        body = await read_body(request, Regenerate, optional=True)
        turn = await self.services.chat.regenerate(
            member, request.path_params["conversation_id"], body.message_id, body.model)
        return await self._reply(request, turn, body.stream)

    async def _reply(self, request: Request, turn: Turn, stream: bool) -> Response | ReplyStream:
        if stream:
            return ReplyStream(turn, request.state.request_id)
        try:
            async for _ in turn.deltas():
                pass
        finally:
            message = await asyncio.shield(turn.finish())
        return json_response(message.to_json(), request=request)

    # -- files -----------------------------------------------------------------------------------

    async def upload_file(self, request: Request) -> Response:
        member = await self.auth.member(request)
        limits = self.services.settings.workspace
        limit = max(limits.max_file_bytes, limits.max_image_bytes)
        boundary = boundary_of(request.headers.get("content-type", "").encode("latin-1"))
        declared = request.headers.get("content-length")
        # The multipart framing around a file is small: allow it, refuse a body clearly larger.
        if (declared is not None and _DIGITS.fullmatch(declared)
                and int(declared) > limit + 64 * 1024):
            raise BodyTooLarge(f"The file is larger than {limit} bytes, the most this "
                               "workspace accepts.", param="file")
        reader = MultipartReader(request.receive, boundary, limit=limit + 64 * 1024)
        name: str | None = None
        data: bytes | None = None
        while (part := await reader.next_part()) is not None:
            if part.name != "file":
                continue
            if data is not None:
                raise InvalidInput("Upload one file per request.", param="file")
            name = part.filename or "upload"
            received = bytearray()
            async for chunk in reader.chunks():
                received += chunk
                if len(received) > limit:
                    raise BodyTooLarge(f"The file is larger than {limit} bytes, the most this "
                                       "workspace accepts.", param="file")
            data = bytes(received)
        if data is None or name is None:
            raise InvalidInput("The upload has no `file` part.", param="file")
        stored = await self._run(self.services.files.add, member, name, data)
        return json_response(stored.to_json(), 201, request=request)

    async def list_files(self, request: Request) -> Response:
        member = await self.auth.member(request)
        params = request.query_params
        found = await self._run(self.services.files.list, member,
                                limit=_limit(params.get("limit"), 100, 1000),
                                after=params.get("after"))
        return json_response({"object": "list", "data": [f.to_json() for f in found]},
                             request=request)

    async def get_file(self, request: Request) -> Response:
        member = await self.auth.member(request)
        found = await self._run(self.services.files.get, member, request.path_params["file_id"])
        return json_response(found.to_json(), request=request)

    async def file_content(self, request: Request) -> Response:
        member = await self.auth.member(request)
        found, data = await self._run(self._read_file, member, request.path_params["file_id"])
        return Response(data, media_type=found.media_type, headers={
            "x-request-id": request.state.request_id,
            "cache-control": "private, no-store",
            "x-content-type-options": "nosniff",
            # Never rendered as a page of this origin: a file is data, not a document.
            "content-security-policy": "default-src 'none'; sandbox",
            "content-disposition": "inline" if found.is_image else "attachment",
        })

    def _read_file(self, member: MemberGrant, file_id: str) -> tuple[WorkspaceFile, bytes]:
        """The file and its bytes, their reading audited (G8; ids only). No audit entry, no
        content."""
        data = self.services.files.read(member, file_id)
        found = self.services.files.get(member, file_id)
        self.services.store.audit.content_read(member.user_id, "file", found.id)
        return found, data

    async def delete_file(self, request: Request) -> Response:
        member = await self.auth.member(request)
        file_id = request.path_params["file_id"]
        await self.services.library.delete_file(member, file_id)
        return json_response({"id": file_id, "object": "workspace.file", "deleted": True},
                             request=request)

    # -- GPTs --------------------------------------------------------------------------------------

    def _check_model(self, model: str | None) -> None:
        """A GPT's model must be offered here (404 `model_not_found`); its knowledge files are
        the GPT service's to check (the member's own, or already the GPT's)."""
        if model is not None:
            self.services.chat.router.route(model, "chat")

    async def create_gpt(self, request: Request) -> Response:
        member = await self.auth.member(request)
        body = await read_body(request, NewGpt)
        self._check_model(body.model)
        gpt = await self.services.library.create_gpt(
            member, name=body.name, instructions=body.instructions, model=body.model,
            description=body.description, file_ids=tuple(body.file_ids),
            starters=tuple(body.conversation_starters), sharing=body.sharing)
        return json_response(gpt.to_json(), 201, request=request)

    async def list_gpts(self, request: Request) -> Response:
        member = await self.auth.member(request)
        found = await self._run(self.services.gpts.list, member)
        return json_response({"object": "list", "data": [g.to_json() for g in found]},
                             request=request)

    async def get_gpt(self, request: Request) -> Response:
        member = await self.auth.member(request)
        found = await self._run(self.services.gpts.get, member, request.path_params["gpt_id"])
        return json_response(found.to_json(), request=request)

    async def update_gpt(self, request: Request) -> Response:
        member = await self.auth.member(request)
        body = await read_body(request, GptChange)
        self._check_model(body.model)
        changes = body.model_dump(exclude_unset=True)
        if "file_ids" in changes:
            changes["file_ids"] = tuple(changes["file_ids"] or ())
        if "conversation_starters" in changes:
            changes["starters"] = tuple(changes.pop("conversation_starters") or ())
        gpt = await self.services.library.update_gpt(member, request.path_params["gpt_id"],
                                                     **changes)
        return json_response(gpt.to_json(), request=request)

    async def delete_gpt(self, request: Request) -> Response:
        member = await self.auth.member(request)
        gpt_id = request.path_params["gpt_id"]
        await self.services.library.delete_gpt(member, gpt_id)
        return json_response({"id": gpt_id, "object": "workspace.gpt", "deleted": True},
                             request=request)

    # -- the route table -------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        by_path: dict[str, dict[str, Callable[[Request], Awaitable[Any]]]] = {}
        for route in ROUTES:
            by_path.setdefault(API_PREFIX + route.path, {})[route.method] = getattr(
                self, route.handler)
        return [Route(path, _dispatch(handlers), methods=list(handlers))
                for path, handlers in by_path.items()]


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One endpoint: what the router serves and what the OpenAPI document says (one source)."""

    method: str
    path: str  # below API_PREFIX
    handler: str  # the WorkspaceApi method
    summary: str
    body: type[BaseModel] | None = None
    status: int = 200
    body_optional: bool = False  # an empty body is `{}`
    streams: bool = False  # answers with Server-Sent Events when the body says `"stream": true`
    upload: bool = False  # multipart/form-data with one `file` part
    public: bool = False  # no credential needed
    admin: bool = False  # owners and admins only


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/openapi.json", "openapi", "This document.", public=True),
    ApiRoute("POST", "/login", "login", "Sign in: sets the session cookies, answers the "
             "member and the CSRF token.", LoginBody, public=True),
    ApiRoute("POST", "/logout", "logout", "Sign out this browser session."),
    ApiRoute("POST", "/sessions/end-others", "end_other_sessions",
             "Sign out every other session of this member."),
    ApiRoute("GET", "/me", "me", "The signed-in member and their workspace (region, "
             "retention)."),
    ApiRoute("GET", "/models", "models", "The models members can use in this region, with "
             "their capabilities."),
    ApiRoute("GET", "/tokens", "list_tokens", "The member's API tokens (never their secrets)."),
    ApiRoute("POST", "/tokens", "create_token", "A new `dw-` API token, shown once.", NewToken,
             201, body_optional=True),
    ApiRoute("DELETE", "/tokens/{token_id}", "revoke_token", "Revoke one of the member's "
             "tokens."),
    ApiRoute("GET", "/members", "list_members", "The workspace's members.", admin=True),
    ApiRoute("POST", "/members", "add_member", "Add a member.", NewMember, 201, admin=True),
    ApiRoute("PATCH", "/members/{user_id}", "change_member", "Change a member's role.",
             MemberChange, admin=True),
    ApiRoute("DELETE", "/members/{user_id}", "remove_member", "Remove a member (their tokens "
             "and sessions end).", admin=True),
    ApiRoute("GET", "/usage", "usage", "Replies per member with their token counts (no "
             "content).", admin=True),
    ApiRoute("PATCH", "/workspace", "change_workspace", "Set the workspace's retention.",
             WorkspaceChange, admin=True),
    ApiRoute("GET", "/conversations", "list_conversations", "The member's conversations, "
             "newest first (`limit`, `cursor`, `q` searches titles)."),
    ApiRoute("POST", "/conversations", "create_conversation", "Start a conversation.",
             NewConversation, 201, body_optional=True),
    ApiRoute("GET", "/conversations/{conversation_id}", "get_conversation",
             "A conversation with every message of every branch."),
    ApiRoute("PATCH", "/conversations/{conversation_id}", "rename_conversation",
             "Rename a conversation.", ConversationChange),
    ApiRoute("DELETE", "/conversations/{conversation_id}", "delete_conversation",
             "Delete a conversation and its messages."),
    ApiRoute("POST", "/conversations/{conversation_id}/messages", "send_message",
             "Send a message; answers the assistant's stored reply (SSE with `stream`).",
             NewMessage, streams=True),
    ApiRoute("POST", "/conversations/{conversation_id}/regenerate", "regenerate",
             "A new reply beside the earlier one (SSE with `stream`).", Regenerate,
             streams=True, body_optional=True),
    ApiRoute("POST", "/conversations/{conversation_id}/select", "select_branch",
             "Make a message's branch the current one.", SelectBranch),
    ApiRoute("GET", "/files", "list_files", "The member's files, newest first."),
    ApiRoute("POST", "/files", "upload_file", "Upload a file (text, Markdown, PDF, PNG, JPEG, "
             "WebP, GIF; checked by content).", status=201, upload=True),
    ApiRoute("GET", "/files/{file_id}", "get_file", "A file's description."),
    ApiRoute("DELETE", "/files/{file_id}", "delete_file", "Delete a file."),
    ApiRoute("GET", "/files/{file_id}/content", "file_content", "A file's bytes."),
    ApiRoute("GET", "/gpts", "list_gpts", "The GPTs the member can use (theirs and the "
             "workspace's)."),
    ApiRoute("POST", "/gpts", "create_gpt", "Create a custom GPT.", NewGpt, 201),
    ApiRoute("GET", "/gpts/{gpt_id}", "get_gpt", "A GPT."),
    ApiRoute("PATCH", "/gpts/{gpt_id}", "update_gpt", "Change a GPT (its owner or an admin).",
             GptChange),
    ApiRoute("DELETE", "/gpts/{gpt_id}", "delete_gpt", "Delete a GPT and its knowledge index."),
)


def _dispatch(handlers: dict[str, Callable[[Request], Awaitable[Any]]]
              ) -> Callable[[Request], Awaitable[Any]]:
    async def endpoint(request: Request) -> Any:
        return await handlers[request.method](request)

    return endpoint


class ReplyStream:
    """The assistant's reply as Server-Sent Events: `message.created` (the member's stored
    message), `reply.delta` events with the text as it comes, then `reply.completed` with the
    stored reply (status `complete` or `error`), each `data:` a JSON object with a `type`.

    A client that leaves mid-reply stops it: the provider's stream is closed, and what came is
    stored with status `stopped`."""

    def __init__(self, turn: Turn, request_id: str) -> None:
        self.turn = turn
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        turn = self.turn
        left = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no"),
                (b"x-request-id", self.request_id.encode()),
            ]})

            async def pump() -> None:
                assert turn.user_message is not None
                await _event(send, "message.created", {"message": turn.user_message.to_json()})
                async for delta in turn.deltas():
                    await _event(send, "reply.delta", {"delta": delta})

            work = asyncio.ensure_future(pump())
            watch = asyncio.ensure_future(until_disconnect(receive))
            watch.add_done_callback(mark_retrieved)
            try:
                await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not work.done():
                    left = True
                    work.cancel()
                    await asyncio.wait((work,))
                watch.cancel()
            mark_retrieved(work)
            if not left and work.exception() is not None:
                raise work.exception()  # type: ignore[misc]
        finally:
            # Whatever happened, the reply so far is kept: stopped when the client left.
            try:
                message = await asyncio.shield(turn.finish("stopped" if left else None))
            except Exception as exc:  # the conversation deleted meanwhile, the store down
                error = answerable(exc, self.request_id, scope, api=API_NAME, log=log)
                if not left:
                    await _event(send, "error", {"error": error.to_openai()["error"]})
                    await send({"type": "http.response.body", "body": b"",
                                "more_body": False})
                return
        if left:
            return
        payload: dict[str, Any] = {"message": message.to_json()}
        if turn.error is not None:
            payload["error"] = turn.error.to_openai()["error"]
        await _event(send, "reply.completed", payload)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _event(send: Send, kind: str, data: dict[str, Any]) -> None:
    body = b"event: " + kind.encode() + b"\ndata: " + dump_json({"type": kind, **data}) + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})


def _limit(raw: str | None, default: int, most: int) -> int:
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise InvalidInput(f"`limit` must be a whole number from 1 to {most}.", param="limit")
    return int(raw)


def _token_json(token: Any) -> dict[str, Any]:
    return {
        "id": token.id, "object": "workspace.token",
        "created_at": int(token.created_at.timestamp()),
        "expires_at": int(token.expires_at.timestamp()) if token.expires_at else None,
        "revoked": token.revoked_at is not None,
    }


def _member_json(user: Any) -> dict[str, Any]:
    return {"id": user.id, "object": "workspace.member", "email": user.email, "role": user.role,
            "created_at": int(user.created_at.timestamp())}


class _Guarded:
    """The outermost layer: a request id for every request, errors in the one shape, and
    nothing a client sent in a log line. Its lifespan runs the retention sweeper."""

    def __init__(self, router: Router, services: WorkspaceServices) -> None:
        self.router = router
        self.services = services
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        await guard(self.router, self, scope, receive, send, api=API_NAME, log=log)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._sweeper = asyncio.ensure_future(self._sweep_periodically())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._sweeper is not None:
                    self._sweeper.cancel()
                    with contextlib.suppress(BaseException):
                        await self._sweeper
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _sweep_periodically(self) -> None:
        """The retention sweep and expired sessions, every `retention_sweep_interval_s`."""
        interval = self.services.settings.workspace.retention_sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                result = await asyncio.to_thread(self.services.retention.sweep)
                await asyncio.to_thread(self.services.sessions.delete_expired)
            except Exception as exc:
                log.error("region %s: retention sweep failed (%s)", self.services.region,
                          type(exc).__name__)
            else:
                if result.conversations or result.files:
                    log.info("region %s: retention deleted %d conversations and %d files",
                             result.region, result.conversations, result.files)


def create_workspace_app(services: WorkspaceServices, *, secure: bool = False) -> _Guarded:
    """The ASGI app of the workspace of one region (mounted by the gateway app)."""
    from .pages import WorkspacePages  # the HTML pages and their static files
    from .sso import SsoPages  # single sign-on (OIDC)

    api = WorkspaceApi(services, secure=secure)
    pages = WorkspacePages(services, api.auth, secure=secure)
    sso = SsoPages(services, api.auth, pages.render, secure=secure)
    return _Guarded(Router(routes=[*api.routes(), *pages.routes(), *sso.routes()]), services)
