"""Chatting in the web UI as a person does, in headless Chromium against the real stack: streamed replies, Stop,
the keyboard, settings."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pytest
from playwright.sync_api import expect

from browser_ui import stored_chat
from stack import MODEL

pytestmark = pytest.mark.browser

SHORT = {"max_tokens": 24, "temperature": 0}

RECORD_REPLY_LENGTHS = """() => {
    window.replyLengths = [];
    new MutationObserver(() => {
        const reply = [...document.querySelectorAll('article.message.assistant .markdown')].pop();
        const length = reply ? reply.textContent.length : 0;
        if (window.replyLengths.at(-1) !== length) window.replyLengths.push(length);
    }).observe(document.querySelector('.messages'), {subtree: true, childList: true, characterData: true});
}"""


def current_session_id(ui) -> str:
    return ui.page.locator("li.session.current").get_attribute("data-session-id")


def test_a_reply_streams_in_piece_by_piece_then_shows_its_figures(new_ui, stack):
    ui = new_ui(settings=SHORT).connected()
    ui.page.evaluate(RECORD_REPLY_LENGTHS)
    ui.send("Count from one to ten in words.")
    ui.wait_reply_done()
    lengths = ui.page.evaluate("window.replyLengths")
    final = lengths[-1]
    partial = sorted({n for n in lengths if 0 < n < final})
    assert len(partial) >= 3, f"the reply appeared in {len(partial)} partial updates before the end: {lengths}"
    stats = ui.replies.last.get_by_test_id("reply-stats").inner_text()
    tokens = int(re.search(r"(\d+) tokens", stats).group(1))
    assert re.search(r"TTFT \d+ ms", stats) and re.search(r"[\d.]+ tok/s", stats), stats

    # What the page shows is what the server stored for this new session (now selected in the sidebar).
    session_id = current_session_id(ui)
    stored = httpx.get(f"{stack.api_url}/sessions/{session_id}/messages").json()["data"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["completion_tokens"] == tokens and tokens <= SHORT["max_tokens"]
    assert ui.page.locator("h1.chat-title").inner_text() == "Count from one to ten in words."
    ui.screenshot("desktop-reply")
    ui.assert_no_page_errors()


def test_stop_ends_a_long_reply_and_frees_the_engine(new_ui, stack):
    ui = new_ui(settings={"max_tokens": 400, "temperature": 0.8}).connected()
    ui.send("Write a very long story about a dragon who learns to cook.")
    expect(ui.replies.last.locator(".markdown")).to_have_text(re.compile(r"\S"))  # text is streaming in
    assert stack.triton_metric("llm_engine_active_requests") >= 1, "the engine should be generating the reply"
    ui.page.get_by_role("button", name="Stop").click()
    stopped = time.monotonic()
    expect(ui.replies.last.get_by_test_id("reply-stats")).to_contain_text("stopped")
    while stack.triton_metric("llm_engine_active_requests") > 0:
        assert time.monotonic() - stopped < 5, "the engine still holds the stopped request"
        time.sleep(0.05)
    freed_ms = (time.monotonic() - stopped) * 1000
    expect(ui.page.get_by_role("button", name="Send")).to_be_visible()

    stored = httpx.get(f"{stack.api_url}/sessions/{current_session_id(ui)}/messages").json()["data"]
    assert stored[-1]["role"] == "assistant" and stored[-1]["finish_reason"] == "cancelled"
    assert stored[-1]["content"].strip(), "the partial reply is kept, as the user saw it"
    print(f"engine freed {freed_ms:.0f} ms after the Stop click")
    ui.assert_no_page_errors()


def test_enter_sends_and_shift_enter_starts_a_new_line(new_ui):
    ui = new_ui(settings={"max_tokens": 4, "temperature": 0}).connected()
    ui.composer.click()
    ui.page.keyboard.type("line one")
    ui.page.keyboard.press("Shift+Enter")
    ui.page.keyboard.type("line two")
    expect(ui.composer).to_have_value("line one\nline two")
    expect(ui.page.locator("article.message.user")).to_have_count(0)  # nothing sent yet
    ui.page.keyboard.press("Enter")
    expect(ui.page.locator("article.message.user .plain")).to_have_text("line one\nline two")
    expect(ui.composer).to_have_value("")
    ui.wait_reply_done()
    ui.assert_no_page_errors()


def test_settings_are_remembered_across_a_reload_sent_with_each_message_and_reset(new_ui):
    ui = new_ui().connected()
    sent: list[dict] = []
    ui.page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    ui.settings(temperature="0.3", top_k="5", max_tokens="6", system_prompt="Answer in one word.")

    ui.page.reload()
    ui.connected()
    ui.page.get_by_role("button", name="Settings", exact=True).click()
    panel = ui.page.get_by_role("complementary", name="Settings")
    expect(panel.locator("input[name=temperature]")).to_have_value("0.3")
    expect(panel.locator("input[name=top_k]")).to_have_value("5")
    expect(panel.locator("input[name=max_tokens]")).to_have_value("6")
    expect(panel.get_by_label("System prompt")).to_have_value("Answer in one word.")
    expect(panel.get_by_label("Model").locator("option")).to_contain_text([re.compile("Server default"), MODEL])
    ui.screenshot("desktop-settings")

    ui.send("Name a colour.")
    ui.wait_reply_done()
    chats = [frame for frame in sent if frame["type"] == "chat"]
    assert len(chats) == 1 and chats[0]["settings"] == {
        "temperature": 0.3,
        "top_p": 1,
        "top_k": 5,
        "max_tokens": 6,
        "repetition_penalty": 1,
        "system_prompt": "Answer in one word.",
    }
    tokens = int(re.search(r"(\d+) tokens", ui.replies.last.get_by_test_id("reply-stats").inner_text()).group(1))
    assert tokens <= 6

    panel.get_by_role("button", name="Reset to defaults").click()
    expect(panel.locator("input[name=max_tokens]")).to_have_value("512")
    ui.page.reload()
    ui.page.get_by_role("button", name="Settings", exact=True).click()
    expect(panel.locator("input[name=temperature]")).to_have_value("0.7")
    expect(panel.get_by_label("System prompt")).to_have_value("")
    ui.assert_no_page_errors()


RECORD_CONNECTION_STATES = """() => {
    window.connectionStates = [];
    const badge = document.querySelector('.connection');
    new MutationObserver(() => window.connectionStates.push(badge.dataset.status))
        .observe(badge, {attributes: true, attributeFilter: ['data-status']});
}"""


def test_the_chat_reconnects_by_itself_after_the_connection_drops(new_ui):
    ui = new_ui(settings={"max_tokens": 4, "temperature": 0})
    # Playwright passes the page's WebSocket through to the real server, so the test can cut it.
    sockets = []

    def pass_through(ws) -> None:
        ws.connect_to_server()
        sockets.append(ws)

    ui.page.route_web_socket(re.compile(r"/v1/chat/ws$"), pass_through)
    ui.page.reload()
    ui.connected()
    ui.page.evaluate(RECORD_CONNECTION_STATES)
    # The page before the reload may have opened a socket of its own while unloading: cut every one.
    before = len(sockets)
    for ws in sockets:
        ws.close(code=1001, reason="cut by the test")
    ui.page.wait_for_function(  # a function, not an expression string: the page's CSP forbids eval
        "() => window.connectionStates.includes('retrying') && window.connectionStates.at(-1) === 'connected'"
    )
    states = ui.page.evaluate("window.connectionStates")
    assert states[:1] == ["retrying"] and states[-1] == "connected" and len(sockets) == before + 1, states
    ui.send("Hi")
    ui.wait_reply_done()
    ui.assert_no_page_errors()


SCROLL_STATE = """() => { const box = document.querySelector('.messages');
    return {top: box.scrollTop, atBottom: box.scrollHeight - box.scrollTop - box.clientHeight < 2}; }"""


def test_auto_scroll_stops_when_the_reader_scrolls_up_and_resumes_at_the_bottom(new_ui, stack):
    turns = [(role, f"Earlier message {i}.") for i in range(12) for role in ("user", "assistant")]
    session_id = stored_chat(stack, f"Scroll {uuid.uuid4().hex[:6]}", turns)
    ui = new_ui(settings={"max_tokens": 48, "temperature": 0}).connected()
    ui.page.locator(f'li.session[data-session-id="{session_id}"] .session-title').click()
    expect(ui.replies).to_have_count(12)
    ui.page.wait_for_function(f"() => ({SCROLL_STATE})().atBottom")  # opened at the newest message

    ui.send("Count from one to thirty.")  # sending follows the reply...
    expect(ui.replies.last.locator(".markdown")).to_have_text(re.compile(r"\S"))
    ui.page.mouse.move(640, 300)
    ui.page.mouse.wheel(0, -600)  # ...until the reader scrolls up
    ui.page.wait_for_function(f"() => !({SCROLL_STATE})().atBottom")
    expect(ui.page.get_by_role("button", name="Scroll to the latest message")).to_be_visible()
    held = ui.page.evaluate(SCROLL_STATE)["top"]
    ui.wait_reply_done()
    assert ui.page.evaluate(SCROLL_STATE)["top"] == held, "the view moved while the reader was reading above"

    ui.page.get_by_role("button", name="Scroll to the latest message").click()
    assert ui.page.evaluate(SCROLL_STATE)["atBottom"]
    expect(ui.page.get_by_role("button", name="Scroll to the latest message")).to_have_count(0)
    ui.assert_no_page_errors()
