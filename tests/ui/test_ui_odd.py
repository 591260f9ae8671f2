"""The page in odd situations, through `AppTest` against the stand-in server on 127.0.0.1 (the real
`ui.client` underneath): replies that are markup, huge or broken Unicode, answers that are not the twin
server's, servers that keep a reply open for ever, odd twin ids, bad TWIN_API_URL values, and a message
left without a reply. Each ends with a message on the page that says what happened, and a usable page."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from streamlit.testing.v1 import AppTest
from test_ui_page import APP, bubbles, errors, say, sent_to_browser
from ui_standin import StandIn, chunk, serve_twins, sse, status

import ui.client


@pytest.fixture
def page_env(standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """The page pointed at the stand-in serving one twin (no key, a short timeout)."""
    monkeypatch.setenv("TWIN_API_URL", standin.url)
    monkeypatch.setenv("TWIN_API_TIMEOUT", "5")
    for name in ("TWIN_API_KEY", "TWIN_API_DEADLINE"):
        monkeypatch.delenv(name, raising=False)
    serve_twins(standin, ["twin"])
    yield standin


def start() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    return at


def answer_chat(standin: StandIn, answer: object) -> None:
    standin.routes["/v1/chat/completions"] = answer  # type: ignore[assignment]


def chats(standin: StandIn) -> int:
    return sum(s.path == "/v1/chat/completions" for s in standin.seen)


def test_markup_in_a_reply_or_an_error_is_shown_as_text(page_env: StandIn) -> None:
    """streamlit-chat and st.error render markdown: a reply's image would be fetched by the browser,
    its `<script>` silently dropped. Both must show as the characters they are."""
    raw = "**hi** <script>alert(1)</script> ![x](http://evil.example/p.png) $5 or $10\n# not a heading"
    answer_chat(page_env, sse([chunk(raw)]))
    at = start()
    say(at, "[me](http://evil.example/) <b>")
    [(_, mine), (_, reply)] = bubbles(at)
    for shown in (mine, reply):
        assert "[x](" not in shown and "[me](" not in shown and "<" not in shown.replace("\\<", "")
    assert "\\*\\*hi\\*\\*" in reply and "\\$5" in reply and "\n\\# not a heading" in reply
    assert at.session_state.history[-1]["content"] == raw  # kept (and downloaded) as it was written

    answer_chat(page_env, status(401, {"detail": "![x](http://evil.example/p.png) <img src=x>"}))
    say(at, "again")
    [error] = errors(at)
    assert "TWIN_API_KEY" in error  # our own words untouched ...
    assert "[x](" not in error and "\\<img" in error  # ... the server's escaped
    assert b"[x](http://evil.example" not in sent_to_browser(at)


def test_halves_of_an_emoji_are_joined_and_a_lone_half_is_replaced(page_env: StandIn) -> None:
    answer_chat(page_env, sse([chunk("\ud83d"), chunk("\ude00 ok \udc00"), chunk(" e\u0301 \u202eabc")]))
    at = start()
    say(at, "emoji?")
    assert not at.exception
    assert bubbles(at)[-1] == ("twin", "😀 ok \ufffd e\u0301 \u202eabc")


def test_a_huge_reply_is_drawn_without_stalling_the_page(page_env: StandIn) -> None:
    answer_chat(page_env, sse([chunk("x" * 999 + " ") for _ in range(2000)]))
    at = start()
    started = time.monotonic()
    say(at, "tell me everything")
    assert time.monotonic() - started < 10
    assert errors(at) == []
    assert len(bubbles(at)[-1][1]) == 1000 * 2000 - 1


def html_page(handler: BaseHTTPRequestHandler) -> None:
    raw = b"<html><body><h1>Welcome</h1></body></html>"
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html; charset=utf-8")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (html_page, "answered with text/html instead of a streamed reply: is TWIN_API_URL"),
        (sse(['data: {"choices": [{"delta": "x"}]}']), "unexpected piece of the reply"),
        (sse(['data: {"choices": "x"}']), "unexpected piece of the reply"),
        (sse(['data: {"choices": [1]}']), "unexpected piece of the reply"),
        (
            status(
                502,
                "<html><head><style>h1{}</style></head><body><h1>502 Bad Gateway</h1>"
                "<script>alert(1)</script><hr>nginx</body></html>",
            ),
            "(HTTP 502); see its log. The server said: 502 Bad Gateway nginx",
        ),
    ],
    ids=["html-page", "delta-not-object", "choices-not-list", "choice-not-object", "proxy-502-page"],
)
def test_an_answer_that_is_not_the_twin_servers_is_said_in_words(
    page_env: StandIn, answer: object, said: str
) -> None:
    answer_chat(page_env, answer)
    at = start()
    say(at, "hi")
    [error] = errors(at)
    assert said in error
    assert "Something went wrong" not in error and "connection closed" not in error and "<" not in error
    answer_chat(page_env, sse([chunk("fine now")]))
    [retry] = [b for b in at.button if b.label == "Retry"]
    retry.click().run()
    assert bubbles(at)[-1] == ("twin", "fine now")


def test_keep_alive_pings_without_text_are_given_up(
    page_env: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx's read timeout restarts on every line: a server that only pings would hold the page for
    ever; TWIN_API_TIMEOUT is the longest wait for text."""
    monkeypatch.setenv("TWIN_API_TIMEOUT", "0.6")
    answer_chat(page_env, sse([": ping"] * 20 + [chunk("too late")], pause_s=0.1))
    at = start()
    started = time.monotonic()
    say(at, "hello?")
    assert time.monotonic() - started < 1.8
    [error] = errors(at)
    assert "sent nothing for 0.6 s" in error and "TWIN_API_TIMEOUT" in error
    assert bubbles(at) == [("partner", "hello?")]


