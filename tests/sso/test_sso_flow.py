"""Workspace single sign-on, end to end: a real `domicile serve`, a real OIDC provider
(panva/oidc-provider on loopback, see conftest.py), driven over HTTP as a browser would."""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.e2e.harness import DOMICILE

from .conftest import CLIENT_SECRETS, SignIn, SsoSite

pytestmark = pytest.mark.e2e


def with_param(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def me(sso: SsoSite, browser: httpx.Client) -> httpx.Response:
    return browser.get(f"{sso.base}/workspace/api/me")


def members_with(sso: SsoSite, email: str) -> list[Any]:
    with sso.opened() as site:
        return site.directory.find_members("eu", email)


def failures(sso: SsoSite, reason: str) -> list[dict[str, Any]]:
    return [entry for entry in sso.audit() if entry["action"] == "login.failed"
            and entry["details"].get("reason") == reason]


def new_email() -> str:
    return f"m{secrets.token_hex(4)}@example.com"


def test_first_sign_in_makes_the_member_with_a_working_session(sso: SsoSite,
                                                               sign_in: SignIn) -> None:
    email = new_email()
    browser = sso.browser()
    answer = sign_in(email.upper(), browser=browser)  # the provider's case is not ours
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/workspace/"
    profile = me(sso, browser)
    assert profile.status_code == 200, profile.text
    assert profile.json()["email"] == email
    assert profile.json()["role"] == "member"
    assert profile.json()["workspace"]["id"] == sso.workspace
    # The same session machinery: an unsafe request needs the session's CSRF token.
    csrf = browser.cookies.get("domicile_csrf_eu")
    refused = browser.post(f"{sso.base}/workspace/api/conversations", json={})
    assert refused.status_code == 403
    made = browser.post(f"{sso.base}/workspace/api/conversations", json={},
                        headers={"x-csrf-token": csrf or "", "origin": sso.base})
    assert made.status_code == 201, made.text
    # Audited (G8): the member's creation and the login, by id; the email nowhere.
    user_id = profile.json()["id"]
    entries = sso.audit()
    assert any(e["action"] == "user.add" and e["target"] == user_id
               and e["details"].get("via") == "sso" for e in entries)
    assert any(e["action"] == "login" and e["target"] == user_id
               and e["details"].get("method") == "sso" for e in entries)
    assert email.split("@")[0] not in str(entries)
    # And the server's log holds neither the email nor the code nor a token.
    log = sso.server.log()
    assert email.split("@")[0] not in log
    assert "code=" not in log


def test_a_second_sign_in_is_the_same_member(sso: SsoSite, sign_in: SignIn) -> None:
    email = new_email()
    first, second = sso.browser(), sso.browser()
    assert sign_in(email, browser=first).status_code == 303
    assert sign_in(email, browser=second).status_code == 303
    assert me(sso, first).json()["id"] == me(sso, second).json()["id"]
    assert len(members_with(sso, email)) == 1


def test_a_trailing_dot_on_the_domain_is_the_same_member(sso: SsoSite,
                                                        sign_in: SignIn) -> None:
    """`ann@example.com.` names the same host: kept as `ann@example.com`, one member."""
    email = new_email()
    dotted, plain = sso.browser(), sso.browser()
    assert sign_in(email + ".", browser=dotted).status_code == 303
    assert me(sso, dotted).json()["email"] == email
    assert sign_in(email, browser=plain).status_code == 303
    assert me(sso, plain).json()["id"] == me(sso, dotted).json()["id"]
    assert len(members_with(sso, email)) == 1
    assert members_with(sso, email + ".") == []


def test_an_address_the_directory_would_refuse_is_refused(sso: SsoSite,
                                                          sign_in: SignIn) -> None:
    """Its last `@` is in an allowed domain, but `add_user`'s EMAIL pattern refuses it."""
    email = f"m{secrets.token_hex(4)}@x@example.com"
    browser = sso.browser()
    answer = sign_in(email, browser=browser)
    assert answer.status_code == 403
    assert "not a valid address" in answer.text
    assert "domicile_session_eu" not in browser.cookies
    assert members_with(sso, email) == []
    assert failures(sso, "sso_email_invalid")


def test_an_email_outside_the_allowed_domains_is_refused(sso: SsoSite,
                                                         sign_in: SignIn) -> None:
    browser = sso.browser()
    answer = sign_in("mallory@example.org", browser=browser)
    assert answer.status_code == 403
    assert "domain this workspace accepts" in answer.text
    assert "domicile_session_eu" not in browser.cookies
    assert members_with(sso, "mallory@example.org") == []
    assert failures(sso, "sso_domain")


def test_a_subdomain_is_not_the_domain(sso: SsoSite, sign_in: SignIn) -> None:
    assert sign_in("eve@evil.example.com").status_code == 403
    assert members_with(sso, "eve@evil.example.com") == []


def test_an_unverified_email_is_refused(sso: SsoSite, sign_in: SignIn) -> None:
    answer = sign_in("unverified.bob@example.com")
    assert answer.status_code == 403
    assert "not verified your email" in answer.text
    assert members_with(sso, "bob@example.com") == []


def test_a_tampered_state_is_refused(sso: SsoSite, sign_in: SignIn) -> None:
    browser = sso.browser()
    email = new_email()
    answer = sign_in(email, browser=browser,
                     tamper_callback=lambda url: with_param(url, "state", "x" + "y" * 42))
    assert answer.status_code == 401
    assert "could not be verified" in answer.text
    assert "domicile_session_eu" not in browser.cookies
    assert members_with(sso, email) == []
    assert failures(sso, "sso_state")


def test_a_callback_in_another_browser_is_refused(sso: SsoSite, sign_in: SignIn) -> None:
    """Login CSRF: a victim's browser handed the attacker's callback has no flow cookie."""
    victim = sso.browser()
    answer = sign_in(new_email(), callback_browser=victim)
    assert answer.status_code == 401
    assert "domicile_session_eu" not in victim.cookies


def test_a_callback_is_used_once(sso: SsoSite, sign_in: SignIn) -> None:
    browser = sso.browser()
    seen: list[str] = []

    def keep(url: str) -> str:
        seen.append(url)
        return url

    assert sign_in(new_email(), browser=browser, tamper_callback=keep).status_code == 303
    again = browser.get(seen[0])  # the flow cookie is gone, and the code spent
    assert again.status_code == 401


def test_a_wrong_nonce_is_refused(sso: SsoSite, sign_in: SignIn) -> None:
    """The provider signs an ID token with another nonce than the flow's: refused."""
    email = new_email()
    answer = sign_in(email, tamper_authorize=lambda url: with_param(url, "nonce", "forged"))
    assert answer.status_code == 401
    assert members_with(sso, email) == []
    assert failures(sso, "sso_id_token")


def test_a_code_of_another_client_is_refused(sso: SsoSite, sign_in: SignIn) -> None:
    """The authorization request rewritten to client b: its code is not ours to redeem."""
    email = new_email()
    answer = sign_in(email,
                     tamper_authorize=lambda url: with_param(url, "client_id", "domicile-b"))
    assert answer.status_code == 401
    assert members_with(sso, email) == []
    assert failures(sso, "sso_code_refused")


def test_a_code_without_the_pkce_verifier_is_refused_by_the_provider(
        sso: SsoSite, sign_in: SignIn) -> None:
    """Our authorization request carries an S256 challenge: a different one makes the code
    useless with our verifier (the provider checks it)."""
    email = new_email()
    answer = sign_in(email, tamper_authorize=lambda url: with_param(
        url, "code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"))
    assert answer.status_code == 401
    assert members_with(sso, email) == []


def test_the_sign_in_page_offers_sso_for_a_workspace_that_has_it(sso: SsoSite) -> None:
    with sso.browser() as browser:
        page = browser.get(f"{sso.base}/workspace/login?workspace={sso.workspace}")
        assert page.status_code == 200
        assert "Sign in with SSO" in page.text
        assert f'href="/workspace/sso/{sso.workspace}/login"' in page.text
        plain = browser.get(f"{sso.base}/workspace/login?workspace={sso.plain_workspace}")
        assert f"/workspace/sso/{sso.plain_workspace}/login" not in plain.text
        assert "no single sign-on" in plain.text
        chosen = browser.get(f"{sso.base}/workspace/sso/login",
                             params={"workspace_id": sso.workspace})
        assert chosen.status_code == 303
        assert chosen.headers["location"] == f"/workspace/login?workspace={sso.workspace}"


def test_a_workspace_without_sso_answers_404_in_the_one_error_shape(sso: SsoSite) -> None:
    with sso.browser() as browser:
        page = browser.get(f"{sso.base}/workspace/sso/{sso.plain_workspace}/login")
        assert page.status_code == 404
        assert "no single sign-on" in page.text
        data = browser.get(f"{sso.base}/workspace/sso/{sso.plain_workspace}/login",
                           headers={"accept": "application/json"})
        assert data.status_code == 404
        assert data.json()["error"]["code"] == "not_found"


def test_the_other_regions_door_names_the_right_one(sso: SsoSite) -> None:
    """G3: the us server does not start an eu workspace's sign-in; it says where to go."""
    with sso.browser() as browser:
        answer = browser.get(f"{sso.site.url('us')}/workspace/sso/{sso.workspace}/login",
                             headers={"accept": "application/json"})
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "wrong_region"
        assert sso.base in answer.json()["error"]["message"]


def test_the_client_secret_is_sealed_and_never_shown(sso: SsoSite) -> None:
    shown = sso.site.cli("workspace", "sso", "show", sso.workspace)
    assert shown["client_secret"] == "sealed"
    assert shown["issuer"] == sso.provider.issuer
    assert shown["allowed_domains"] == ["example.com"]
    assert shown["redirect_uri"] == sso.callback
    database = sso.site.root / "directory.db"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT client_secret_sealed FROM workspace_sso").fetchall()
    assert rows and all(CLIENT_SECRETS["domicile-a"].encode() not in row[0] for row in rows)
    raw = b"".join(path.read_bytes() for path in sso.site.root.rglob("directory.db*"))
    assert CLIENT_SECRETS["domicile-a"].encode() not in raw


def test_a_public_client_signs_in_with_pkce_alone(sso: SsoSite, sign_in: SignIn) -> None:
    workspace = sso.new_workspace("Public")
    shown = sso.set_sso(workspace, "domicile-public", "Example.COM, example.net")
    assert shown["client_secret"] is None
    assert shown["allowed_domains"] == ["example.com", "example.net"]
    browser = sso.browser()
    answer = sign_in(new_email().replace("example.com", "example.net"), browser=browser,
                     workspace=workspace)
    assert answer.status_code == 303, answer.text
    assert me(sso, browser).json()["workspace"]["id"] == workspace


def test_clearing_sso_stops_new_sign_ins_and_is_audited(sso: SsoSite, sign_in: SignIn) -> None:
    workspace = sso.new_workspace("Clear")
    sso.set_sso(workspace)
    assert sso.site.cli("workspace", "sso", "clear", workspace)["cleared"] is True
    assert sso.site.cli("workspace", "sso", "show", workspace)["sso"] is None
    with sso.browser() as browser:
        assert browser.get(f"{sso.base}/workspace/sso/{workspace}/login").status_code == 404
    actions = [(e["action"], e["target"]) for e in sso.audit()]
    assert ("workspace.sso.set", workspace) in actions
    assert ("workspace.sso.clear", workspace) in actions


@pytest.mark.parametrize(("issuer", "allowed"), [
    ("http://idp.example.com", False),  # plain http to a non-loopback host (G6)
    ("https://idp.example.com/realms/acme", True),
])
def test_the_issuer_must_be_https_unless_loopback(sso: SsoSite, issuer: str,
                                                  allowed: bool) -> None:
    done = subprocess.run(
        [DOMICILE, "workspace", "sso", "set", sso.plain_workspace, "--issuer", issuer,
         "--client-id", "x", "--allowed-domains", "example.com", "--config",
         str(sso.site.config), "--json"], capture_output=True, text=True, timeout=120)
    try:
        if allowed:
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["issuer"] == issuer
        else:
            assert done.returncode == 2
            assert json.loads(done.stderr)["error"]["param"] == "issuer"
            assert sso.site.cli("workspace", "sso", "show", sso.plain_workspace)["sso"] is None
    finally:
        sso.site.cli("workspace", "sso", "clear", sso.plain_workspace)


def test_a_removed_member_is_not_made_again(sso: SsoSite, sign_in: SignIn) -> None:
    email = new_email()
    browser = sso.browser()
    assert sign_in(email, browser=browser).status_code == 303
    user_id = me(sso, browser).json()["id"]
    with sso.opened() as site:
        site.directory.remove_member(sso.workspace, user_id)
    assert me(sso, browser).status_code == 401  # the session ended with the membership
    again = sign_in(email)
    assert again.status_code == 403
    assert "ended by an admin" in again.text
    assert any(e["target"] == user_id for e in failures(sso, "sso_member"))
