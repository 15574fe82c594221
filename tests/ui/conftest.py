"""The workspace's web pages in a real browser: Debian's Chromium (/usr/bin/chromium, driven by
Playwright; never `playwright install`) against one real `domicile serve` per test module.

The site has a workspace in eu with an owner and a plain member (made with the real CLI), the
`dev-echo` provider (a deterministic stand-in, not a model: it echoes the prompt) and a
loopback fake upstream (`llama-ui`, tests/gateway/upstream.py) that a test can make stall
mid-reply. Without Chromium or axe-core the browser tests skip with one line, and fail under
CI=true (CI must not pass without them), as the PostgreSQL tests do.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.e2e.harness import Server, Site, init_site
from tests.gateway.support import LoopThread
from tests.gateway.upstream import FakeUpstream

CHROMIUM = Path("/usr/bin/chromium")
UI_DIR = Path(__file__).parent
AXE_JS = UI_DIR / "vendor" / "axe-core" / "axe.min.js"
SCREENSHOTS = UI_DIR / "screenshots"

STAND_IN = "dev-echo"  # deterministic stand-in, not a model: replies with the prompt
UPSTREAM_MODEL = "llama-ui"  # the loopback fake upstream (can be told to stall)
PASSWORD = "correct horse battery staple"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Generous: a slow CI machine; no test depends on how fast anything is.
TIMEOUT_MS = 15_000

SKIP_PREFIX = "Browser tests not run: "

expect.set_options(timeout=TIMEOUT_MS)

# The flags of shared/RECIPES.md: without the background-networking ones Chromium tries to
# reach the internet at start.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def ui_missing(reason: str) -> NoReturn:
    """Skip, loudly; under CI=true fail: CI must not pass without the browser tests."""
    message = f"{SKIP_PREFIX}{reason}; run `make install-test` (as root it installs it)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Every skip for a missing browser at one location, so `-ra` shows one line."""
    report: pytest.TestReport = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and SKIP_PREFIX in longrepr[2]:
        report.longrepr = (__file__, ui_missing.__code__.co_firstlineno, longrepr[2])
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the browser tests and run them last: Playwright's sync API keeps an event loop
    running in the main thread once it has started, and pytest-asyncio's tests cannot run
    after that in the same process."""
    browser = [item for item in items if UI_DIR in item.path.parents]
    for item in browser:
        item.add_marker(pytest.mark.ui)
    others = [item for item in items if UI_DIR not in item.path.parents]
    items[:] = others + browser


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not CHROMIUM.exists():
        ui_missing(f"{CHROMIUM} is missing (Debian: `apt-get install chromium`)")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM),
            "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE_JS.exists():
        ui_missing(f"{AXE_JS.relative_to(UI_DIR.parent.parent)} is missing (axe-core from npm)")
    return AXE_JS.read_text()


# -- the site -----------------------------------------------------------------------------------

@dataclass
class Member:
    user: str
    email: str
    token: str
    role: str


@dataclass
class UiSite:
    site: Site
    server: Server
    upstream: FakeUpstream
    workspace: str
    owner: Member
    member: Member

    @property
    def base(self) -> str:
        return self.site.url("eu")

    def url(self, path: str) -> str:
        return self.base + path

    def api(self, member: Member) -> httpx.Client:
        """The JSON API as `member` (a bearer token), to set things up or check them."""
        return httpx.Client(base_url=self.base + "/workspace/api",
                            headers={"authorization": f"Bearer {member.token}"}, timeout=60)


@pytest.fixture(scope="session")
def ui_upstream() -> Iterator[FakeUpstream]:
    loop = LoopThread()
    upstream = FakeUpstream("ui-up")
    loop.run(upstream.start())
    yield upstream
    loop.run(upstream.stop())
    loop.close()


def make_member(site: Site, workspace: str, role: str, *, with_token: bool = True) -> Member:
    """A member with PASSWORD (and an API token unless `with_token` is false: then "")."""
    email = f"{role}-{secrets.token_hex(4)}@example.com"
    user = site.cli("user", "add", "--workspace", workspace, "--email", email, "--role", role,
                    "--password-stdin", stdin=PASSWORD + "\n")["id"]
    token = site.cli("token", "create", "--workspace", workspace,
                     "--user", user)["token"] if with_token else ""
    return Member(str(user), email, str(token), role)


def serve_site(root: Path, upstream: FakeUpstream) -> tuple[Site, Server, str]:
    """A site with the fake upstream in eu, an org and an eu workspace, served."""
    site = init_site(root / "site")
    site.add_provider("eu", name="ui-up", kind="openai-compatible", base_url=upstream.base_url,
                      models=[UPSTREAM_MODEL], timeout_s=30)
    # The message limit is not what these pages are tested for (tests/workspace has it); a
    # module (or the UI bench) may send more than the default 30 a minute.
    with site.config.open("a") as config:
        config.write("\n[workspace]\nmessages_per_minute = 10000\n")
    org = site.cli("org", "create", "--name", "Acme")["id"]
    workspace = str(site.cli("workspace", "create", "--org", org, "--name", "Team",
                             "--region", "eu")["id"])
    server = Server(site, root)
    server.wait_ready()
    return site, server, workspace


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, ui_upstream: FakeUpstream) -> Iterator[UiSite]:
    """One real `domicile serve` for the test module."""
    site, server, workspace = serve_site(tmp_path_factory.mktemp("ui"), ui_upstream)
    try:
        yield UiSite(site, server, ui_upstream, workspace, make_member(site, workspace, "owner"),
                     make_member(site, workspace, "member"))
    finally:
        server.stop()


@pytest.fixture
def live(ui: UiSite) -> UiSite:
    """The module's site with its upstream answering normally again."""
    ui.upstream.reset()
    return ui


