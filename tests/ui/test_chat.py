"""The chat view in the browser: a streamed reply, stopping one mid-stream, attachments with
their previews, switching and searching conversations, a reply that carries markup rendered
inert, and the layout at a phone's width.

`dev-echo` (a deterministic stand-in, not a model) answers by echoing the prompt; the loopback
fake upstream `llama-ui` answers where a test must hold a reply open (it stalls after its first
words until the browser lets go).
"""

from __future__ import annotations

import io
import re
import secrets

from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Dialog, Locator, Page, expect

from tests.ui.conftest import (
    PHONE,
    UPSTREAM_MODEL,
    UiSite,
    assistant_messages,
    new_context,
    send,
    send_and_wait,
    sign_in,
)


def png_bytes(side: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (30, 120, 200)).save(out, "PNG")
    return out.getvalue()


def conversation_id(page: Page) -> str:
    """The open conversation's id, from the address (/workspace/c/{id})."""
    expect(page).to_have_url(re.compile(r"/workspace/c/[^/?#]+"))
    return page.url.rsplit("/c/", 1)[1].split("?")[0]


def test_the_empty_state_then_a_streamed_reply(signed_in_page: Page) -> None:
    page = signed_in_page
    expect(page.locator("#empty-state")).to_contain_text("Start a conversation")
    send_and_wait(page, "one two three four five")
    user = page.locator('#messages article.message[data-role="user"]').last
    expect(user.locator(".content")).to_have_text("one two three four five")
    expect(page.locator("#empty-state")).to_be_hidden()
    expect(page.locator("#stop")).to_be_hidden()
    expect(assistant_messages(page).last.locator(".copy")).to_be_visible()
    # The new conversation is in the sidebar, under today, titled by its first message.
    expect(page.locator("#conversations h3.day").first).to_have_text("Today")
    expect(page.locator("#conversations a.conversation").first).to_contain_text("one two three")


def test_stop_keeps_the_partial_reply_as_stopped(signed_in_page: Page, live: UiSite) -> None:
    live.upstream.behaviour.then = "stall"  # first words, then silence until the browser leaves
    page = signed_in_page
    send(page, "tell me more", model=UPSTREAM_MODEL)
    reply = assistant_messages(page).last
    expect(reply.locator(".content")).to_contain_text("ui-up")  # the first words streamed in
    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(page.locator("#stop")).to_be_hidden()
    assert live.upstream.stream_cancelled.wait(20), "the upstream's stream was not closed"
    # Kept as stopped: the conversation opened again shows the partial reply so.
    page.goto(live.url(f"/workspace/c/{conversation_id(page)}"))
    kept = assistant_messages(page).last
    expect(kept).to_have_attribute("data-status", "stopped")
    expect(kept.locator(".content")).to_contain_text("ui-up")


def test_escape_stops_a_reply(signed_in_page: Page, live: UiSite) -> None:
    live.upstream.behaviour.then = "stall"
    page = signed_in_page
    send(page, "and then", model=UPSTREAM_MODEL)
    expect(assistant_messages(page).last.locator(".content")).to_contain_text("ui-up")
    page.keyboard.press("Escape")
    expect(assistant_messages(page).last).to_have_attribute("data-status", "stopped")


def test_attached_file_and_image_show_previews(signed_in_page: Page) -> None:
    page = signed_in_page
    page.set_input_files("#attach", [
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"some notes to read"},
        {"name": "chart.png", "mimeType": "image/png", "buffer": png_bytes()},
    ])
    attachments = page.locator("#attachments .attachment")
    expect(attachments).to_have_count(2)
    expect(attachments.filter(has_text="notes.txt")).to_have_count(1)
    preview = page.locator("#attachments img.preview")
    expect(preview).to_have_count(1)
    expect(preview).to_be_visible()
    assert preview.evaluate("img => img.naturalWidth") > 0, "the image preview did not load"
    send_and_wait(page, "what is in these")
    shown = page.locator('#messages article.message[data-role="user"] img.attachment-image')
    expect(shown).to_have_count(1)
    expect(shown).to_have_attribute("alt", "chart.png")
    expect(shown).to_have_attribute("src", re.compile(r"^/workspace/api/files/[^/]+/content$"))
    expect(shown).to_be_visible()
    page.wait_for_function(
        "() => document.querySelector('img.attachment-image').naturalWidth > 0")


def test_switch_between_conversations(signed_in_page: Page) -> None:
    page = signed_in_page
    first, second = f"apples {secrets.token_hex(3)}", f"pears {secrets.token_hex(3)}"
    send_and_wait(page, first)
    first_id = conversation_id(page)
    page.click("#new-chat")
    expect(page.locator("#empty-state")).to_be_visible()
    send_and_wait(page, second)
    second_id = conversation_id(page)
    assert first_id != second_id
    page.click(f'#conversations a.conversation[data-id="{first_id}"]')
    expect(page).to_have_url(re.compile(f"/workspace/c/{first_id}$"))
    expect(page.locator("#messages")).to_contain_text(first)
    expect(page.locator("#messages")).not_to_contain_text(second)
    page.click(f'#conversations a.conversation[data-id="{second_id}"]')
    expect(page.locator("#messages")).to_contain_text(second)
    expect(page.locator("#messages")).not_to_contain_text(first)


def test_search_finds_a_conversation_by_title(signed_in_page: Page) -> None:
    page = signed_in_page
    word = f"zebra{secrets.token_hex(3)}"
    send_and_wait(page, f"{word} facts")
    wanted = conversation_id(page)
    page.click("#new-chat")
    send_and_wait(page, "something else entirely")
    page.fill("#search", word)
    found = page.locator("#conversations a.conversation")
    expect(found).to_have_count(1)
    expect(found).to_have_attribute("data-id", wanted)
    page.fill("#search", "")
    expect(page.locator("#conversations a.conversation")).not_to_have_count(1)


