"""Each main page (sign-in, chat, GPT gallery, GPT builder, settings, admin) in light and dark:
an axe-core scan with no serious or critical violation, and screenshots at desktop (1280x800)
and phone (390x844) widths under tests/ui/screenshots/ (gitignored) for a person to look at.

axe-core is injected as a script, which the pages' content security policy rightly refuses;
only the scan's own browser context bypasses the CSP (`bypass_csp=True`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.ui.conftest import (
    DESKTOP,
    PHONE,
    SCREENSHOTS,
    STAND_IN,
    UiSite,
    new_context,
    sign_in,
)

SCHEMES = ("light", "dark")


@dataclass(frozen=True)
class MainPage:
    name: str
    path: str  # may name `{conversation}` or `{gpt}`
    landmark: str  # what shows once the page is there
    signed_in: bool = True


MAIN_PAGES = (
    MainPage("login", "/workspace/login", "form#login-form", signed_in=False),
    MainPage("chat", "/workspace/c/{conversation}", "#composer"),
    MainPage("gpts", "/workspace/gpts", ".gpt-card"),
    MainPage("gpt-builder", "/workspace/gpts/{gpt}/edit", "#gpt-form"),
    MainPage("settings", "/workspace/settings", "#residency"),
    MainPage("admin", "/workspace/admin", "table#members"),
)


@pytest.fixture(scope="module")
def content(ui: UiSite) -> dict[str, str]:
    """Something on each page: a conversation with a reply, and a GPT."""
    with ui.api(ui.owner) as api:
        conversation = api.post("/conversations").json()["id"]
        reply = api.post(f"/conversations/{conversation}/messages",
                         json={"content": "Summarise **this** in `code`:\n\n- one\n- two",
                               "model": STAND_IN})
        assert reply.status_code == 200, reply.text
        gpt = api.post("/gpts", json={"name": "Writer", "description": "Helps with drafts",
                                      "instructions": "Be brief.", "model": STAND_IN,
                                      "conversation_starters": ["Draft a note"]})
        assert gpt.status_code == 201, gpt.text
    return {"conversation": conversation, "gpt": gpt.json()["id"]}


def open_page(context: BrowserContext, ui: UiSite, main_page: MainPage,
              content: dict[str, str]) -> Page:
    if main_page.signed_in:
        sign_in(context, ui, ui.owner)
    page = context.new_page()
    answer = page.goto(ui.url(main_page.path.format(**content)))
    assert answer is not None and answer.status == 200, f"{main_page.name}: {answer}"
    expect(page.locator(main_page.landmark).first).to_be_visible()
    return page


@pytest.fixture
def scan_context(browser: Browser, request: pytest.FixtureRequest) -> Iterator[BrowserContext]:
    context = new_context(browser, bypass_csp=True, color_scheme=request.param)
    yield context
    context.close()


def serious(violations: list[dict[str, Any]]) -> list[str]:
    return [f"{v['id']} ({v['impact']}): {v['help']} at "
            + ", ".join(str(node["target"]) for node in v["nodes"][:5])
            for v in violations if v.get("impact") in ("serious", "critical")]


@pytest.mark.parametrize("scan_context", SCHEMES, indirect=True)
@pytest.mark.parametrize("main_page", MAIN_PAGES, ids=lambda p: p.name)
def test_no_serious_accessibility_violations(scan_context: BrowserContext, ui: UiSite,
                                             content: dict[str, str], main_page: MainPage,
                                             axe_source: str) -> None:
    page = open_page(scan_context, ui, main_page, content)
    page.add_script_tag(content=axe_source)
    results = page.evaluate(
        "async () => await axe.run(document, {resultTypes: ['violations']})")
    assert results["testEngine"]["name"] == "axe-core"  # the scan did run
    assert serious(results["violations"]) == []


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("main_page", MAIN_PAGES, ids=lambda p: p.name)
def test_screenshots(browser: Browser, ui: UiSite, content: dict[str, str],
                     main_page: MainPage, scheme: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    backgrounds = []
    for width_name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = new_context(browser, viewport=viewport, color_scheme=scheme,
                              is_mobile=viewport is PHONE)
        page = open_page(context, ui, main_page, content)
        assert page.evaluate("() => matchMedia('(prefers-color-scheme: dark)').matches") == (
            scheme == "dark")
        # The page takes the screen's width: nothing runs off to the side.
        assert page.evaluate(
            "() => document.documentElement.scrollWidth <= window.innerWidth + 1"), (
            f"{main_page.name} scrolls sideways at {viewport['width']} px")
        backgrounds.append(page.evaluate(
            "() => getComputedStyle(document.body).backgroundColor"))
        path = SCREENSHOTS / f"{main_page.name}-{width_name}-{scheme}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        context.close()
    assert len(set(backgrounds)) == 1  # one look at both widths


def test_dark_mode_changes_the_look(browser: Browser, ui: UiSite,
                                    content: dict[str, str]) -> None:
    looks = {}
    for scheme in SCHEMES:
        context = new_context(browser, color_scheme=scheme)
        page = open_page(context, ui, MAIN_PAGES[1], content)
        looks[scheme] = page.evaluate(
            "() => [getComputedStyle(document.body).backgroundColor,"
            " getComputedStyle(document.body).color]")
        context.close()
    assert looks["light"] != looks["dark"]


@pytest.mark.parametrize("main_page", MAIN_PAGES, ids=lambda p: p.name)
def test_pages_run_under_their_policy_without_errors(browser: Browser, ui: UiSite,
                                                     content: dict[str, str],
                                                     main_page: MainPage) -> None:
    """No script or style refused by the content security policy, no script error, no
    failed request: the page works as served, with no exemption."""
    context = new_context(browser)
    problems: list[str] = []
    if main_page.signed_in:
        sign_in(context, ui, ui.owner)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    answer = page.goto(ui.url(main_page.path.format(**content)))
    assert answer is not None and answer.status == 200
    policy = answer.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "object-src 'none'" in policy
    assert answer.headers.get("x-frame-options") == "DENY"
    expect(page.locator(main_page.landmark).first).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert page.evaluate("() => document.documentElement.lang") == "en"
    # Vendored assets only, each pinned by its hash (no CDN: nothing from another origin).
    assets = page.evaluate("""() => [...document.querySelectorAll(
        'script[src], link[rel=stylesheet]')].map(e => [e.src || e.href, e.integrity])""")
    assert assets, "no script or stylesheet"
    for url, integrity in assets:
        assert url.startswith(ui.url("/workspace/static/")) and "?v=" in url, url
        assert integrity.startswith("sha384-"), url
    assert problems == []
    context.close()
