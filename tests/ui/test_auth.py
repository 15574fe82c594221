"""Signing in and out of the workspace in the browser: the plain form (no JS needed), the
error a wrong password shows, the way back to the sign-in page, and pages that need a session
sending a visitor to it."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, expect

from tests.ui.conftest import PASSWORD, UiSite, make_member, new_context, sign_in_with_form


def test_sign_in_with_the_form_then_sign_out(browser: Browser, live: UiSite) -> None:
    context = new_context(browser)
    page = context.new_page()
    sign_in_with_form(page, live, live.owner.email, PASSWORD)
    expect(page).to_have_url(live.url("/workspace/"))
    expect(page.locator("#composer")).to_be_visible()
    expect(page.locator("#residency-badge")).to_contain_text("European Union")
    page.click("#sign-out")
    expect(page).to_have_url(live.url("/workspace/login"))
    page.goto(live.url("/workspace/"))  # the session has ended: back to the sign-in page
    expect(page).to_have_url(re.compile(re.escape(live.url("/workspace/login"))))
    context.close()


def test_sign_in_works_without_javascript(browser: Browser, live: UiSite) -> None:
    context = new_context(browser, java_script_enabled=False)
    page = context.new_page()
    sign_in_with_form(page, live, live.member.email, PASSWORD)
    expect(page).to_have_url(live.url("/workspace/"))
    expect(page.locator("#composer")).to_be_visible()
    context.close()


def test_a_wrong_password_shows_the_error(browser: Browser, live: UiSite) -> None:
    context = new_context(browser)
    page = context.new_page()
    sign_in_with_form(page, live, live.member.email, "not the password")
    error = page.locator("#login-error")
    expect(error).to_have_text("Wrong email or password.")
    expect(error).to_have_attribute("role", "alert")
    expect(page.locator("#composer")).to_have_count(0)
    context.close()


def test_the_chat_view_sends_a_visitor_to_sign_in(browser: Browser, live: UiSite) -> None:
    context = new_context(browser)
    page = context.new_page()
    page.goto(live.url("/workspace/"))
    expect(page).to_have_url(re.compile(re.escape(live.url("/workspace/login"))))
    expect(page.locator("form#login-form")).to_be_visible()
    context.close()


def test_too_many_wrong_passwords_say_when_to_try_again(browser: Browser, live: UiSite) -> None:
    target = make_member(live.site, live.workspace, "member", with_token=False)
    context = new_context(browser)
    page = context.new_page()
    for _ in range(5):  # the limit per account
        sign_in_with_form(page, live, target.email, "wrong again")
        expect(page.locator("#login-error")).to_have_text("Wrong email or password.")
    sign_in_with_form(page, live, target.email, PASSWORD)  # even the right one, for now
    expect(page.locator("#login-error")).to_have_text(
        re.compile(r"^Too many attempts\. Try again in \d+ seconds?\.$"))
    expect(page.locator("#composer")).to_have_count(0)
    context.close()
