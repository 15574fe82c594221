"""Building a GPT in the browser (instructions, a knowledge file uploaded first) and chatting
with it from the gallery: the reply is grounded in the knowledge file's passage.

The GPT answers with the loopback fake upstream told to echo the system prompt, so the page
shows what the model was given: the GPT's instructions and the retrieved passage."""

from __future__ import annotations

import re
import secrets

from playwright.sync_api import Page, expect

from tests.ui.conftest import UPSTREAM_MODEL, UiSite, assistant_messages, send


def test_build_a_gpt_with_knowledge_and_chat_with_it(signed_in_page: Page,
                                                     live: UiSite) -> None:
    page = signed_in_page
    name = f"Harbour guide {secrets.token_hex(2)}"
    fact = f"The ferry to Lindholm leaves at {secrets.randbelow(12) + 1} o'clock from pier 7"
    page.goto(live.url("/workspace/gpts"))
    page.click("#new-gpt")
    expect(page).to_have_url(live.url("/workspace/gpts/new"))
    page.fill("#gpt-name", name)
    page.fill("#gpt-description", "Answers about the harbour")
    page.fill("#gpt-instructions", "Answer from the timetable only.")
    page.select_option("#gpt-model", UPSTREAM_MODEL)
    page.fill("#gpt-starters", "When does the ferry leave?\nWhere is pier 7?")
    page.set_input_files("#gpt-files", [
        {"name": "timetable.md", "mimeType": "text/markdown",
         "buffer": f"# Timetable\n\n{fact}.\n".encode()}])
    page.select_option("#gpt-sharing", "workspace")
    page.click("#gpt-save")
    expect(page).to_have_url(live.url("/workspace/gpts"))

    card = page.locator(".gpt-card", has_text=name)
    expect(card).to_have_count(1)
    expect(card).to_contain_text("Answers about the harbour")
    expect(card).to_contain_text("When does the ferry leave?")
    gpt_id = card.get_attribute("data-id")
    assert gpt_id
    with live.api(live.owner) as api:
        stored = api.get(f"/gpts/{gpt_id}").json()
    assert stored["instructions"] == "Answer from the timetable only."
    assert len(stored["file_ids"]) == 1, "the knowledge file was not attached"

    live.upstream.behaviour.echo = "system"  # the reply shows what the model was told
    card.get_by_role("link", name=re.compile("^Chat", re.I)).click()
    expect(page).to_have_url(re.compile(re.escape(f"/workspace/?gpt={gpt_id}")))
    expect(page.locator("#gpt")).to_have_value(gpt_id)
    send(page, "When does the ferry to Lindholm leave?", model=UPSTREAM_MODEL)
    reply = assistant_messages(page).last
    expect(reply).to_have_attribute("data-status", "complete", timeout=60_000)
    expect(reply.locator(".content")).to_contain_text("Answer from the timetable only.")
    expect(reply.locator(".content")).to_contain_text(fact)
