"""Model output cannot run code in the page (live and stored replies), the UI's security headers, and the API
key flow with auth on."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
from playwright.sync_api import expect

from browser_ui import stored_chat
from helpers import create_key_with_cli
from stack import BIN

pytestmark = pytest.mark.browser

PAYLOAD = '<img src=x onerror="window.__xss=1">'  # the model echoes this prompt's HTML exactly (greedy)

ELEMENTS_WITH_HANDLERS = """() => [...document.querySelectorAll('.messages *')]
    .filter(el => [...el.attributes].some(a => a.name.startsWith('on') || /javascript:/i.test(a.value)))
    .map(el => el.outerHTML)"""


def assert_nothing_ran(ui) -> None:
    ui.page.wait_for_load_state("networkidle")  # the broken images have failed to load by now
    assert ui.page.evaluate("() => window.__xss") is None, "injected code ran"
    assert ui.page.evaluate(ELEMENTS_WITH_HANDLERS) == []
    assert not [line for line in ui.console if "xss" in line.lower()], ui.console
    ui.assert_no_page_errors()


def test_a_reply_that_echoes_an_event_handler_is_rendered_as_html_without_it(new_ui, stack):
    ui = new_ui(settings={"max_tokens": 20, "temperature": 0}).connected()  # the payload is 15 tokens
    ui.send(f"Please repeat this HTML exactly: {PAYLOAD}")
    ui.wait_reply_done()
    session_id = ui.page.locator("li.session.current").get_attribute("data-session-id")
    reply = httpx.get(f"{stack.api_url}/sessions/{session_id}/messages").json()["data"][-1]["content"]
    echoed = re.search(r'<img src=x onerror="window.__xss=1"\s*/?>', reply)  # the model may self-close it
    assert echoed, f"the model did not echo the payload this time, so this test proves nothing: {reply!r}"

    # Rendered as HTML through the Markdown path (an <img> element exists), with its handler removed.
    image = ui.replies.last.locator(".markdown img")
    expect(image).to_have_count(1)
    assert image.get_attribute("src") == "x" and image.get_attribute("onerror") is None
    assert_nothing_ran(ui)


def test_a_stored_reply_with_script_svg_and_javascript_links_runs_nothing(new_ui, stack):
    hostile = "\n\n".join(
        [
            "**Bold** text and a list:\n\n- one\n- two",
            PAYLOAD,
            "<script>window.__xss = 2; console.log('xss script ran')</script>",
            '<svg onload="window.__xss=3"><circle r="4"/></svg>',
            '[click me](javascript:window.__xss=4) and <a href="javascript:window.__xss=5">this</a>',
            '<iframe src="javascript:parent.__xss=6"></iframe><form action="javascript:window.__xss=7"><button>go</button></form>',
            '```html\n<img src=x onerror="window.__xss=8">\n```',
        ]
    )
    session_id = stored_chat(stack, f"Hostile {uuid.uuid4().hex[:6]}", [("user", "hi"), ("assistant", hostile)])
    ui = new_ui().connected()
    ui.page.locator(f'li.session[data-session-id="{session_id}"] .session-title').click()
    reply = ui.replies.last.locator(".markdown")
    # The Markdown path ran: bold, a list, a highlighted code block (whose HTML shows as text) and the image.
    expect(reply.locator("strong")).to_have_text("Bold")
    expect(reply.locator("li")).to_have_count(2)
    expect(reply.locator(".code-block code")).to_contain_text('<img src=x onerror="window.__xss=8">')
    expect(reply.locator("img")).to_have_count(1)
    expect(reply.locator("script, iframe, form, input, style")).to_have_count(0)
    ui.page.locator(".markdown a", has_text="click me").click()  # a neutralised link goes nowhere
    assert_nothing_ran(ui)
    ui.screenshot("desktop-hostile-reply")


def test_the_ui_is_served_with_a_content_security_policy_and_the_api_routes_still_answer(stack):
    page = httpx.get(f"{stack.base_url}/")
    assert page.status_code == 200 and '<div id="app">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = re.search(r'src="\./(assets/[^"]+\.js)"', page.text).group(1)
    assert httpx.get(f"{stack.base_url}/{script}").headers["cache-control"].endswith("immutable")
    assert httpx.get(f"{stack.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{stack.api_url}/models").status_code == 200
    assert "llmserve_http_requests_total" in httpx.get(f"{stack.base_url}/metrics").text


def test_with_auth_on_the_key_is_asked_for_checked_kept_in_the_browser_and_never_put_in_a_url(
    new_ui, start_frontend_with, tmp_path
):
    env = {"LLMSERVE_AUTH": "true", "LLMSERVE_HOME": str(tmp_path / "home")}
    frontend = start_frontend_with(env)
    key = create_key_with_cli({"PATH": str(BIN), **env}, "--name", f"ui-{uuid.uuid4().hex[:6]}")

    ui = new_ui(server=frontend, settings={"max_tokens": 4, "temperature": 0})
    urls: list[str] = []
    sent: list[dict] = []
    ui.page.on("request", lambda request: urls.append(request.url))
    ui.page.on("websocket", lambda ws: (urls.append(ws.url), ws.on("framesent", lambda p: sent.append(json.loads(p)))))

    dialog = ui.page.get_by_role("dialog", name="API key")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Key").fill("sk-llms-not-a-key")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.get_by_role("alert")).to_contain_text("Incorrect API key")
    ui.screenshot("desktop-api-key")
    dialog.get_by_label("Key").fill(key)
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_have_count(0)
    ui.connected()
    ui.send("Hello")
    ui.wait_reply_done()
    assert sent[0] == {"type": "auth", "api_key": key}, "the key goes in the first WebSocket frame"
    assert any(frame["type"] == "chat" for frame in sent)

    ui.page.reload()  # remembered: no dialog, connected with the stored key
    ui.connected()
    expect(ui.page.get_by_role("dialog", name="API key")).to_have_count(0)
    expect(ui.page.locator("li.session")).to_have_count(1)  # this key's one chat
    assert urls and not [url for url in urls if key in url or "sk-llms" in url], "a key appeared in a URL"
    ui.assert_no_page_errors()