# -- the browser --------------------------------------------------------------------------------

def new_context(browser: Browser, **options: Any) -> BrowserContext:
    context = browser.new_context(**{"viewport": DESKTOP, **options})
    context.set_default_timeout(TIMEOUT_MS)
    return context


def sign_in(context: BrowserContext, ui: UiSite, member: Member) -> None:
    """The session cookies through the JSON API's sign-in (the form has tests of its own)."""
    answer = context.request.post(ui.url("/workspace/api/login"),
                                  data={"email": member.email, "password": PASSWORD},
                                  headers={"origin": ui.base})
    assert answer.ok, answer.text()


def sign_in_with_form(page: Page, ui: UiSite, email: str, password: str) -> None:
    page.goto(ui.url("/workspace/login"))
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("#sign-in")


@pytest.fixture
def signed_in_context(browser: Browser, live: UiSite) -> Iterator[BrowserContext]:
    context = new_context(browser)
    sign_in(context, live, live.owner)
    yield context
    context.close()


@pytest.fixture
def signed_in_page(signed_in_context: BrowserContext, live: UiSite) -> Page:
    """The owner, signed in, on the chat view at desktop width."""
    page = signed_in_context.new_page()
    page.goto(live.url("/workspace/"))
    expect(page.locator("#composer")).to_be_visible()
    return page


# -- what a test does in the chat view -----------------------------------------------------------

def assistant_messages(page: Page) -> Any:
    return page.locator('#messages article.message[data-role="assistant"]')


def send(page: Page, text: str, *, model: str | None = STAND_IN) -> None:
    """Type `text` into the composer and press Enter (the design's way to send)."""
    if model is not None:
        page.select_option("#model", model)
    page.fill("#composer", text)
    page.press("#composer", "Enter")


def send_and_wait(page: Page, text: str, *, model: str | None = STAND_IN) -> None:
    """Send, then wait until the reply is complete and shows `text` (dev-echo echoes it)."""
    before = assistant_messages(page).count()
    send(page, text, model=model)
    expect(assistant_messages(page)).to_have_count(before + 1)
    reply = assistant_messages(page).last
    expect(reply).to_have_attribute("data-status", "complete")
    expect(reply.locator(".content")).to_contain_text(text)
