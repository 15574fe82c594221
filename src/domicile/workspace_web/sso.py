"""Single sign-on into a workspace: OpenID Connect, authorization code with PKCE (S256).

    GET /workspace/sso/{workspace_id}/login  -> 303 to the workspace's identity provider
    GET /workspace/sso/callback              -> 303 to /workspace/ with a session

The provider is found by discovery (`{issuer}/.well-known/openid-configuration`, its JWKS with
it), cached per issuer for `DISCOVERY_TTL_S` seconds and at most `DISCOVERY_MAX` issuers;
every endpoint it names must be https, unless the issuer itself is on loopback (G6). A failed
discovery is remembered `DISCOVERY_FAILURE_TTL_S` seconds and one fetch per issuer runs at a
time, so a provider that is down costs one outbound fetch per issuer per interval, not one per
unauthenticated request: meanwhile sign-in answers 503 `identity_provider_unavailable` with
`retry-after` at once. Authlib's httpx client builds
the authorization request and redeems the code; joserfc (Authlib's JOSE library: its own
`authlib.jose` is deprecated in its favour) checks the ID token: signature against the JWKS
(asymmetric algorithms only), `iss`, `aud` (and `azp`), `exp`, `iat` and the `nonce`.

The flow's state lives in a short-lived cookie (`domicile_sso_<region>`, HttpOnly, Path
/workspace/sso/, `FLOW_TTL_S`) holding the workspace id, the `state` and an expiry, signed
with a key derived from the site secret; the `nonce` and the PKCE verifier are derived from
the state with that key, so they never leave the server and no replica needs a shared record.
A callback whose state is not the cookie's (another browser's, tampered, expired) is refused.

Then: `email_verified` must be true, the email's domain one the workspace allows; a first
sign-in makes the member (role member, no password); the session is the password sign-in's
(same cookies, same CSRF token, same store). Every refusal is a page (or, to a client that
asks for JSON, the one error shape) and a `login.failed` audit entry with a reason; a success
is a `login` entry with `method: sso`. Nothing here logs a code, a token or an email.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from authlib.integrations.base_client.errors import OAuthError  # type: ignore[import-untyped]
from authlib.integrations.httpx_client import AsyncOAuth2Client  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError, MissingKeyError
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from domicile.crypto import DecryptionError
from domicile.errors import (
    DomicileError,
    Forbidden,
    InvalidCredentials,
    InvalidInput,
    NotFound,
    TenantDataErased,
    UpstreamError,
    WrongRegion,
)
from domicile.tenancy.accounts import ANONYMOUS
from domicile.tenancy.grants import MemberGrant
from domicile.tenancy.sessions import NewSession
from domicile.tenancy.sso import (
    MembershipEnded,
    SsoConfig,
    check_provider_endpoint,
    sso_email,
)

from .auth import WorkspaceAuth
from .services import WorkspaceServices

__all__ = ["CALLBACK_PATH", "DISCOVERY_FAILURE_TTL_S", "DISCOVERY_MAX", "DISCOVERY_TTL_S",
           "FLOW_TTL_S", "ID_TOKEN_ALGORITHMS", "IdentityProviderUnavailable",
           "ProviderDirectory", "ProviderInfo", "SsoPages", "flow_cookie_name",
           "verify_id_token"]

CALLBACK_PATH = "/workspace/sso/callback"
FLOW_COOKIE_PATH = "/workspace/sso/"
FLOW_TTL_S = 600
DISCOVERY_TTL_S = 300.0
DISCOVERY_MAX = 64
# A failed discovery is not tried again for this long: while a provider is down, anyone may
# hit the login route, and each try is an outbound fetch of up to HTTP_TIMEOUT_S.
DISCOVERY_FAILURE_TTL_S = 30.0
HTTP_TIMEOUT_S = 10.0
MAX_DOCUMENT = 256 * 1024  # a discovery document or a JWKS
# A JWKS is fetched again for an unknown key id at most this often (the provider rotated).
JWKS_REFRESH_S = 10.0
ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                       "ES512", "EdDSA")
SCOPE = "openid email"
CLOCK_LEEWAY_S = 60
# A signature by a key we do not hold (the provider rotated its keys): fetch them again, once.
_UNKNOWN_KEY = (BadSignatureError, InvalidKeyIdError, MissingKeyError)
_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")
_NOT_VERIFIED = ("This sign-in could not be verified: it expired, did not start in this "
                 "browser, or was changed on the way. Start again from the sign-in page.")


def flow_cookie_name(region: str) -> str:
    return f"domicile_sso_{region}"


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """What discovery said about an issuer, and its signing keys."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str | None
    jwks_uri: str
    jwks: KeySet
    fetched_at: float


