"""The chat list in the web UI: create, switch, rename, delete (with confirmation), export; and phone width."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from playwright.sync_api import expect

from browser_ui import PHONE, stored_chat

pytestmark = pytest.mark.browser

SHORT = {"max_tokens": 6, "temperature": 0}


def sidebar_entry(ui, session_id: str):
    return ui.page.locator(f'li.session[data-session-id="{session_id}"]')


def test_chats_are_created_switched_renamed_and_deleted_after_confirmation(new_ui, stack):
    tag = uuid.uuid4().hex[:6]
    ui = new_ui(settings=SHORT).connected()
    ui.send(f"First chat {tag}: say hi.")
    ui.wait_reply_done()
    first = ui.page.locator("li.session.current").get_attribute("data-session-id")
    first_reply = ui.replies.last.locator(".markdown").inner_text()

    ui.page.get_by_role("button", name="New chat").click()
    expect(ui.page.locator("article.message")).to_have_count(0)
    ui.send(f"Second chat {tag}: say bye.")
    ui.wait_reply_done()
    second = ui.page.locator("li.session.current").get_attribute("data-session-id")
    assert second != first
    expect(sidebar_entry(ui, first)).to_be_visible()

    # Switch back: the first chat's stored messages come back.
    sidebar_entry(ui, first).get_by_role("button", name=f"First chat {tag}").click()
    expect(ui.page.locator("article.message.user .plain")).to_have_text([f"First chat {tag}: say hi."])
    expect(ui.replies.locator(".markdown")).to_have_text([first_reply])
    expect(ui.page.locator("h1.chat-title")).to_have_text(f"First chat {tag}: say hi.")

    # Rename in place.
    sidebar_entry(ui, first).get_by_role("button", name="Rename").click()
    title = ui.page.get_by_role("textbox", name="New title")
    title.fill(f"Greetings {tag}")
    title.press("Enter")
    expect(sidebar_entry(ui, first).locator(".session-title")).to_have_text(f"Greetings {tag}")
    assert httpx.get(f"{stack.api_url}/sessions/{first}").json()["title"] == f"Greetings {tag}"

    # Delete asks first; Cancel keeps the chat.
    sidebar_entry(ui, first).get_by_role("button", name=f"Delete Greetings {tag}").click()
    dialog = ui.page.get_by_role("dialog", name="Delete chat")
    expect(dialog).to_contain_text(f"Greetings {tag}")
    ui.screenshot("desktop-delete-confirmation")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert httpx.get(f"{stack.api_url}/sessions/{first}").status_code == 200

    sidebar_entry(ui, first).get_by_role("button", name=f"Delete Greetings {tag}").click()
    ui.page.get_by_role("dialog", name="Delete chat").get_by_role("button", name="Delete").click()
    expect(sidebar_entry(ui, first)).to_have_count(0)
    expect(ui.page.locator("h1.chat-title")).to_have_text("New chat")  # the open chat was the deleted one
    assert httpx.get(f"{stack.api_url}/sessions/{first}").status_code == 404
    expect(sidebar_entry(ui, second)).to_be_visible()
    ui.assert_no_page_errors()


def test_export_downloads_the_session_as_json(new_ui, stack):
    session_id = stored_chat(stack, f"Export me {uuid.uuid4().hex[:6]}", [("user", "Hi"), ("assistant", "Hello!")])
    ui = new_ui().connected()
    sidebar_entry(ui, session_id).locator(".session-title").click()
    expect(ui.replies).to_have_count(1)
    with ui.page.expect_download() as download_info:
        ui.page.get_by_role("button", name="Export", exact=True).click()
    download = download_info.value
    assert download.suggested_filename == f"{session_id}.json"
    document = json.loads(open(download.path()).read())
    assert document["object"] == "chat.session.export" and document["session"]["id"] == session_id
    assert [(m["role"], m["content"]) for m in document["messages"]] == [("user", "Hi"), ("assistant", "Hello!")]
    ui.assert_no_page_errors()


NO_HORIZONTAL_OVERFLOW = "() => document.documentElement.scrollWidth <= window.innerWidth"


def test_phone_width_has_no_horizontal_overflow(new_ui, stack):
    long_code = "```python\nprint('" + "a very long line of code " * 12 + "')\n```"
    session_id = stored_chat(
        stack,
        f"Phone {uuid.uuid4().hex[:6]}",
        [
            ("user", "Show me code and a long word"),
            (
                "assistant",
                f"Here:\n\n{long_code}\n\nand https://example.invalid/{'x' * 150}\n\n| a | b |\n|---|---|\n| 1 | 2 |",
            ),
        ],
    )
    ui = new_ui(viewport=PHONE).connected()
    assert ui.page.evaluate(NO_HORIZONTAL_OVERFLOW)
    expect(ui.page.get_by_role("navigation", name="Chats")).not_to_be_in_viewport()  # the chats slide in on demand
    ui.screenshot("phone-empty")

    ui.page.get_by_role("button", name="Show chats").click()
    expect(ui.page.get_by_role("navigation", name="Chats")).to_be_in_viewport()
    ui.screenshot("phone-chats")
    sidebar_entry(ui, session_id).locator(".session-title").click()
    expect(ui.page.locator(".code-block")).to_have_count(1)
    expect(ui.page.get_by_role("navigation", name="Chats")).not_to_be_in_viewport()
    assert ui.page.evaluate(NO_HORIZONTAL_OVERFLOW), "the page scrolls sideways at phone width"
    # The long code line scrolls inside its own block instead.
    assert ui.page.evaluate(
        "() => { const code = document.querySelector('.code-block code'); return code.scrollWidth > code.clientWidth; }"
    )
    ui.screenshot("phone-chat")

    ui.page.get_by_role("button", name="Settings", exact=True).click()
    expect(ui.page.get_by_role("complementary", name="Settings")).to_be_in_viewport()
    assert ui.page.evaluate(NO_HORIZONTAL_OVERFLOW)
    ui.screenshot("phone-settings")
    ui.assert_no_page_errors()
