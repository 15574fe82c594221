"""The workspace's door (G3 and CSRF), through a tiny Starlette app whose two routes do only
`await auth.member(request)`: tokens, session cookies, wrong regions, CSRF, cookie flags."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from domicile.errors import DomicileError
from domicile.site import Site
from domicile.tenancy.accounts import Accounts
from domicile.tenancy.models import User, WorkspaceToken
from domicile.tenancy.secrets import CredentialHasher
from domicile.tenancy.sessions import NewSession, SessionStore
from domicile.tenancy.throttle import LoginThrottle
from domicile.workspace_web.auth import TokenCache, WorkspaceAuth
from tests.tenancy.conftest import PASSWORD, SESSION_TTL, FakeClock, Tenants


@pytest.fixture
def tenants(site: Site) -> Tenants:
    return Tenants(site, site.directory.create_org("Acme").id)


@pytest.fixture
def accounts(site: Site) -> Accounts:
    hasher = CredentialHasher(site.site_secret)
    stores = {name: SessionStore(site.store(name), hasher, SESSION_TTL)
              for name in site.settings.regions}
    return Accounts(site.directory, stores.__getitem__,
                    LoginThrottle(site.settings.workspace), site.audit_log)


@pytest.fixture
def auth(site: Site, accounts: Accounts) -> WorkspaceAuth:
    return WorkspaceAuth(site.settings, "eu", accounts, site.directory)


def url(site: Site, region: str) -> str:
    return site.settings.region(region).public_url


@pytest.fixture
async def client(site: Site, auth: WorkspaceAuth) -> AsyncIterator[httpx.AsyncClient]:
    async def who(request: Request) -> Response:
        member = await auth.member(request)
        return JSONResponse({"user_id": member.user_id, "workspace_id": member.workspace_id,
                             "via": "token" if member.token_id else "session"})

    async def domicile_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomicileError)
        return Response(exc.body(), exc.status, media_type="application/json")

    app = Starlette(routes=[Route("/who", who, methods=["GET"]),
                            Route("/act", who, methods=["POST"])],
                    exception_handlers={DomicileError: domicile_error})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                 base_url=url(site, "eu")) as http:
        yield http


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def signed_in(tenants: Tenants, accounts: Accounts, client: httpx.AsyncClient,
              region: str = "eu") -> tuple[User, NewSession]:
    user = tenants.user(region=region)
    _, session = accounts.login(region, user.email, PASSWORD, address="10.0.0.1")
    client.cookies.set(f"domicile_session_{region}", session.secret)
    return user, session


# -- tokens ---------------------------------------------------------------------------------


async def test_a_token_of_this_region_is_let_in_without_csrf(
        site: Site, tenants: Tenants, client: httpx.AsyncClient) -> None:
    user = tenants.user()
    token = site.directory.create_token(user.workspace_id, user.id).secret
    for method, path in (("GET", "/who"), ("POST", "/act")):
        response = await client.request(method, path,
                                        headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert response.json() == {"user_id": user.id, "workspace_id": user.workspace_id,
                                   "via": "token"}


async def test_a_token_of_another_region_is_sent_to_its_url(
        site: Site, tenants: Tenants, client: httpx.AsyncClient) -> None:
    user = tenants.user(region="us")
    token = site.directory.create_token(user.workspace_id, user.id).secret
    response = await client.get("/who", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "wrong_region"
    assert url(site, "us") in error_of(response)["message"]


async def test_a_token_whose_workspace_is_elsewhere_is_refused_after_lookup(
        site: Site, tenants: Tenants, client: httpx.AsyncClient) -> None:
    # Defence in depth: a token naming no configured region, of a `us` workspace.
    user = tenants.user(region="us")
    token = site.directory.create_token(user.workspace_id, user.id)
    disguised = "dw-mars-" + token.secret.split("-", 2)[2]
    with site.directory_engine.begin() as conn:
        conn.execute(update(WorkspaceToken).where(WorkspaceToken.id == token.id).values(
            digest=CredentialHasher(site.site_secret).digest(disguised)))
    response = await client.get("/who", headers={"Authorization": f"Bearer {disguised}"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "wrong_region"
    assert url(site, "us") in error_of(response)["message"]


@pytest.mark.parametrize("spoil", ["expire", "revoke", "remove", "unknown"])
async def test_a_dead_token_is_401(site: Site, tenants: Tenants, client: httpx.AsyncClient,
                                   spoil: str) -> None:
    owner = tenants.user(role="owner")
    user = tenants.user(owner.workspace_id)
    token = site.directory.create_token(user.workspace_id, user.id)
    secret = token.secret
    if spoil == "expire":
        with site.directory_engine.begin() as conn:
            conn.execute(update(WorkspaceToken).where(WorkspaceToken.id == token.id).values(
                expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    elif spoil == "revoke":
        site.directory.revoke_token(token.id)
    elif spoil == "remove":
        site.directory.remove_member(user.workspace_id, user.id)
    else:
        secret = "dw-eu-" + "x" * 43
    response = await client.get("/who", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    assert secret[6:] not in response.text


@pytest.mark.parametrize("authorization", [None, "Basic abc", "Bearer "])
async def test_no_usable_credential_is_401(client: httpx.AsyncClient,
                                           authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.get("/who", headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


async def test_positive_token_lookups_are_cached_for_a_second(site: Site,
                                                              tenants: Tenants) -> None:
    user = tenants.user()
    token = site.directory.create_token(user.workspace_id, user.id)
    clock = FakeClock()
    cache = TokenCache(site.directory, clock=clock)
    assert await cache.lookup(token.secret) is not None
    site.directory.revoke_token(token.id)
    assert await cache.lookup(token.secret) is not None
    clock.advance(1.0)
    assert await cache.lookup(token.secret) is None


# -- session cookies ------------------------------------------------------------------------


async def test_a_session_cookie_lets_the_member_in(tenants: Tenants, accounts: Accounts,
                                                   client: httpx.AsyncClient) -> None:
    user, _ = signed_in(tenants, accounts, client)
    response = await client.get("/who")
    assert response.status_code == 200
    assert response.json() == {"user_id": user.id, "workspace_id": user.workspace_id,
                               "via": "session"}


async def test_a_session_of_another_region_is_sent_to_its_url(
        site: Site, tenants: Tenants, accounts: Accounts, client: httpx.AsyncClient) -> None:
    signed_in(tenants, accounts, client, region="us")
    response = await client.get("/who")
    assert response.status_code == 403
    assert error_of(response)["code"] == "wrong_region"
    assert url(site, "us") in error_of(response)["message"]


async def test_an_ended_or_made_up_session_is_401(tenants: Tenants, accounts: Accounts,
                                                  client: httpx.AsyncClient) -> None:
    _, session = signed_in(tenants, accounts, client)
    accounts.logout("eu", session.secret)
    response = await client.get("/who")
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
    client.cookies.set("domicile_session_eu", "eu.made-up")
    assert (await client.get("/who")).status_code == 401


async def test_an_unsafe_request_with_a_cookie_needs_the_csrf_token(
        tenants: Tenants, accounts: Accounts, client: httpx.AsyncClient) -> None:
    _, session = signed_in(tenants, accounts, client)
    missing = await client.post("/act")
    assert missing.status_code == 403 and error_of(missing)["code"] == "csrf_failed"
    wrong = await client.post("/act", headers={"x-csrf-token": "not-the-token"})
    assert wrong.status_code == 403 and error_of(wrong)["code"] == "csrf_failed"
    right = await client.post("/act", headers={"x-csrf-token": session.csrf})
    assert right.status_code == 200 and right.json()["via"] == "session"


async def test_an_unsafe_request_from_another_origin_is_refused(
        site: Site, tenants: Tenants, accounts: Accounts, client: httpx.AsyncClient) -> None:
    _, session = signed_in(tenants, accounts, client)
    foreign = await client.post("/act", headers={"x-csrf-token": session.csrf,
                                                 "origin": "https://evil.example"})
    assert foreign.status_code == 403 and error_of(foreign)["code"] == "csrf_failed"
    other_region = await client.post("/act", headers={"x-csrf-token": session.csrf,
                                                      "origin": url(site, "us")})
    assert other_region.status_code == 403
    same = await client.post("/act", headers={"x-csrf-token": session.csrf,
                                              "origin": url(site, "eu")})
    assert same.status_code == 200


# -- cookie flags ---------------------------------------------------------------------------


def parse(set_cookie: str) -> tuple[str, Any]:
    jar: SimpleCookie = SimpleCookie()
    jar.load(set_cookie)
    [(name, morsel)] = jar.items()
    return name, morsel


@pytest.mark.parametrize("secure", [False, True])
def test_session_cookies_flags(tenants: Tenants, accounts: Accounts, auth: WorkspaceAuth,
                               secure: bool) -> None:
    user = tenants.user()
    _, session = accounts.login("eu", user.email, PASSWORD, address="10.0.0.1")
    (session_name, secret), (csrf_name, csrf) = (
        parse(value) for value in auth.session_cookies(session, secure))
    assert (session_name, secret.value) == ("domicile_session_eu", session.secret)
    assert (csrf_name, csrf.value) == ("domicile_csrf_eu", session.csrf)
    assert secret["httponly"] is True and not csrf["httponly"]  # the page reads the CSRF one
    for morsel in (secret, csrf):
        assert morsel["samesite"] == "Lax" and morsel["path"] == "/"
        assert abs(int(morsel["max-age"]) - SESSION_TTL.total_seconds()) < 60
        assert bool(morsel["secure"]) is secure


@pytest.mark.parametrize("secure", [False, True])
def test_clear_cookies_drop_both(auth: WorkspaceAuth, secure: bool) -> None:
    cleared = dict(parse(value) for value in auth.clear_cookies(secure))
    assert set(cleared) == {"domicile_session_eu", "domicile_csrf_eu"}
    for morsel in cleared.values():
        assert morsel.value == "" and morsel["max-age"] == "0" and morsel["path"] == "/"
        assert bool(morsel["secure"]) is secure
