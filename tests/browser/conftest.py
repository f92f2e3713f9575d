"""Headless Chromium (Debian's `chromium`) driven by Playwright against the session's real stack.

Never `playwright install`: the browser is the system one (.ci/run installs it when missing). Without it these
tests fail, they do not skip. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from browser_ui import CHROMIUM, CHROMIUM_ARGS, DESKTOP, UI
from stack import Server


# Module scope, not session: Playwright's sync API holds an event loop of its own while it runs, and the async
# tests that follow (pytest-asyncio) cannot run theirs until it is stopped.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"The browser tests need Debian's chromium at {CHROMIUM}: apt-get install -y chromium "
            "(.ci/run does it; LLMSERVE_TEST_CHROMIUM points elsewhere). `playwright install` is not used."
        )
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def new_ui(browser: Browser, stack) -> Iterator:
    """Open the UI in a fresh browser context (its own localStorage): new_ui(server=..., viewport=..., settings=...)."""
    contexts = []

    def open_ui(server: Server = stack, viewport: dict = DESKTOP, settings: dict | None = None) -> UI:
        context = browser.new_context(viewport=viewport, accept_downloads=True, reduced_motion="reduce")  # no slide-ins
        contexts.append(context)
        if settings is not None:  # short replies, as if typed once in the settings panel (kept across reloads)
            seed = json.dumps(json.dumps(settings))
            context.add_init_script(
                f"if (!localStorage.getItem('llmserve.settings')) localStorage.setItem('llmserve.settings', {seed});"
            )
        return UI(context.new_page(), server).open()

    yield open_ui
    for context in contexts:
        context.close()