class IdentityProviderUnavailable(UpstreamError):
    """The workspace's identity provider cannot be used now: its discovery failed (now or
    within `DISCOVERY_FAILURE_TTL_S`). 503 with `retry-after`; the message says why (an
    error type or status, never a document's content)."""

    status = 503
    code = "identity_provider_unavailable"

    def __init__(self, reason: str, retry_after_s: float) -> None:
        wait = max(1, math.ceil(retry_after_s))
        super().__init__(f"Single sign-on is unavailable for now: {reason} Try again in "
                         f"{wait} s.", headers=[(b"retry-after", str(wait).encode())])


class _Refused(Exception):
    """A refused sign-in: what the member is told and the audit entry's reason."""

    def __init__(self, reason: str, error: DomicileError, *, workspace_id: str | None = None,
                 user_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.workspace_id = workspace_id
        self.user_id = user_id


# -- discovery ----------------------------------------------------------------------------------

class ProviderDirectory:
    """Discovery documents and JWKS per issuer, kept `ttl` seconds, at most `max_entries`
    issuers (the least recently used goes); a failed discovery kept `failure_ttl` seconds.
    One discovery per issuer runs at a time: the others wait for its result."""

    def __init__(self, *, ttl: float = DISCOVERY_TTL_S, max_entries: int = DISCOVERY_MAX,
                 failure_ttl: float = DISCOVERY_FAILURE_TTL_S,
                 clock: Callable[[], float] = time.monotonic,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._failure_ttl = failure_ttl
        self._clock = clock
        self._transport = transport
        self._entries: OrderedDict[str, ProviderInfo] = OrderedDict()
        # issuer -> (why its discovery failed, when): raised again until `failure_ttl` passes.
        self._failures: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False,
                                 transport=self._transport)

    def oauth_client(self, **options: Any) -> AsyncOAuth2Client:
        """Authlib's OAuth 2 client (an httpx client) under the same limits as `client`."""
        return AsyncOAuth2Client(timeout=HTTP_TIMEOUT_S, follow_redirects=False,
                                 transport=self._transport, **options)

    async def get(self, issuer: str) -> ProviderInfo:
        """The issuer's discovery and keys; `IdentityProviderUnavailable` (503) when its
        discovery fails, or failed within `failure_ttl`."""
        found = self._cached(issuer)
        if found is not None:
            return found
        lock = self._locks.get(issuer)
        if lock is None:
            self._forget_idle_locks()
            lock = self._locks[issuer] = asyncio.Lock()
        async with lock:
            # Whoever held the lock may have just fetched it, or failed to.
            found = self._cached(issuer)
            if found is not None:
                return found
            try:
                info = await self._discover(issuer)
            except UpstreamError as error:
                self._failures[issuer] = (error.message, self._clock())
                self._failures.move_to_end(issuer)
                while len(self._failures) > self._max:
                    self._failures.popitem(last=False)
                raise IdentityProviderUnavailable(error.message, self._failure_ttl) from None
            self._failures.pop(issuer, None)
            return self._remember(info)

    def _cached(self, issuer: str) -> ProviderInfo | None:
        """The fresh entry of `issuer`, None if there is none; raises its recent failure."""
        now = self._clock()
        found = self._entries.get(issuer)
        if found is not None and now - found.fetched_at < self._ttl:
            self._entries.move_to_end(issuer)
            return found
        failed = self._failures.get(issuer)
        if failed is not None:
            reason, at = failed
            if now - at < self._failure_ttl:
                raise IdentityProviderUnavailable(reason, self._failure_ttl - (now - at))
            del self._failures[issuer]
        return None

    def _forget_idle_locks(self) -> None:
        # Issuers come from operators' settings, so few; still, keep the map bounded.
        if len(self._locks) >= self._max:
            for issuer in [i for i, lock in self._locks.items() if not lock.locked()]:
                del self._locks[issuer]

    async def refresh_keys(self, info: ProviderInfo) -> ProviderInfo | None:
        """The issuer's keys fetched again (a key id we do not know: it rotated), unless they
        were fetched within `JWKS_REFRESH_S`: then None."""
        if self._clock() - info.fetched_at < JWKS_REFRESH_S:
            return None
        async with self.client() as client:
            jwks = await _fetch_keys(client, info.jwks_uri)
        return self._remember(dataclasses.replace(info, jwks=jwks, fetched_at=self._clock()))

    def _remember(self, info: ProviderInfo) -> ProviderInfo:
        self._entries[info.issuer] = info
        self._entries.move_to_end(info.issuer)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return info

    async def _discover(self, issuer: str) -> ProviderInfo:
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        async with self.client() as client:
            document = await _fetch_json(client, url, "discovery document")
            if document.get("issuer") != issuer:
                raise UpstreamError("The identity provider's discovery document names another "
                                    "issuer than the one configured for this workspace.")
            endpoints = {}
            for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                endpoints[field] = _endpoint(document.get(field), field, issuer)
            userinfo = document.get("userinfo_endpoint")
            methods = document.get("code_challenge_methods_supported")
            if isinstance(methods, list) and "S256" not in methods:
                raise UpstreamError("The identity provider does not support PKCE with S256.")
            jwks = await _fetch_keys(client, endpoints["jwks_uri"])
        return ProviderInfo(issuer, endpoints["authorization_endpoint"],
                            endpoints["token_endpoint"],
                            _endpoint(userinfo, "userinfo_endpoint", issuer) if userinfo
                            else None,
                            endpoints["jwks_uri"], jwks, self._clock())


def _endpoint(value: object, field: str, issuer: str) -> str:
    if not isinstance(value, str):
        raise UpstreamError(f"The identity provider's discovery document has no {field}.")
    try:
        return check_provider_endpoint(value, field, issuer)
    except DomicileError:
        raise UpstreamError(f"The identity provider's {field} is not https (G6).") from None


async def _fetch_json(client: httpx.AsyncClient, url: str, what: str) -> dict[str, Any]:
    try:
        response = await client.get(url, headers={"accept": "application/json"})
    except httpx.HTTPError as exc:
        raise UpstreamError(f"The identity provider could not be reached for its {what} "
                            f"({type(exc).__name__}).") from None
    if response.status_code != 200 or len(response.content) > MAX_DOCUMENT:
        raise UpstreamError(f"The identity provider answered {response.status_code} for its "
                            f"{what}.")
    try:
        document = json.loads(response.content)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise UpstreamError(f"The identity provider's {what} is not a JSON object.")
    return document


async def _fetch_keys(client: httpx.AsyncClient, url: str) -> KeySet:
    document = await _fetch_json(client, url, "signing keys")
    try:
        return KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        raise UpstreamError("The identity provider's signing keys could not be read.") from None


# -- the ID token -------------------------------------------------------------------------------

def verify_id_token(id_token: str, keys: KeySet, *, issuer: str, client_id: str,
                    nonce: str, now: int | None = None) -> dict[str, Any]:
    """The ID token's claims when its signature (one of `keys`, an asymmetric algorithm),
    issuer, audience (and authorized party), expiry, issue time and nonce are right; else
    `JoseError` (or `ValueError` for an audience it shares without naming us in `azp`)."""
    token = jwt.decode(id_token, keys, algorithms=list(ID_TOKEN_ALGORITHMS))
    claims = dict(token.claims)
    registry = jwt.JWTClaimsRegistry(
        now=now, leeway=CLOCK_LEEWAY_S,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    registry.validate(claims)
    audience = claims["aud"]
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise ValueError("the ID token is shared with other audiences and not for this client")
    if "azp" in claims and claims["azp"] != client_id:
        raise ValueError("the ID token was issued to another client")
    return claims


# -- the signed flow cookie -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Flow:
    workspace_id: str
    state: str
    expires: int


class _FlowSigner:
    """Signs the flow cookie and derives the nonce and PKCE verifier of a state."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "_FlowSigner(<key>)"

    def _mac(self, label: str, value: str) -> bytes:
        return hmac.new(self._key, f"{label}\x00{value}".encode(), hashlib.sha256).digest()

    def nonce(self, state: str) -> str:
        return _b64(self._mac("nonce", state))

    def verifier(self, state: str) -> str:
        # 43 characters of [A-Za-z0-9-_]: a valid RFC 7636 code verifier (256 bits).
        return _b64(self._mac("pkce", state))

    def dump(self, flow: _Flow) -> str:
        body = _b64(json.dumps([flow.workspace_id, flow.state, flow.expires]).encode())
        return f"{body}.{_b64(self._mac('flow', body))}"

    def load(self, value: str | None, now: float) -> _Flow | None:
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac.encode(), _b64(self._mac("flow", body)).encode()):
            return None
        try:
            workspace_id, state, expires = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        if not (isinstance(workspace_id, str) and isinstance(state, str)
                and isinstance(expires, int)) or expires <= now:
            return None
        return _Flow(workspace_id, state, expires)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- the routes -----------------------------------------------------------------------------------

class SsoPages:
    """The two routes of the flow for one region's workspace. `render(template, status,
    **context)` draws the error page (the workspace pages' renderer)."""

    def __init__(self, services: WorkspaceServices, auth: WorkspaceAuth,
                 render: Callable[..., Response], *, secure: bool = False,
                 providers: ProviderDirectory | None = None) -> None:
        self.services = services
        self.region = services.region
        self.auth = auth
        self.secure = secure
        self.providers = providers or ProviderDirectory()
        self._render = render
        self._urls = {name: r.public_url for name, r in services.settings.regions.items()}
        self.redirect_uri = self._urls[self.region].rstrip("/") + CALLBACK_PATH
        self.cookie_name = flow_cookie_name(self.region)
        # A key of its own, derived from the site secret (HMAC under it, as credential digests).
        self._signer = _FlowSigner(bytes.fromhex(
            services.sessions.digest("domicile/workspace-sso-flow/v1")))

    def __repr__(self) -> str:
        return f"SsoPages(region={self.region!r})"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/workspace/sso/login", self.choose, methods=["GET"]),
            Route("/workspace/sso/{workspace_id}/login", self.login, methods=["GET"]),
            Route(CALLBACK_PATH, self.callback, methods=["GET"]),
        ]

    async def choose(self, request: Request) -> Response:
        """The sign-in page's "workspace id" form: back to the sign-in page with that
        workspace's "Sign in with SSO" link (a form may only lead to this origin: CSP
        `form-action 'self'` holds for its redirects too, so the link, not the form, goes on
        to the provider)."""
        workspace_id = request.query_params.get("workspace_id", "").strip()[:40]
        if not workspace_id:
            return self._redirect("/workspace/login")
        return self._redirect(f"/workspace/login?workspace={quote(workspace_id, safe='')}")

    async def login(self, request: Request) -> Response:
        workspace_id = request.path_params["workspace_id"]
        try:
            config = await self._config(workspace_id)
            provider = await self.providers.get(config.issuer)
        except DomicileError as error:
            return self._problem(request, error)
        state = secrets.token_urlsafe(32)
        async with self.providers.oauth_client(
                client_id=config.client_id, scope=SCOPE, redirect_uri=self.redirect_uri,
                code_challenge_method="S256") as client:  # builds a URL: no request here
            url, _state = client.create_authorization_url(
                provider.authorization_endpoint, state=state,
                code_verifier=self._signer.verifier(state), nonce=self._signer.nonce(state))
        response = self._redirect(url)
        flow = _Flow(config.workspace_id, state, int(time.time()) + FLOW_TTL_S)
        response.headers.append("set-cookie", self._flow_cookie(self._signer.dump(flow),
                                                                FLOW_TTL_S))
        return response

    async def callback(self, request: Request) -> Response:
        try:
            _grant, new = await self._sign_in(request)
        except _Refused as refused:
            await asyncio.to_thread(self._audit_refusal, refused)
            response = self._problem(request, refused.error)
        except DomicileError as error:  # the provider unreachable, the store down
            response = self._problem(request, error)
        else:
            response = self._redirect("/workspace/")
            for cookie in self.auth.session_cookies(new, self.secure):
                response.headers.append("set-cookie", cookie)
        response.headers.append("set-cookie", self._flow_cookie("", 0))  # one use
        return response

    # -- the callback's steps ---------------------------------------------------------------------

    async def _sign_in(self, request: Request) -> tuple[MemberGrant, NewSession]:
        params = request.query_params
        flow = self._signer.load(request.cookies.get(self.cookie_name), time.time())
        state = params.get("state", "")
        if flow is None or not hmac.compare_digest(state.encode(), flow.state.encode()):
            raise _Refused("sso_state", InvalidCredentials(_NOT_VERIFIED),
                           workspace_id=flow.workspace_id if flow else None)
        ws = flow.workspace_id
        try:
            config = await self._config(ws)
        except DomicileError as error:
            raise _Refused("sso_config", error, workspace_id=ws) from None
        if "error" in params:
            said = params["error"] if _ERROR_CODE.match(params["error"]) else "error"
            raise _Refused("sso_provider_refused", Forbidden(
                f"The identity provider did not sign you in ({said})."), workspace_id=ws)
        if "iss" in params and params["iss"] != config.issuer:  # RFC 9207: a mix-up
            raise _Refused("sso_issuer", InvalidCredentials(_NOT_VERIFIED), workspace_id=ws)
        code = params.get("code")
        if not code:
            raise _Refused("sso_code", InvalidCredentials(_NOT_VERIFIED), workspace_id=ws)
        try:
            provider = await self.providers.get(config.issuer)
            tokens = await self._redeem(config, provider, code, flow)
            claims = await self._verified_claims(config, provider, tokens, flow)
            email = await self._email(provider, tokens, claims, ws)
        except UpstreamError as error:
            raise _Refused("sso_provider_failed", error, workspace_id=ws) from None
        if not config.allows(email):
            raise _Refused("sso_domain", Forbidden(
                "Your email address is not in a domain this workspace accepts for single "
                "sign-on. Ask the workspace's admin."), workspace_id=ws)
        try:
            user, created = await asyncio.to_thread(
                self.services.sso.provision_member, ws, email)
        except MembershipEnded as error:
            raise _Refused("sso_member", error, workspace_id=ws, user_id=error.user_id) from None
        except (Forbidden, NotFound, TenantDataErased) as error:
            raise _Refused("sso_member", error, workspace_id=ws) from None
        except InvalidInput:  # `_email` refuses such an address first; kept for safety
            raise _Refused("sso_email_invalid", Forbidden(
                "The identity provider's email address for you is not a valid address."),
                workspace_id=ws) from None
        grant = await asyncio.to_thread(self.services.directory.member_grant, user.id)
        if grant is None or grant.region != self.region:
            raise _Refused("sso_member", Forbidden("You cannot sign in to this workspace."),
                           workspace_id=ws, user_id=user.id)
        new = await asyncio.to_thread(self._start_session, grant, created,
                                      self.auth.session_secret(request))
        return grant, new

    async def _redeem(self, config: SsoConfig, provider: ProviderInfo, code: str,
                      flow: _Flow) -> Mapping[str, Any]:
        try:
            secret = await asyncio.to_thread(self.services.sso.client_secret, config)
        except DecryptionError:
            raise _Refused("sso_client_secret", Forbidden(
                "This workspace's single sign-on cannot be used: its client secret cannot be "
                "opened. Ask the workspace's admin to set it again."),
                workspace_id=config.workspace_id) from None
        client = self.providers.oauth_client(
            client_id=config.client_id, client_secret=secret,
            token_endpoint_auth_method="client_secret_basic" if secret else "none",
            redirect_uri=self.redirect_uri)
        try:
            async with client:
                token = await client.fetch_token(
                    provider.token_endpoint, grant_type="authorization_code", code=code,
                    code_verifier=self._signer.verifier(flow.state))
        except OAuthError as exc:
            error = exc.error if isinstance(exc.error, str) and _ERROR_CODE.match(exc.error) \
                else "error"
            raise _Refused("sso_code_refused", InvalidCredentials(
                f"The identity provider did not accept this sign-in ({error}). Start again."),
                workspace_id=config.workspace_id) from None
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamError(f"The identity provider's token endpoint failed "
                                f"({type(exc).__name__}).") from None
        return dict(token)

    async def _verified_claims(self, config: SsoConfig, provider: ProviderInfo,
                               tokens: Mapping[str, Any], flow: _Flow) -> dict[str, Any]:
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise _Refused("sso_id_token", InvalidCredentials(_NOT_VERIFIED),
                           workspace_id=config.workspace_id)
        nonce = self._signer.nonce(flow.state)
        for attempt in range(2):
            try:
                return verify_id_token(id_token, provider.jwks, issuer=config.issuer,
                                       client_id=config.client_id, nonce=nonce)
            except JoseError as exc:
                fresh = None
                if attempt == 0 and isinstance(exc, _UNKNOWN_KEY):
                    fresh = await self.providers.refresh_keys(provider)
                if fresh is None:
                    raise _Refused("sso_id_token", InvalidCredentials(_NOT_VERIFIED),
                                   workspace_id=config.workspace_id) from None
                provider = fresh
            except ValueError:
                break
        raise _Refused("sso_id_token", InvalidCredentials(_NOT_VERIFIED),
                       workspace_id=config.workspace_id)

    async def _email(self, provider: ProviderInfo, tokens: Mapping[str, Any],
                     claims: dict[str, Any], workspace_id: str) -> str:
        """The verified email: the ID token's, else the userinfo endpoint's (same `sub`)."""
        if "email" not in claims and provider.userinfo_endpoint is not None:
            access_token = tokens.get("access_token")
            if isinstance(access_token, str):
                async with self.providers.client() as client:
                    try:
                        response = await client.get(provider.userinfo_endpoint, headers={
                            "authorization": f"Bearer {access_token}",
                            "accept": "application/json"})
                        info = response.json() if response.status_code == 200 else {}
                    except (httpx.HTTPError, ValueError):
                        raise UpstreamError("The identity provider's userinfo endpoint "
                                            "failed.") from None
                if isinstance(info, dict) and info.get("sub") == claims["sub"]:
                    claims = {**info, **claims}
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email or len(email) > 320:
            raise _Refused("sso_email", Forbidden(
                "The identity provider did not say which email address you have."),
                workspace_id=workspace_id)
        if claims.get("email_verified") is not True:
            raise _Refused("sso_email_unverified", Forbidden(
                "The identity provider has not verified your email address."),
                workspace_id=workspace_id)
        address = sso_email(email)
        if address is None:
            raise _Refused("sso_email_invalid", Forbidden(
                "The identity provider's email address for you is not a valid address."),
                workspace_id=workspace_id)
        return address

    def _start_session(self, grant: MemberGrant, created: bool,
                       replacing: str | None) -> NewSession:
        sessions = self.services.sessions
        if replacing:
            sessions.delete(replacing)  # ids rotate at sign-in, as with a password
        new = sessions.create(grant)
        self.services.store.audit.append(grant.user_id, "login", grant.user_id, {
            "workspace": grant.workspace_id, "method": "sso", "member_created": created})
        return new

    def _audit_refusal(self, refused: _Refused) -> None:
        self.services.store.audit.append(ANONYMOUS, "login.failed",
                                         refused.user_id or "unknown",
                                         {"workspace": refused.workspace_id,
                                          "reason": refused.reason, "method": "sso"})

    # -- helpers ----------------------------------------------------------------------------------

    async def _config(self, workspace_id: str) -> SsoConfig:
        """The workspace's SSO; 404 without one, 403 `wrong_region` for another region's."""
        try:
            config = await asyncio.to_thread(self.services.sso.get, workspace_id)
        except NotFound:
            config = None
        if config is None:
            raise NotFound("This workspace has no single sign-on.", param="workspace")
        if config.region != self.region:
            url = self._urls.get(config.region, "")
            raise WrongRegion(f"This workspace belongs to region {config.region}; sign in at "
                              f"{url}/workspace/login instead. Region {self.region} does not "
                              "process its data.")
        return config

    def _flow_cookie(self, value: str, max_age: int) -> str:
        tail = "; Secure" if self.secure else ""
        return (f"{self.cookie_name}={value}; HttpOnly; SameSite=Lax; Path={FLOW_COOKIE_PATH}; "
                f"Max-Age={max_age}{tail}")

    def _redirect(self, url: str) -> Response:
        return RedirectResponse(url, 303, headers={"cache-control": "no-store",
                                                   "referrer-policy": "no-referrer"})

    def _problem(self, request: Request, error: DomicileError) -> Response:
        """The error page; the one JSON error shape for a client that asks only for JSON."""
        accept = request.headers.get("accept", "")
        if "application/json" in accept and "text/html" not in accept:
            headers = {name.decode(): value.decode() for name, value in error.headers}
            headers["cache-control"] = "no-store"
            return Response(error.body(), error.status, headers=headers,
                            media_type="application/json")
        titles = {401: "Not signed in", 403: "Not allowed here", 404: "Not found"}
        return self._render("problem.html", error.status,
                            title=titles.get(error.status, "Single sign-on failed"),
                            message=error.message)
