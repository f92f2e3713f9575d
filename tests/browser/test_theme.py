"""The web UI follows the operating system's colour scheme (`prefers-color-scheme`): a dark page with light, readable
text and highlight.js's GitHub-dark code colours when it asks for dark, the light page otherwise."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from browser_ui import DESKTOP, PHONE, UI, stored_chat

pytestmark = pytest.mark.browser

REPLY = """Here is a function, see [the docs](https://example.invalid/docs) and `inline code`:

```python
def greet(name):
    # say hello
    return "Hello, " + name
```

| a | b |
|---|---|
| 1 | 2 |
"""

# highlight.js's keyword colour in github.css and in github-dark.css: which of the two sheets applies.
KEYWORD = {"light": (215, 58, 73), "dark": (255, 123, 114)}

# The theme's colour pairs meant to be read (text, background), banners included, which a stored chat does not show.
VARIABLE_PAIRS = [
    ("--text", "--bg"),
    ("--text", "--panel"),
    ("--text", "--user"),
    ("--text", "--warning-bg"),
    ("--text", "--error-bg"),
    ("--muted", "--bg"),
    ("--muted", "--panel"),
    ("--muted", "--user"),
    ("--muted", "--code-head"),
    ("--accent-text", "--accent"),
    ("--on-danger", "--danger"),
    ("--danger-text", "--panel"),
]

COLOURS = """() => {
    const style = (selector) => getComputedStyle(document.querySelector(selector));
    const root = getComputedStyle(document.documentElement);
    const variables = {};
    for (const name of %s) variables[name] = root.getPropertyValue(name).trim();
    return {
        colorScheme: root.colorScheme,
        page: root.backgroundColor,
        text: getComputedStyle(document.body).color,
        sidebar: style('.sidebar').backgroundColor,
        reply: style('article.message.assistant').backgroundColor,
        replyText: style('article.message.assistant .markdown p').color,
        who: style('article.message.assistant .who').color,
        codeBackground: style('.code-block code.hljs').backgroundColor,
        codeText: style('.code-block code.hljs').color,
        keyword: style('.code-block .hljs-keyword').color,
        composer: style('.composer textarea').backgroundColor,
        variables,
    };
}"""

# Every visible piece of text, its colour and the first opaque background behind it (up the DOM).
TEXTS = """() => {
    const opaque = (colour) => { const m = colour.match(/[\\d.]+/g); return m && (m.length < 4 || +m[3] >= 0.5); };
    const out = [];
    for (const el of document.querySelectorAll('body *')) {
        const text = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
        if (!text || !el.checkVisibility({opacityProperty: true, visibilityProperty: true})) continue;
        if (el.closest('button:disabled')) continue;  // dimmed on purpose
        const box = el.getBoundingClientRect();
        if (box.width === 0 || box.height === 0 || box.right < 0 || box.left > innerWidth) continue;
        let holder = el;
        while (holder && !opaque(getComputedStyle(holder).backgroundColor)) holder = holder.parentElement;
        const background = holder ? getComputedStyle(holder).backgroundColor : getComputedStyle(document.documentElement).backgroundColor;
        out.push({text: text.slice(0, 40), tag: el.tagName.toLowerCase() + '.' + el.className, colour: getComputedStyle(el).color, background});
    }
    return out;
}"""

# Elements with a visible, opaque background: none may be a light box on the dark page.
BACKGROUNDS = """() => [...document.querySelectorAll('body, body *')]
    .filter(el => el.checkVisibility() && el.getBoundingClientRect().width > 0)
    .map(el => ({tag: el.tagName.toLowerCase() + '.' + el.className, background: getComputedStyle(el).backgroundColor}))
    .filter(item => { const m = item.background.match(/[\\d.]+/g); return m.length < 4 || +m[3] >= 0.5; })"""


def rgb(colour: str) -> tuple[float, ...]:
    """'rgb(1, 2, 3)' or 'rgba(1, 2, 3, 0.5)' as numbers (CSS colour 4 strings from getComputedStyle)."""
    numbers = re.findall(r"[\d.]+", colour)
    assert colour.startswith("rgb") and len(numbers) in (3, 4), f"not an rgb() colour: {colour!r}"
    return tuple(float(n) for n in numbers[:3])


def hex_rgb(colour: str) -> tuple[float, ...]:
    """'#rrggbb' or '#rgb' (the build shortens what it can)."""
    assert re.fullmatch(r"#([0-9a-fA-F]{3}){1,2}", colour), f"not a #rrggbb colour: {colour!r}"
    digits = colour[1:] if len(colour) == 7 else "".join(d * 2 for d in colour[1:])
    return tuple(float(int(digits[i : i + 2], 16)) for i in (0, 2, 4))


def luminance(colour: tuple[float, ...]) -> float:
    """WCAG 2 relative luminance."""
    linear = [(c / 255) / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in colour]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_the_contrast_helper_agrees_with_wcag():
    assert contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast((255, 255, 255), (255, 255, 255)) == pytest.approx(1.0)
    assert contrast(hex_rgb("#767676"), hex_rgb("#fff")) == pytest.approx(4.54, abs=0.01)  # WCAG's AA grey


@pytest.fixture
def themed_ui(browser: Browser, stack) -> Iterator:
    """Open the UI in a fresh browser context whose operating system prefers the given colour scheme."""
    contexts = []

    def open_ui(color_scheme: str, viewport: dict = DESKTOP) -> UI:
        context = browser.new_context(viewport=viewport, color_scheme=color_scheme, reduced_motion="reduce")
        contexts.append(context)
        return UI(context.new_page(), stack).open()

    yield open_ui
    for context in contexts:
        context.close()


def open_stored_reply(ui: UI, session_id: str) -> None:
    ui.page.locator(f'li.session[data-session-id="{session_id}"] .session-title').click()
    expect(ui.replies).to_have_count(1)
    expect(ui.page.locator(".code-block .hljs-keyword").first).to_have_text("def")


def low_contrast_texts(ui: UI) -> list[str]:
    texts = ui.page.evaluate(TEXTS)
    assert len(texts) > 10, f"too few texts found to judge: {texts}"
    return [
        f"{t['tag']} {t['text']!r}: {t['colour']} on {t['background']} = {contrast(rgb(t['colour']), rgb(t['background'])):.2f}"
        for t in texts
        if contrast(rgb(t["colour"]), rgb(t["background"])) < 4.5
    ]


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_the_page_follows_the_operating_systems_colour_scheme_with_readable_text(themed_ui, stack, scheme):
    dark = scheme == "dark"
    session_id = stored_chat(
        stack, f"Theme {scheme} {uuid.uuid4().hex[:6]}", [("user", "Show me a function"), ("assistant", REPLY)]
    )
    ui = themed_ui(scheme).connected()
    open_stored_reply(ui, session_id)
    colours = ui.page.evaluate(COLOURS % repr([name for pair in VARIABLE_PAIRS for name in pair]))

    assert colours["colorScheme"] == "light dark"  # form controls and scroll bars follow too
    page, text = rgb(colours["page"]), rgb(colours["text"])
    surfaces = {name: rgb(colours[name]) for name in ("page", "sidebar", "reply", "codeBackground", "composer")}
    for name, surface in surfaces.items():
        if dark:
            assert luminance(surface) < 0.05, f"{name} is not dark in the dark theme: {colours[name]}"
        else:
            assert luminance(surface) > 0.85, f"{name} is not light in the light theme: {colours[name]}"
    assert (luminance(text) > 0.7) if dark else (luminance(text) < 0.05), f"body text {colours['text']} on {scheme}"
    assert contrast(text, page) >= 4.5
    assert contrast(rgb(colours["replyText"]), rgb(colours["reply"])) >= 4.5
    assert contrast(rgb(colours["who"]), rgb(colours["reply"])) >= 4.5
    assert contrast(rgb(colours["codeText"]), rgb(colours["codeBackground"])) >= 4.5

    # The right highlight.js sheet applies (and only that one).
    assert rgb(colours["keyword"]) == KEYWORD[scheme], f"code keyword colour {colours['keyword']} on {scheme}"

    for foreground, background in VARIABLE_PAIRS:
        ratio = contrast(hex_rgb(colours["variables"][foreground]), hex_rgb(colours["variables"][background]))
        assert ratio >= 4.5, f"{foreground} on {background}: {ratio:.2f} in the {scheme} theme"

    low = low_contrast_texts(ui)
    if not dark:  # github.css's own keyword red on the light code background is 4.30:1, as it was before the themes
        low = [line for line in low if not line.startswith("span.hljs-keyword ")]
    assert not low, f"text below 4.5:1 in the {scheme} theme: {low}"
    if dark:
        ui.screenshot("desktop-dark-reply")
        ui.page.get_by_role("button", name="Settings", exact=True).click()
        expect(ui.page.get_by_role("complementary", name="Settings")).to_be_visible()
        light_boxes = [b for b in ui.page.evaluate(BACKGROUNDS) if luminance(rgb(b["background"])) > 0.2]
        assert not light_boxes, f"light boxes on the dark page: {light_boxes}"
        low = low_contrast_texts(ui)
        assert not low, f"text below 4.5:1 with the settings open: {low}"
        ui.screenshot("desktop-dark-settings")
    ui.assert_no_page_errors()


def test_the_dark_theme_at_phone_width(themed_ui, stack):
    session_id = stored_chat(
        stack, f"Phone dark {uuid.uuid4().hex[:6]}", [("user", "Show me a function"), ("assistant", REPLY)]
    )
    ui = themed_ui("dark", viewport=PHONE).connected()
    ui.page.get_by_role("button", name="Show chats").click()
    expect(ui.page.get_by_role("navigation", name="Chats")).to_be_in_viewport()
    assert luminance(rgb(ui.page.locator(".sidebar").evaluate("el => getComputedStyle(el).backgroundColor"))) < 0.05
    ui.screenshot("phone-dark-chats")
    open_stored_reply(ui, session_id)
    expect(ui.page.get_by_role("navigation", name="Chats")).not_to_be_in_viewport()
    low = low_contrast_texts(ui)
    assert not low, f"text below 4.5:1 at phone width: {low}"
    ui.screenshot("phone-dark-reply")
    ui.assert_no_page_errors()
