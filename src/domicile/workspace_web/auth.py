"""The workspace's door (G3): which member is calling, and may this region serve them?

Checked before any request body is read, in this order:

1. `Authorization: Bearer dw-<r>-…`: a token naming another configured region is refused
   (403 `wrong_region`, naming that region's URL) without a lookup; an unknown, revoked or
   expired token, or one of a removed member, is 401 `invalid_api_key`; a token of a
   workspace of another region is 403 `wrong_region`. Positive lookups are cached for 1 s
   (a revoked token stops working within a second), negative ones never.
2. Otherwise the session cookie `domicile_session_<region>`. Without it, another configured
   region's session cookie is 403 `wrong_region` naming that region's URL (regions on one
   host share cookies: the names keep them apart); none at all, or a session that is
   unknown or expired, is 401.
3. A cookie is sent by the browser on its own, so a cookie-authenticated unsafe request
   (POST, PUT, PATCH, DELETE) must carry the session's CSRF token in `x-csrf-token`, and its
   `Origin`, when sent, must be this region's public URL: else 403 `csrf_failed`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from starlette.requests import Request

from domicile.config import Settings
from domicile.errors import CsrfFailed, InvalidApiKey, WrongRegion
from domicile.tenancy.accounts import Accounts
from domicile.tenancy.cache import CredentialCache
from domicile.tenancy.directory import Directory
from domicile.tenancy.grants import MemberGrant, key_region
from domicile.tenancy.sessions import NewSession

__all__ = [
    "CSRF_HEADER",
    "UNSAFE_METHODS",
    "TokenCache",
    "WorkspaceAuth",
    "csrf_cookie_name",
    "session_cookie_name",
]

CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NOT_SIGNED_IN = ("You are not signed in. Sign in to the workspace, or send a workspace token "
                  "in an Authorization header (Authorization: Bearer dw-…).")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def session_cookie_name(region: str) -> str:
    return f"domicile_session_{region}"


def csrf_cookie_name(region: str) -> str:
    return f"domicile_csrf_{region}"


def _origin(url: str) -> str:
    """`scheme://host[:port]` as a browser sends it in `Origin` (default port left out)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return ""
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class TokenCache(CredentialCache[MemberGrant]):
    """Workspace-token grants, remembered for `ttl` seconds (see `CredentialCache`)."""

    def __init__(self, directory: Directory, *, ttl: float = 1.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(directory.authenticate_token, ttl=ttl, max_entries=max_entries,
                         clock=clock)


class WorkspaceAuth:
    """The three checks above, for the workspace API of one region."""

    def __init__(self, settings: Settings, region: str, accounts: Accounts,
                 directory: Directory, *, tokens: TokenCache | None = None) -> None:
        self._region = region
        self._accounts = accounts
        self._tokens = tokens or TokenCache(directory)
        self._urls = {name: r.public_url for name, r in settings.regions.items()}
        self._origin = _origin(settings.region(region).public_url)
        self.cookie_name = session_cookie_name(region)
        self.csrf_cookie_name = csrf_cookie_name(region)

    def __repr__(self) -> str:
        return f"WorkspaceAuth(region={self._region!r})"

    async def member(self, request: Request) -> MemberGrant:
        """The calling member, or the error to answer with. Reads headers only, no body."""
        authorization = request.headers.get("authorization")
        if authorization is not None:
            return await self._token_member(authorization)
        secret = request.cookies.get(self.cookie_name)
        if not secret:
            for name, url in self._urls.items():
                if name != self._region and request.cookies.get(session_cookie_name(name)):
                    raise WrongRegion(f"This session belongs to region {name}; use the "
                                      f"workspace at {url} instead. Region {self._region} "
                                      "does not process its data.")
            raise InvalidApiKey(_NOT_SIGNED_IN)
        found = await asyncio.to_thread(self._accounts.session_member, self._region, secret)
        if found is None:
            raise InvalidApiKey("Your session has ended or is not valid. Sign in again.")
        grant, row = found
        if request.method.upper() in UNSAFE_METHODS:
            self.check_origin(request)
            if not self._accounts.check_csrf(self._region, row, request.headers.get(CSRF_HEADER)):
                raise CsrfFailed(f"This request needs the session's CSRF token in the "
                                 f"{CSRF_HEADER} header (the {self.csrf_cookie_name} cookie).")
        return grant

    def check_origin(self, request: Request) -> None:
        """403 `csrf_failed` when the request says it comes from a page of another origin
        (also for sign-in, which has no session yet)."""
        origin = request.headers.get("origin")
        if origin is not None and _origin(origin) != self._origin:
            raise CsrfFailed(f"Requests with a session must come from {self._origin}; this "
                             "one came from another origin.")

    def session_secret(self, request: Request) -> str | None:
        """The session secret the browser sent to this region, if any (for sign-out)."""
        return request.cookies.get(self.cookie_name) or None

    def session_cookies(self, new: NewSession, secure: bool) -> list[str]:
        """`Set-Cookie` values for a new session: the secret, HttpOnly, and the CSRF token,
        which the page's script reads and sends back in `x-csrf-token`."""
        max_age = max(0, int((new.expires_at - datetime.now(UTC)).total_seconds()))
        tail = f"; Max-Age={max_age}" + ("; Secure" if secure else "")
        return [f"{self.cookie_name}={new.secret}; HttpOnly; SameSite=Lax; Path=/{tail}",
                f"{self.csrf_cookie_name}={new.csrf}; SameSite=Lax; Path=/{tail}"]

    def clear_cookies(self, secure: bool) -> list[str]:
        """`Set-Cookie` values that make the browser drop both cookies."""
        tail = "; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        tail += "; Secure" if secure else ""
        return [f"{self.cookie_name}=; HttpOnly; SameSite=Lax; Path=/{tail}",
                f"{self.csrf_cookie_name}=; SameSite=Lax; Path=/{tail}"]

    async def _token_member(self, authorization: str) -> MemberGrant:
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise InvalidApiKey(_NOT_SIGNED_IN)
        named = key_region(secret, "dw")
        if named is not None and named != self._region and named in self._urls:
            raise WrongRegion(self._wrong_door(named))
        grant = await self._tokens.lookup(secret)
        if grant is None:
            raise InvalidApiKey("Incorrect workspace token provided: it is unknown, revoked "
                                "or expired.")
        if grant.region != self._region:
            raise WrongRegion(self._wrong_door(grant.region))
        return grant

    def _wrong_door(self, home: str) -> str:
        url = self._urls.get(home)
        if url is None:
            return (f"This token belongs to region {home}, which region {self._region} does "
                    "not serve.")
        return (f"This token belongs to region {home}; call {url} instead. "
                f"Region {self._region} does not process its data.")
