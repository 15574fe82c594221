"""Single sign-on against a REAL OpenID Connect provider: panva/oidc-provider from npm (pinned
in tests/sso/package.json, installed by `make install-test`), run by node on a free loopback
port over plain http, in front of one real `domicile serve`. Not a mock: its discovery, JWKS,
login and consent pages, PKCE checks, codes and signed ID tokens are the library's own.

The provider knows two confidential clients (`domicile-a`, `domicile-b`) and one public one
(`domicile-public`), each with both regions' callbacks as redirect URIs, PKCE required. Every
login name is an account whose email is that name (`unverified.` in front: not verified).
Without node or the npm package the tests skip with one line, and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from domicile.config import load_settings
from domicile.site import Site as DomicileSite
from tests.e2e.harness import Server, Site, init_site

SSO_DIR = Path(__file__).parent
PROVIDER_JS = SSO_DIR / "provider.mjs"
PACKAGE = SSO_DIR / "node_modules" / "oidc-provider" / "package.json"
CALLBACK = "/workspace/sso/callback"
CLIENT_SECRETS = {"domicile-a": "secret-of-client-a-0123456789",
                  "domicile-b": "secret-of-client-b-0123456789"}
DOMAIN = "example.com"
DEADLINE_S = 60.0


def sso_missing(reason: str) -> None:
    message = f"SSO tests not run: {reason}; run `make install-test`"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message} (CI=true: the SSO tests must run)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Provider:
    """The running oidc-provider."""

    issuer: str
    process: subprocess.Popen[str]
    output: list[str]

    def log(self) -> str:
        return "".join(self.output)


def start_provider(redirect_uris: list[str]) -> Provider:
    node = shutil.which("node")
    if node is None:
        sso_missing("node is missing (Debian: `apt-get install nodejs npm`)")
    if not PACKAGE.exists():
        sso_missing("tests/sso/node_modules/oidc-provider is missing")
    clients: list[dict[str, Any]] = [
        {"client_id": client_id, "client_secret": secret, "redirect_uris": redirect_uris,
         "grant_types": ["authorization_code"], "response_types": ["code"]}
        for client_id, secret in CLIENT_SECRETS.items()]
    clients.append({"client_id": "domicile-public", "token_endpoint_auth_method": "none",
                    "redirect_uris": redirect_uris, "grant_types": ["authorization_code"],
                    "response_types": ["code"]})
    port = free_port()
    process = subprocess.Popen([str(node), str(PROVIDER_JS), str(port), json.dumps(clients)],
                               cwd=SSO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith("ready "):
                ready.set()

    threading.Thread(target=pump, daemon=True, name="oidc-provider-log").start()
    if not ready.wait(DEADLINE_S):
        process.kill()
        raise AssertionError(f"oidc-provider did not start: {''.join(output)}")
    return Provider(f"http://127.0.0.1:{port}", process, output)


@dataclass
class SsoSite:
    site: Site
    server: Server
    provider: Provider
    workspace: str  # eu, SSO with domicile-a, allowed: example.com
    plain_workspace: str  # eu, no SSO

    @property
    def base(self) -> str:
        return self.site.url("eu")

    @property
    def callback(self) -> str:
        return self.base + CALLBACK

    def browser(self) -> httpx.Client:
        """A fresh "browser": its own cookie jar, redirects followed by hand."""
        return httpx.Client(timeout=30, follow_redirects=False)

    def set_sso(self, workspace: str, client_id: str = "domicile-a",
                domains: str = DOMAIN, *, issuer: str | None = None,
                check: bool = True) -> Any:
        args = ["workspace", "sso", "set", workspace, "--issuer", issuer or self.provider.issuer,
                "--client-id", client_id, "--allowed-domains", domains]
        secret = CLIENT_SECRETS.get(client_id)
        if secret is not None:
            args.append("--client-secret-stdin")
        return self.site.cli(*args, stdin=f"{secret}\n" if secret else None, check=check)

    @contextlib.contextmanager
    def opened(self) -> Iterator[DomicileSite]:
        """The site opened in this process (as the CLI opens it; faster than a `domicile`
        process per look, which the CLI tests still use)."""
        site = DomicileSite(load_settings(self.site.config))
        try:
            yield site
        finally:
            site.close()

    def audit(self) -> list[dict[str, Any]]:
        """Region eu's audit chain, as `domicile audit export` reads it."""
        with self.opened() as site:
            return [{"actor": e.actor, "action": e.action, "target": e.target,
                     "details": dict(e.details)} for e in site.audit_log("eu").entries()]

    def new_workspace(self, name: str) -> str:
        with self.opened() as site:
            org = site.directory.create_org(name)
            return site.directory.create_workspace(org.id, name, "eu").id


