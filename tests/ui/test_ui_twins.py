"""The page's choice of twin, through `AppTest` against the stand-in server serving several twins (the
real `ui.client` underneath, so the `model` checked is the one on the wire)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from streamlit.testing.v1 import AppTest
from test_ui_page import APP, bubbles, errors, say
from ui_standin import StandIn, serve_twins, status


@pytest.fixture
def page_env(standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """The page pointed at the stand-in (no key, a short timeout)."""
    monkeypatch.setenv("TWIN_API_URL", standin.url)
    monkeypatch.setenv("TWIN_API_TIMEOUT", "5")
    monkeypatch.delenv("TWIN_API_KEY", raising=False)
    yield standin


def start() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    return at


def asked_for(standin: StandIn) -> list[str | None]:
    """The `model` of every chat request the stand-in got, in order."""
    return [s.body.get("model") for s in standin.seen if s.path == "/v1/chat/completions"]


def model_lists(standin: StandIn) -> int:
    return sum(s.path == "/v1/models" for s in standin.seen)


def test_several_twins_get_a_selectbox_and_the_chosen_one_answers(page_env: StandIn) -> None:
    serve_twins(page_env, ["twin", "anna", "boris"])
    at = start()
    [picker] = at.sidebar.selectbox
    assert picker.label == "Twin" and picker.options == ["twin", "anna", "boris"]
    assert picker.value == "twin"  # the server's default first
    say(at, "hi")
    assert bubbles(at) == [("partner", "hi"), ("twin", "I am twin.")]

    at.sidebar.selectbox(key="twin").set_value("anna").run()
    assert not at.exception
    assert bubbles(at) == []  # anna's own conversation, fresh
    say(at, "hello anna")
    assert bubbles(at) == [("partner", "hello anna"), ("twin", "I am anna.")]
    assert asked_for(page_env) == ["twin", "anna"]
    assert [s.body["messages"] for s in page_env.seen if s.path == "/v1/chat/completions"][-1] == [
        {"role": "user", "content": "hello anna"}
    ]

    at.sidebar.selectbox(key="twin").set_value("twin").run()  # back: the first conversation is still there
    assert bubbles(at) == [("partner", "hi"), ("twin", "I am twin.")]
    say(at, "me again")
    assert asked_for(page_env)[-1] == "twin"
    assert [m["content"] for m in page_env.seen[-1].body["messages"]] == ["hi", "I am twin.", "me again"]
    assert model_lists(page_env) == 1  # asked once per session
    assert errors(at) == []


def test_a_single_twin_is_named_and_asked_for_by_its_id(page_env: StandIn) -> None:
    serve_twins(page_env, ["me"])
    at = start()
    assert at.sidebar.selectbox.len == 0
    [settings] = [c.value for c in at.sidebar.caption]
    assert "Twin: `me`" in settings
    say(at, "who are you?")
    assert asked_for(page_env) == ["me"]
    assert bubbles(at)[-1] == ("twin", "I am me.")


def test_check_server_asks_for_the_twins_again(page_env: StandIn) -> None:
    serve_twins(page_env, ["me"])
    page_env.answer = status(200, {"status": "ok", "model": "me"})  # /health
    at = start()
    assert at.sidebar.selectbox.len == 0
    serve_twins(page_env, ["me", "anna"])  # a twin was added on the server
    [check] = [b for b in at.sidebar.button if b.label == "Check server"]
    check.click().run()
    assert not at.exception
    assert at.sidebar.selectbox(key="twin").options == ["me", "anna"]
    assert model_lists(page_env) == 2


def test_a_failing_model_list_is_a_readable_error(page_env: StandIn) -> None:
    page_env.routes["/v1/models"] = status(401, {"detail": "Missing API key"})
    at = start()
    [error] = errors(at)
    assert "could not get the list of twins" in error and "needs an API key" in error
    assert "Check server" in error
    assert at.chat_input[0].proto.disabled  # nothing to talk to yet

    serve_twins(page_env, ["me"])  # the server is fixed: the next run asks again and the chat works
    page_env.answer = status(200, {"status": "ok", "model": "me"})  # /health
    [check] = [b for b in at.sidebar.button if b.label == "Check server"]
    check.click().run()
    assert errors(at) == []
    say(at, "hi")
    assert asked_for(page_env) == ["me"]


def test_a_twin_gone_from_the_server_is_said_and_the_list_is_asked_again(page_env: StandIn) -> None:
    serve_twins(page_env, ["me", "anna"])
    at = start()
    at.sidebar.selectbox(key="twin").set_value("anna").run()
    serve_twins(page_env, ["me"])  # anna was removed on the server
    say(at, "anna?")
    [error] = errors(at)
    assert "HTTP 404" in error and "serves 'me'" in error and "Check server" in error
    at.run()
    assert at.sidebar.selectbox.len == 0 and model_lists(page_env) == 2
    say(at, "then you")
    assert asked_for(page_env)[-1] == "me"
