"""The page in a real browser: `streamlit run ui/app.py` on 127.0.0.1, driven by headless Chromium.

`test_the_twin_answers_in_the_browser` is the end-to-end test: the real twin server with the tiny
checkpoint, the real page, a real browser. The other test points the same page at the scriptable
stand-in, to watch a slow reply grow in the browser and a failure show up as a message.
Chromium must be installed (`tests/ui/install_chromium.sh`); set TWIN_UI_SCREENSHOT=docs/ui.png to
refresh the README's screenshot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_browser import (
    CHAT_INPUT,
    CHROMIUM,
    REBIND_HOST,
    RECORD_STREAMING_JS,
    Page,
    RealTwin,
    bubbles,
    chromium,
    chromium_available,
    open_app,
    page_source,
    page_text,
    streamlit_app,
    type_into,
    wait_for,
    websocket_frames,
)
from ui_standin import chunk, free_port, model_list, running_standin, sse, status

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    if not chromium_available():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run tests/ui/install_chromium.sh (Debian's chromium package)"
        )
    profile = tmp_path_factory.mktemp("chromium") / "profile"
    profile.mkdir()
    with chromium(profile) as page:
        yield page


def no_traceback(page: Page) -> bool:
    return page_text(page, "stException") == []


def test_a_slow_reply_grows_in_the_browser_and_a_failure_is_a_message(browser: Page, tmp_path: Path) -> None:
    words = ["yeah ", "friday ", "works ", "for ", "me ", "🙂"]
    with running_standin() as twin:
        twin.routes["/v1/models"] = model_list(["twin"])  # the page asks for its twins first
        twin.answer = sse([chunk(w) for w in words], pause_s=0.25)
        log = tmp_path / "streamlit.log"
        with streamlit_app(free_port(), {"TWIN_API_URL": twin.url}, log, via_module=True) as url:
            open_app(browser, url)
            browser.evaluate(RECORD_STREAMING_JS)
            type_into(browser, CHAT_INPUT, "Are you free on friday?")
            final = [("partner", "Are you free on friday?"), ("twin", "yeah friday works for me 🙂")]
            wait_for("the twin's bubble", lambda: bubbles(browser) == final, 60)
            seen = browser.evaluate("clearInterval(window.twinRecorder), window.twinSeen")
            # the reply was on the page while it streamed, a few words at a time, before its bubble
            growing = [text for text in seen if "yeah friday works for me 🙂".startswith(text)]
            assert len(growing) >= 3, seen
            assert len(set(map(len, growing))) == len(growing), seen
            asked = [seen for seen in twin.seen if seen.path == "/v1/chat/completions"]
            assert asked[0].body["messages"] == [{"role": "user", "content": "Are you free on friday?"}]

            twin.answer = status(401, {"detail": "Invalid API key"})
            type_into(browser, CHAT_INPUT, "hello?")
            alerts = wait_for("an error message", lambda: page_text(browser, "stAlertContainer"), 60)
            assert any("refused the API key" in a or "needs an API key" in a for a in alerts), alerts
            assert no_traceback(browser)
            wait_for("the new bubble", lambda: bubbles(browser) == [*final, ("partner", "hello?")], 60)

            twin.answer = sse([chunk("all good")])
            retry = (
                "Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Retry')"
            )
            assert browser.evaluate(f"(() => {{ const b = {retry}; b && b.click(); return !!b; }})()")
            wait_for(
                "the retried reply",
                lambda: bubbles(browser) == [*final, ("partner", "hello?"), ("twin", "all good")],
                60,
            )
            assert page_text(browser, "stAlertContainer") == []
            assert no_traceback(browser)


def test_the_twin_answers_in_the_browser(browser: Page, real_twin: RealTwin, tmp_path: Path) -> None:
    """... with the server's API key, which the browser never sees: not in the DOM, not in a websocket
    frame Streamlit sent, not in cookies or web storage."""
    env = {"TWIN_API_URL": real_twin.url, "TWIN_API_KEY": real_twin.api_key}
    with streamlit_app(free_port(), env, tmp_path / "streamlit.log") as url:
        browser.events.clear()
        browser.call("Network.enable")
        open_app(browser, url)
        type_into(browser, 'input[aria-label="Partner\'s name"]', "Anna")
        caption = "You write as Anna; your twin answers the way you would."
        wait_for("Anna in the caption", lambda: caption in page_text(browser, "stCaptionContainer"), 30)
        type_into(browser, CHAT_INPUT, "Are you free on friday?")

        def answered() -> list[tuple[str, str]] | None:
            if alerts := page_text(browser, "stAlertContainer"):
                raise AssertionError(f"the page shows an error instead of a reply: {alerts}")
            drawn = bubbles(browser)
            return drawn if drawn and len(drawn) == 2 and drawn[1][1] else None

        drawn = wait_for("the twin's reply", answered, 120)
        assert drawn[0] == ("partner", "Are you free on friday?")
        assert drawn[1][0] == "twin" and drawn[1][1].strip()
        assert page_text(browser, "stAlertContainer") == []
        assert no_traceback(browser)
        frames = websocket_frames(browser)
        browser.call("Network.disable")
        key = real_twin.api_key
        assert any(b"Are you free on friday?" in f for f in frames)  # the frames are the chat's
        assert not [f for f in frames if key.encode() in f]
        source = page_source(browser)
        assert "Are you free on friday?" in source and "API key: set (TWIN_API_KEY)" in source
        assert key not in source
        wanted = os.environ.get("TWIN_UI_SCREENSHOT")
        shot = Path(wanted) if wanted else tmp_path / "ui.png"
        browser.screenshot(shot)
        assert shot.read_bytes().startswith(b"\x89PNG")


def test_a_rebinding_site_gets_no_page(browser: Page, tmp_path: Path) -> None:
    """A web site whose name resolves to 127.0.0.1 (DNS rebinding) opens the page under its own name:
    the page refuses to render, so the site can neither read nor use it (`streamlit run`, without
    `python -m ui`'s server.allowedHosts, whose 403 test_ui_access checks)."""
    key = "sk-rebind-secret"
    port = free_port()
    with streamlit_app(port, {"TWIN_API_KEY": key}, tmp_path / "streamlit.log"):
        browser.events.clear()
        browser.call("Network.enable")
        browser.navigate(f"http://{REBIND_HOST}:{port}")
        alerts = wait_for("the refusal", lambda: page_text(browser, "stAlertContainer"), 60)
        assert any(f"opened under another name ({REBIND_HOST})" in a for a in alerts), alerts
        assert not browser.evaluate(f"!!document.querySelector('{CHAT_INPUT}')")
        assert browser.evaluate("document.querySelectorAll('[data-testid=\"stSidebar\"]').length") == 0
        frames = websocket_frames(browser)
        browser.call("Network.disable")
        assert frames and not [f for f in frames if key.encode() in f]
        assert key not in page_source(browser)