@pytest.fixture(scope="session")
def sso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsoSite]:
    root = tmp_path_factory.mktemp("sso")
    site = init_site(root / "site")
    # Sign-in needs no embedding model: without it the server starts in a second.
    body = site.config.read_text()
    for region in ("eu", "us"):
        body = body.replace(
            f'[[regions.{region}.providers]]\nname = "{region}-embeddings"\n'
            'kind = "local-embeddings"\nmodels = ["all-minilm-l6-v2"]\n', "")
    site.config.write_text(body)
    redirect_uris = [site.url(region) + CALLBACK for region in ("eu", "us")]
    provider = start_provider(redirect_uris)
    server = None
    try:
        org = site.cli("org", "create", "--name", "Acme")["id"]
        workspace = str(site.cli("workspace", "create", "--org", org, "--name", "Team",
                                 "--region", "eu")["id"])
        plain = str(site.cli("workspace", "create", "--org", org, "--name", "Plain",
                             "--region", "eu")["id"])
        server = Server(site, root)
        server.wait_ready()
        sso_site = SsoSite(site, server, provider, workspace, plain)
        sso_site.set_sso(workspace)
        yield sso_site
    finally:
        if server is not None:
            server.stop()
        provider.process.terminate()
        provider.process.wait(timeout=30)


# -- driving the provider's pages, as a browser would ---------------------------------------

_FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', re.S)
_HIDDEN = re.compile(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"')


def through_provider(browser: httpx.Client, url: str, login: str, stop_at: str) -> str:
    """Follow the provider from `url` (its authorization request): sign in as `login` on
    its development login page, consent, and return the URL it sends the browser to once
    that URL starts with `stop_at` (the callback), without calling it."""
    for _ in range(12):
        response = browser.get(url)
        while True:
            if response.status_code in (302, 303):
                url = urljoin(url, response.headers["location"])
                if url.startswith(stop_at):
                    return url
                break
            if response.status_code != 200:
                raise AssertionError(f"provider answered {response.status_code}: "
                                     f"{response.text[:500]}")
            form = _FORM.search(response.text)
            if form is None:
                raise AssertionError(f"no form on the provider's page: {response.text[:500]}")
            action, inner = form.groups()
            fields = {name: unescape(value) for name, value in _HIDDEN.findall(inner)}
            if 'name="login"' in inner:
                fields.update(login=login, password="any password will do")
            response = browser.post(urljoin(url, unescape(action)), data=fields)
    raise AssertionError("the provider never sent the browser back")


SignIn = Callable[..., httpx.Response]


@pytest.fixture
def sign_in(sso: SsoSite) -> SignIn:
    """Sign in through SSO as `login` in `browser` (a fresh one by default): the callback's
    response. `tamper_authorize` / `tamper_callback` change a URL on the way."""

    def run(login: str, *, browser: httpx.Client | None = None,
            workspace: str | None = None,
            tamper_authorize: Callable[[str], str] | None = None,
            tamper_callback: Callable[[str], str] | None = None,
            callback_browser: httpx.Client | None = None) -> httpx.Response:
        browser = browser or sso.browser()
        started = browser.get(f"{sso.base}/workspace/sso/{workspace or sso.workspace}/login")
        assert started.status_code == 303, started.text
        authorize = started.headers["location"]
        assert authorize.startswith(sso.provider.issuer + "/"), authorize
        if tamper_authorize is not None:
            authorize = tamper_authorize(authorize)
        callback = through_provider(browser, authorize, login, sso.callback)
        if tamper_callback is not None:
            callback = tamper_callback(callback)
        return (callback_browser or browser).get(callback)

    return run