def test_a_reply_with_markup_is_rendered_inert(signed_in_page: Page) -> None:
    page = signed_in_page
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    hostile = ('<script>window.__xss = 1; alert("script")</script> '
               '<img src="x" onerror="window.__xss = 2; alert(\'img\')"> '
               '[link](javascript:window.__xss=3)')
    send(page, hostile)
    reply = assistant_messages(page).last
    expect(reply).to_have_attribute("data-status", "complete")
    page.reload()  # the stored reply as the server renders it, too
    expect(assistant_messages(page).last).to_have_attribute("data-status", "complete")
    messages = page.locator("#messages")
    expect(messages.locator("script")).to_have_count(0)
    expect(messages.locator("[onerror]")).to_have_count(0)
    expect(messages.locator('a[href^="javascript:"]')).to_have_count(0)
    assert page.evaluate("() => typeof window.__xss") == "undefined"
    assert dialogs == []


def test_at_a_phones_width_the_sidebar_is_behind_the_menu(browser: Browser,
                                                          live: UiSite) -> None:
    context = new_context(browser, viewport=PHONE, is_mobile=True, has_touch=True)
    sign_in(context, live, live.owner)
    page = context.new_page()
    page.goto(live.url("/workspace/"))
    expect(page.locator("#menu")).to_be_visible()
    expect(page.locator("nav#sidebar")).to_be_hidden()
    expect(page.locator("#composer")).to_be_visible()
    page.click("#menu")
    expect(page.locator("nav#sidebar")).to_be_visible()
    expect(page.locator("#new-chat")).to_be_visible()
    context.close()


def test_at_desktop_width_the_sidebar_shows_and_the_menu_does_not(
        signed_in_page: Page) -> None:
    expect(signed_in_page.locator("nav#sidebar")).to_be_visible()
    expect(signed_in_page.locator("#menu")).to_be_hidden()


def conversation_tools(page: Page, conversation: str, tool: str) -> Locator:
    """The `.rename` or `.delete` button beside a conversation's link in the sidebar: in the
    link's nearest enclosing element that has one."""
    link = page.locator(f'#conversations a.conversation[data-id="{conversation}"]')
    holder = link.locator(
        f"xpath=ancestor::*[.//*[contains(concat(' ', @class, ' '), ' {tool} ')]][1]")
    return holder.locator(f".{tool}").first


def test_rename_and_delete_a_conversation(signed_in_page: Page, live: UiSite) -> None:
    page = signed_in_page
    new_title = f"Renamed {secrets.token_hex(3)}"
    prompted: list[str] = []

    def answer(dialog: Dialog) -> None:  # a rename may ask by prompt; a delete confirms
        prompted.append(dialog.type)
        dialog.accept(new_title if dialog.type == "prompt" else "")

    page.on("dialog", answer)
    send_and_wait(page, "a title to change")
    conversation = conversation_id(page)
    conversation_tools(page, conversation, "rename").click()
    if "prompt" not in prompted:  # renamed in place: type the new title and press Enter
        page.keyboard.press("Control+A")
        page.keyboard.type(new_title)
        page.keyboard.press("Enter")
    expect(page.locator(f'#conversations a.conversation[data-id="{conversation}"]')
           ).to_contain_text(new_title)
    with live.api(live.owner) as api:
        assert api.get(f"/conversations/{conversation}").json()["title"] == new_title
    conversation_tools(page, conversation, "delete").click()
    expect(page.locator(f'#conversations a.conversation[data-id="{conversation}"]')
           ).to_have_count(0)
    with live.api(live.owner) as api:
        assert api.get(f"/conversations/{conversation}").status_code == 404


def test_no_model_able_to_answer_is_said_in_words(signed_in_page: Page, live: UiSite) -> None:
    live.upstream.behaviour.mode = "fail"  # the only provider of the model answers 500
    page = signed_in_page
    send(page, "anyone there?", model=UPSTREAM_MODEL)
    error = page.locator("#chat-error")
    expect(error).to_have_attribute("role", "alert")
    expect(error).to_contain_text(
        "No model in European Union can answer right now. Try again in a moment.")
    expect(assistant_messages(page).filter(has_text="anyone there")).to_have_count(0)


def test_shift_enter_is_a_new_line_not_a_send(signed_in_page: Page) -> None:
    page = signed_in_page
    page.fill("#composer", "first line")
    page.press("#composer", "Shift+Enter")
    page.keyboard.type("second line")
    expect(page.locator("#composer")).to_have_value("first line\nsecond line")
    expect(page.locator("#messages article.message")).to_have_count(0)


def test_copy_puts_the_reply_on_the_clipboard(signed_in_page: Page,
                                              signed_in_context: BrowserContext) -> None:
    signed_in_context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = signed_in_page
    text = f"copy me {secrets.token_hex(3)}"
    send_and_wait(page, text)
    assistant_messages(page).last.locator(".copy").click()
    page.wait_for_function("async (want) => (await navigator.clipboard.readText()).includes(want)",
                           arg=text)


def test_regenerate_gives_another_reply_to_the_same_message(signed_in_page: Page) -> None:
    page = signed_in_page
    send_and_wait(page, "say it again")
    first = assistant_messages(page).last.get_attribute("data-id")
    expect(page.locator(".regenerate")).to_have_count(1)  # on the last reply only
    page.click(".regenerate")
    reply = assistant_messages(page).last
    expect(reply).not_to_have_attribute("data-id", first or "")
    expect(reply).to_have_attribute("data-status", "complete")
    expect(reply.locator(".content")).to_contain_text("say it again")
    expect(page.locator('#messages article.message[data-role="user"]')).to_have_count(1)
