"""Settings and admin in the browser: what the member is told about their data, an API token
created (its secret shown once, and it works) and revoked (it stops working), a member added
by an admin (who can then sign in), the retention policy set and cleared, and a plain member
kept out of the admin page."""

from __future__ import annotations

import secrets
import time

import httpx
from playwright.sync_api import Browser, Dialog, Page, expect

from tests.ui.conftest import PASSWORD, UiSite, make_member, new_context, sign_in


def accept_dialogs(page: Page) -> None:
    """Confirmations ("Revoke this token?") are answered yes."""
    def accept(dialog: Dialog) -> None:
        dialog.accept()
    page.on("dialog", accept)


def me_with_token(ui: UiSite, token: str) -> int:
    return httpx.get(ui.url("/workspace/api/me"), headers={"authorization": f"Bearer {token}"},
                     timeout=30).status_code


def test_settings_say_where_content_is_kept(signed_in_page: Page, live: UiSite) -> None:
    page = signed_in_page
    page.goto(live.url("/workspace/settings"))
    expect(page.locator("#residency")).to_contain_text("European Union")
    expect(page.locator("#residency")).to_contain_text("encrypted")
    expect(page.locator("#retention")).to_have_text("Kept until you delete it")


def test_create_a_token_see_it_once_use_it_and_revoke_it(browser: Browser,
                                                         live: UiSite) -> None:
    tokenless = make_member(live.site, live.workspace, "member", with_token=False)
    context = new_context(browser)
    sign_in(context, live, tokenless)
    page = context.new_page()
    accept_dialogs(page)
    page.goto(live.url("/workspace/settings"))
    expect(page.locator(".revoke-token")).to_have_count(0)
    page.click("#create-token")
    shown = page.locator("#new-token")
    expect(shown).to_be_visible()
    expect(shown).to_contain_text("dw-")
    secret = next(word for word in shown.inner_text().split() if word.startswith("dw-"))
    assert me_with_token(live, secret) == 200
    page.reload()  # shown once: not on the page again
    expect(page.locator(".revoke-token")).to_have_count(1)
    expect(page.locator("#new-token")).to_be_hidden()
    assert secret not in page.content()
    page.click(".revoke-token")
    expect(page.locator(".revoke-token")).to_have_count(0)
    # A revoked token ends within a second (lookups are cached that long): wait for it.
    deadline = time.monotonic() + 20
    while me_with_token(live, secret) != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert me_with_token(live, secret) == 401
    context.close()


def test_an_admin_adds_a_member_who_can_then_sign_in(signed_in_page: Page,
                                                    live: UiSite) -> None:
    page = signed_in_page
    page.goto(live.url("/workspace/admin"))
    email = f"new-{secrets.token_hex(3)}@example.com"
    page.locator("#add-member-form input[type=email]").fill(email)
    page.locator("#add-member-form input[type=password]").fill(PASSWORD)
    page.locator("#add-member-form [type=submit]").click()
    row = page.locator("table#members tr", has_text=email)
    expect(row).to_have_count(1)
    expect(row.locator("select.role")).to_have_value("member")
    signed = httpx.post(live.url("/workspace/api/login"),
                        json={"email": email, "password": PASSWORD}, timeout=30)
    assert signed.status_code == 200, signed.text


def test_an_admin_sets_and_clears_retention(signed_in_page: Page, live: UiSite) -> None:
    page = signed_in_page
    page.goto(live.url("/workspace/admin"))
    page.fill("#retention-days", "30")
    page.locator("#retention-form [type=submit]").click()
    page.goto(live.url("/workspace/settings"))
    expect(page.locator("#retention")).to_have_text("Deleted after 30 days")
    page.goto(live.url("/workspace/admin"))
    page.fill("#retention-days", "")
    page.locator("#retention-form [type=submit]").click()
    page.goto(live.url("/workspace/settings"))
    expect(page.locator("#retention")).to_have_text("Kept until you delete it")


def test_a_plain_member_is_kept_out_of_admin(browser: Browser, live: UiSite) -> None:
    context = new_context(browser)
    sign_in(context, live, live.member)
    page = context.new_page()
    answer = page.goto(live.url("/workspace/admin"))
    assert answer is not None and answer.status == 403
    expect(page.locator("table#members")).to_have_count(0)
    expect(page.locator("#add-member-form")).to_have_count(0)
    context.close()
