"""What the browser tests share: the browser's settings, a page of the chat UI, a session with stored messages."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
from playwright.sync_api import ConsoleMessage, Page, expect

from stack import Server

CHROMIUM = Path(os.environ.get("LLMSERVE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=30_000)  # a reply on 2 shared CPU cores can take a while


class UI:
    """A page of the chat UI, with what a test needs to see: console lines and page errors."""

    def __init__(self, page: Page, server: Server):
        self.page = page
        self.server = server
        self.console: list[str] = []
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    def open(self) -> UI:
        self.page.goto(self.server.base_url + "/")
        return self

    def connected(self) -> UI:
        expect(self.page.locator(".connection")).to_have_attribute("data-status", "connected")
        return self

    @property
    def composer(self):
        return self.page.get_by_role("textbox", name="Message")

    @property
    def replies(self):
        return self.page.locator("article.message.assistant")

    def send(self, text: str) -> None:
        self.composer.fill(text)
        self.composer.press("Enter")

    def wait_reply_done(self, index: int = -1) -> str:
        """The reply's text once "done" came (its stats then show the server's token count)."""
        reply = self.replies.nth(index) if index >= 0 else self.replies.last
        expect(reply.get_by_test_id("reply-stats")).to_contain_text(re.compile(r"\d+ tokens"), timeout=120_000)
        expect(self.page.get_by_role("button", name="Send")).to_be_visible()
        return reply.locator(".markdown").inner_text()

    def settings(self, **values: str) -> None:
        """Open the settings panel, type the values (field name -> text), close it."""
        self.page.get_by_role("button", name="Settings", exact=True).click()
        panel = self.page.get_by_role("complementary", name="Settings")
        for name, value in values.items():
            field = (
                panel.get_by_label("System prompt") if name == "system_prompt" else panel.locator(f"input[name={name}]")
            )
            field.fill(value)
            field.blur()
        panel.get_by_role("button", name="Close settings").click()

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path

    def assert_no_page_errors(self) -> None:
        assert not self.errors, f"JavaScript errors on the page: {self.errors}"


def database_url(stack) -> str:
    """The stack's database (tests/stack.py puts a SQLite file beside its log unless the environment says)."""
    return os.environ.get("LLMSERVE_DATABASE_URL") or f"sqlite:///{stack.log_path.parent / 'llmserve.db'}"


def stored_chat(stack, title: str, turns: list[tuple[str, str]]) -> str:
    """A session (made through the API) holding the given (role, content) messages, written with the server's
    own tables: replies only ever come from the model, so no API route writes an assistant message."""
    from sqlmodel import Session, create_engine

    from frontend_api.storage.database import sync_url
    from frontend_api.storage.models import Message

    session_id = httpx.post(f"{stack.api_url}/sessions", json={"title": title}, timeout=30).json()["id"]
    engine = create_engine(sync_url(database_url(stack)))
    try:
        with Session(engine) as db:
            db.add_all(Message(session_id=session_id, role=role, content=content) for role, content in turns)
            db.commit()
    finally:
        engine.dispose()
    return session_id