def test_a_dripping_reply_is_given_up_at_the_deadline(
    page_env: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWIN_API_DEADLINE", "0.6")
    answer_chat(page_env, sse([chunk("drip ") for _ in range(20)], pause_s=0.1))
    at = start()
    started = time.monotonic()
    say(at, "hello?")
    assert time.monotonic() - started < 1.8
    [error] = errors(at)
    assert "longer than 0.6 s in all" in error and "TWIN_API_DEADLINE" in error


def test_a_silent_model_list_does_not_hold_the_first_page(
    page_env: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page waits for `/v1/models` before it can draw: that wait is short, whatever TWIN_API_TIMEOUT
    allows a reply."""
    monkeypatch.setenv("TWIN_API_TIMEOUT", "120")
    monkeypatch.setattr(ui.client, "QUICK_TIMEOUT_S", 0.5)
    page_env.routes["/v1/models"] = lambda handler: time.sleep(2.5)
    started = time.monotonic()
    at = start()
    assert time.monotonic() - started < 2
    [error] = errors(at)
    assert "could not get the list of twins" in error and "sent nothing for 0.5 s" in error


def test_odd_twin_ids_are_skipped_or_shown_as_text(page_env: StandIn) -> None:
    cards = [{"id": i} for i in (None, 5, "", "  ", "we`ird *one*", "we`ird *one*")]
    page_env.routes["/v1/models"] = status(200, {"object": "list", "data": cards})
    at = start()
    assert at.sidebar.selectbox.len == 0  # one twin, listed twice; the ids that are not names dropped
    [settings] = [c.value for c in at.sidebar.caption]
    assert "Twin: we\\`ird \\*one\\*" in settings
    at.chat_input[0].set_value("hi").run()
    assert [s.body["model"] for s in page_env.seen if s.path == "/v1/chat/completions"] == ["we`ird *one*"]


def test_hundreds_of_twins_fit_in_the_picker(page_env: StandIn) -> None:
    names = [f"twin-{i:03}" for i in range(300)]
    serve_twins(page_env, names)
    at = start()
    assert at.sidebar.selectbox(key="twin").options == names
    at.sidebar.selectbox(key="twin").set_value("twin-299").run()
    say(at, "hi")
    assert not at.exception and errors(at) == []


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://", "names no server"),
        ("https://", "names no server"),
        ("ftp://twin.lan", "is not an http:// or https:// address"),
        ("file:///etc/passwd", "is not an http:// or https:// address"),
        ("javascript:alert(1)", "is not an http:// or https:// address"),
        ("twin server", "has spaces"),
        ("http://twin.lan:99999", "is not a valid address"),
        ("http://me:hunter2@[::1", "is not a valid address"),
        ("http://twin.lan:8000/?key=1", "?query or #fragment"),
    ],
)
def test_a_bad_server_url_is_explained_before_anything_is_sent(
    page_env: StandIn, monkeypatch: pytest.MonkeyPatch, url: str, said: str
) -> None:
    monkeypatch.setenv("TWIN_API_URL", url)
    at = start()
    [error] = errors(at)
    assert "The page's settings are wrong" in error and said in error
    assert "like http://127.0.0.1:8000" in error
    assert "hunter2" not in error and b"hunter2" not in sent_to_browser(at)
    assert page_env.seen == []


@pytest.mark.parametrize("written", ["{bare}", "{url}/v1/chat/completions", "{url}/v1/models/"])
def test_a_server_url_without_scheme_or_with_an_endpoint_still_works(
    page_env: StandIn, monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    monkeypatch.setenv("TWIN_API_URL", written.format(url=page_env.url, bare=page_env.url[len("http://") :]))
    at = start()
    say(at, "hi")
    assert errors(at) == [] and bubbles(at)[-1] == ("twin", "I am twin.")
    assert [s.path for s in page_env.seen] == ["/v1/models", "/v1/chat/completions"]


def test_a_message_left_without_reply_can_be_retried_after_switching_twins(page_env: StandIn) -> None:
    """Picking another twin (also while a reply streams, which cuts it off) puts the conversation aside;
    coming back, its last message still needs a reply, and the page offers Retry."""
    serve_twins(page_env, ["me", "anna"])
    answer_chat(page_env, status(500, {"detail": "boom"}))
    at = start()
    say(at, "hi me")
    assert len(errors(at)) == 1
    at.sidebar.selectbox(key="twin").set_value("anna").run()
    assert errors(at) == [] and not [b for b in at.button if b.label == "Retry"]
    serve_twins(page_env, ["me", "anna"])  # the server works again
    at.sidebar.selectbox(key="twin").set_value("me").run()
    assert bubbles(at) == [("partner", "hi me")]
    assert any("no reply yet" in i.value for i in at.info)
    [retry] = [b for b in at.button if b.label == "Retry"]
    retry.click().run()
    assert bubbles(at) == [("partner", "hi me"), ("twin", "I am me.")]
    assert not at.info and not [b for b in at.button if b.label == "Retry"]


def test_the_server_going_down_and_coming_back(page_env: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    at = start()
    say(at, "one")
    monkeypatch.setenv("TWIN_API_URL", "http://127.0.0.1:9")  # nothing listens there: "down"
    say(at, "two")
    [error] = errors(at)
    assert "Can't reach the twin server" in error and "TWIN_API_URL" in error
    monkeypatch.setenv("TWIN_API_URL", page_env.url)
    [retry] = [b for b in at.button if b.label == "Retry"]
    retry.click().run()
    assert errors(at) == [] and [t for _, t in bubbles(at)] == ["one", "I am twin.", "two", "I am twin."]
    sent = [s.body["messages"] for s in page_env.seen if s.path == "/v1/chat/completions"][-1]
    assert json.dumps(sent).count('"user"') == 2
