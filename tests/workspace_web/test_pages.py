"""The workspace's web pages on a real `domicile serve`, through HTTP (no browser): the sign-in
form (cookies, redirect, the words of a wrong password and of throttling), signing out with the
form's CSRF token, pages sending visitors to sign in, the security headers of every page, and
static files (long cache, `integrity` matching their bytes, no inline script or style).

The browser's side (the chat view's script) is tests/ui's."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Server, Site, init_site

PASSWORD = "correct horse battery staple"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
PAGES = ("/workspace/", "/workspace/gpts", "/workspace/gpts/new", "/workspace/settings",
         "/workspace/admin")


@dataclass
class Served:
    site: Site
    base: str
    owner: str  # emails
    member: str
    gpt: str


def _add_user(site: Site, workspace: str, role: str) -> str:
    email = f"{role}-{secrets.token_hex(4)}@example.com"
    site.cli("user", "add", "--workspace", workspace, "--email", email, "--role", role,
             "--password-stdin", stdin=PASSWORD + "\n")
    return email


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("pages")
    site = init_site(root / "site")
    org = site.cli("org", "create", "--name", "Acme")["id"]
    workspace = str(site.cli("workspace", "create", "--org", org, "--name", "Team",
                             "--region", "eu")["id"])
    owner = _add_user(site, workspace, "owner")
    server = Server(site, root)
    try:
        server.wait_ready()
        base = site.url("eu")
        with signed_in(base, owner) as client:
            gpt = client.post("/workspace/api/gpts", headers=csrf(client), json={
                "name": "Writer <b>", "instructions": "Be brief.", "model": "dev-echo",
                "description": "Drafts & notes"}).json()["id"]
        yield Served(site, base, owner, _add_user(site, workspace, "member"), gpt)
    finally:
        server.stop()


def client_for(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"origin": base}, timeout=60)


def csrf(client: httpx.Client) -> dict[str, str]:
    return {"x-csrf-token": client.cookies["domicile_csrf_eu"]}


@contextlib.contextmanager
def signed_in(base: str, email: str) -> Iterator[httpx.Client]:
    with client_for(base) as client:
        answer = client.post("/workspace/login", data={"email": email, "password": PASSWORD})
        assert answer.status_code == 303, answer.text
        yield client


def test_the_login_form_sets_the_cookies_and_goes_to_the_chat(served: Served) -> None:
    with client_for(served.base) as client:
        form = client.get("/workspace/login")
        assert form.status_code == 200
        assert 'id="login-form"' in form.text and 'id="sign-in"' in form.text
        answer = client.post("/workspace/login",
                             data={"email": served.member, "password": PASSWORD})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/workspace/"
        cookies = answer.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("domicile_session_eu="))
        assert "HttpOnly" in session and "SameSite=Lax" in session
        assert any(c.startswith("domicile_csrf_eu=") for c in cookies)
        chat = client.get("/workspace/")
        assert chat.status_code == 200
        assert 'id="composer"' in chat.text
        assert "Stored in European Union, encrypted" in chat.text
        assert '<meta name="domicile-region" content="eu">' in chat.text


def test_a_wrong_password_shows_the_words_with_401(served: Served) -> None:
    with client_for(served.base) as client:
        answer = client.post("/workspace/login",
                             data={"email": served.owner, "password": "not it"})
        assert answer.status_code == 401
        assert re.search(r'id="login-error"[^>]*role="alert"[^>]*>Wrong email or password\.<',
                         answer.text)
        assert "domicile_session_eu" not in answer.headers.get("set-cookie", "")


def test_too_many_wrong_passwords_say_how_long_to_wait(served: Served) -> None:
    email = f"nobody-{secrets.token_hex(3)}@example.com"
    with client_for(served.base) as client:
        statuses = [client.post("/workspace/login", data={"email": email, "password": "x"})
                    for _ in range(6)]  # the limit is 5 failures per account
    assert [s.status_code for s in statuses] == [401] * 5 + [429]
    seconds = statuses[-1].headers["retry-after"]
    assert f"Too many attempts. Try again in {seconds} seconds." in statuses[-1].text


def test_a_login_from_another_origin_is_refused(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=60) as client:
        answer = client.post("/workspace/login", headers={"origin": "https://evil.example"},
                             data={"email": served.owner, "password": PASSWORD})
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


def test_sign_out_needs_the_forms_csrf_token(served: Served) -> None:
    with signed_in(served.base, served.member) as client:
        refused = client.post("/workspace/logout", data={"csrf_token": "forged"})
        assert refused.status_code == 403
        assert client.get("/workspace/settings").status_code == 200  # still signed in
        page = client.get("/workspace/settings").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token is not None and token.group(1) == client.cookies["domicile_csrf_eu"]
        answer = client.post("/workspace/logout", data={"csrf_token": token.group(1)})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/workspace/login"
        assert all("Max-Age=0" in c for c in answer.headers.get_list("set-cookie"))
        # The session ended on the server, not only in this browser's cookies.
        session = client.cookies.get("domicile_session_eu")
    with client_for(served.base) as fresh:
        if session:
            fresh.cookies.set("domicile_session_eu", session)
        assert fresh.get("/workspace/settings").status_code == 303


@pytest.mark.parametrize("path", [*PAGES, "/workspace/c/conv_unknown"])
def test_pages_send_a_visitor_to_sign_in(served: Served, path: str) -> None:
    with client_for(served.base) as client:
        answer = client.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/workspace/login"


def test_admin_page_is_403_for_a_plain_member(served: Served) -> None:
    with signed_in(served.base, served.member) as client:
        answer = client.get("/workspace/admin")
    assert answer.status_code == 403
    assert 'id="members"' not in answer.text
    assert "owners and admins" in answer.text


def test_admin_page_shows_the_workspaces_residency(served: Served) -> None:
    """Issue 8: the residency report's part for this workspace, on its admin page: where it
    is stored, what it holds (the GPT made above), under which keys, and who may process it."""
    with signed_in(served.base, served.owner) as client:
        answer = client.get("/workspace/admin")
    assert answer.status_code == 200
    page = answer.text
    summary = page[page.index('id="residency-summary"'):]
    assert "European Union" in summary.split("</p>")[0]
    data = page[page.index('id="residency-data"'):page.index('id="residency-providers"')]
    assert re.search(r"<th scope=\"row\">gpts</th><td>1</td>", data)
    assert re.search(r'id="residency-keys">[0-9a-f]{16}', page)
    providers = page[page.index('id="residency-providers"'):].split("</table>")[0]
    assert "eu-dev" in providers and "us-dev" not in providers


def test_every_page_has_the_security_headers_and_no_inline_script(served: Served) -> None:
    with signed_in(served.base, served.owner) as client:
        answers = [client.get(path) for path in
                   (*PAGES, f"/workspace/gpts/{served.gpt}/edit")]
    with client_for(served.base) as visitor:
        answers.append(visitor.get("/workspace/login"))
    for answer in answers:
        assert answer.status_code == 200, answer.url
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "same-origin"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "strict-transport-security" not in answer.headers  # plain HTTP here
        assert '<html lang="en">' in answer.text
        # Scripts only from files; no inline script, style or event handler attribute.
        for script in re.findall(r"<script\b[^>]*>", answer.text):
            assert "src=" in script
        assert all(not body.strip() for body in
                   re.findall(r"<script\b[^>]*>(.*?)</script>", answer.text, re.S))
        assert "<style" not in answer.text and " style=" not in answer.text
        assert not re.search(r"\son[a-z]+=", answer.text)


def test_page_text_is_escaped(served: Served) -> None:
    with signed_in(served.base, served.owner) as client:
        gallery = client.get("/workspace/gpts").text
    assert "Writer &lt;b&gt;" in gallery and "Writer <b>" not in gallery
    assert "Drafts &amp; notes" in gallery


def test_static_files_are_cached_and_match_their_integrity(served: Served) -> None:
    with signed_in(served.base, served.owner) as client:
        page = client.get("/workspace/").text
        references = re.findall(
            r'(?:src|href)="(/workspace/static/[^"?]+\?v=[0-9a-f]+)" integrity="(sha384-[^"]+)"',
            page)
        names = {url.split("?")[0].rsplit("/", 1)[1] for url, _ in references}
        assert {"app.js", "app.css", "highlight.css"} <= names
        for url, integrity in references:
            answer = client.get(url)
            assert answer.status_code == 200
            assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert answer.headers["x-content-type-options"] == "nosniff"
            digest = base64.b64encode(hashlib.sha384(answer.content).digest()).decode()
            assert integrity == f"sha384-{digest}", url
        assert client.get("/workspace/static/app.js").headers["content-type"].startswith(
            "text/javascript")
        assert client.get("/workspace/static/nothing.js").status_code == 404


def test_the_shipped_templates_and_assets_are_package_data() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"workspace_web/templates/*.html"' in pyproject
    assert '"workspace_web/static/*"' in pyproject


@pytest.mark.parametrize("path", PAGES)
def test_an_eu_session_at_the_us_pages_is_told_the_eu_address(served: Served,
                                                             path: str) -> None:
    """G3 for the pages: the us server refuses the eu session and names eu's URL."""
    with signed_in(served.base, served.member) as client:
        session = client.cookies["domicile_session_eu"]
    us = served.site.url("us")
    with httpx.Client(base_url=us, timeout=60) as browser:
        browser.cookies.set("domicile_session_eu", session)
        answer = browser.get(path)
    assert answer.status_code == 403
    assert served.base in answer.text
