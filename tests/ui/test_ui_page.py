"""The chat page through `streamlit.testing.v1.AppTest`, with `ui.client` replaced by a scripted server."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

import ui.client
from ui.client import ServerSettings, TwinAPIError

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"
Script = Iterable[str | BaseException]


@dataclass
class Request:
    server: ServerSettings
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int
    model: str | None


@dataclass
class ScriptedServer:
    """Stands in for `ui.client`: records each request and answers with the next script.

    A script is the reply's pieces in order; an exception in it is raised at that point of the stream.
    Scripts are read lazily, one piece per piece the page asks for (a generator shows how far it got).
    """

    scripts: list[Script] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    health: dict[str, Any] | BaseException = field(default_factory=lambda: {"status": "ok"})
    health_checks: list[ServerSettings] = field(default_factory=list)
    twins: list[str] | BaseException = field(default_factory=lambda: ["twin"])
    twin_lists: list[ServerSettings] = field(default_factory=list)

    def stream_reply(
        self,
        server: ServerSettings,
        messages: Sequence[Mapping[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        model: str | None = None,
    ) -> Iterator[str]:
        self.requests.append(Request(server, [dict(m) for m in messages], temperature, max_tokens, model))
        for piece in self.scripts.pop(0):
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    def check_health(self, server: ServerSettings) -> dict[str, Any]:
        self.health_checks.append(server)
        if isinstance(self.health, BaseException):
            raise self.health
        return self.health

    def list_models(self, server: ServerSettings) -> list[str]:
        self.twin_lists.append(server)
        if isinstance(self.twins, BaseException):
            raise self.twins
        return list(self.twins)


@pytest.fixture
def twin(monkeypatch: pytest.MonkeyPatch) -> ScriptedServer:
    for name in ("TWIN_API_URL", "TWIN_API_KEY", "TWIN_API_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    scripted = ScriptedServer()
    monkeypatch.setattr(ui.client, "stream_reply", scripted.stream_reply)
    monkeypatch.setattr(ui.client, "check_health", scripted.check_health)
    monkeypatch.setattr(ui.client, "list_models", scripted.list_models)
    return scripted


def start() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    return at


def bubbles(at: AppTest) -> list[tuple[str, str]]:
    """(who, text) of every streamlit-chat bubble on the page, top to bottom."""
    drawn = []
    for element in at.get("component_instance"):
        assert element.proto.component_name == "streamlit_chat.streamlit_chat"
        args = json.loads(element.proto.json_args)
        drawn.append(("partner" if args["isUser"] else "twin", args["message"]))
    return drawn


def say(at: AppTest, text: str) -> AppTest:
    at.chat_input[0].set_value(text).run()
    assert not at.exception
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def sent_to_browser(at: AppTest) -> bytes:
    """Every element and block of the page as the protobuf bytes Streamlit sends to the browser."""
    found: list[bytes] = []

    def walk(node: Any) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "SerializeToString"):
            found.append(proto.SerializeToString())
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return b"\n".join(found)


def test_first_page_is_empty_with_settings_from_the_environment(
    twin: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWIN_API_URL", "http://10.1.2.3:9000")
    monkeypatch.setenv("TWIN_API_KEY", "s3cret")
    at = start()
    # the server and the key are shown, not editable: the only text field is the partner's name
    assert [t.key for t in at.text_input] == ["partner"]
    [settings] = [c.value for c in at.sidebar.caption]
    assert "`http://10.1.2.3:9000` (TWIN_API_URL)" in settings and "API key: set (TWIN_API_KEY)" in settings
    sent = sent_to_browser(at)
    assert b"You write as **Friend**" in sent and b"http://10.1.2.3:9000" in sent  # the walk sees the page
    assert b"s3cret" not in sent
    assert bubbles(at) == []
    assert errors(at) == []
    assert twin.requests == []
    # nothing but the title and the caption: no stray text drawn by Streamlit's "magic"
    assert [t.value for t in at.title] == ["💬 twin"]
    assert [c.value for c in at.main.caption] == [
        "You write as **Friend**; your twin answers the way you would."
    ]
    assert [m.value for m in at.markdown] == []
    download = at.get("download_button")[0]
    assert download.proto.disabled


def test_a_message_gets_the_streamed_reply_and_both_bubbles(twin: ScriptedServer) -> None:
    twin.scripts = [["Hey", " there", ", all good!"], ["Sure ", "thing"]]
    at = start()
    say(at, "  hi, how are you?  ")
    assert bubbles(at) == [("partner", "hi, how are you?"), ("twin", "Hey there, all good!")]
    assert twin.requests[0].messages == [{"role": "user", "content": "hi, how are you?"}]
    assert errors(at) == []

    say(at, "coffee tomorrow?")
    assert twin.requests[1].messages == [
        {"role": "user", "content": "hi, how are you?"},
        {"role": "assistant", "content": "Hey there, all good!"},
        {"role": "user", "content": "coffee tomorrow?"},
    ]
    assert [who for who, _ in bubbles(at)] == ["partner", "twin", "partner", "twin"]
    assert bubbles(at)[-1] == ("twin", "Sure thing")
    assert at.session_state.history[-1] == {"role": "assistant", "content": "Sure thing"}


def test_the_reply_is_read_piece_by_piece_and_a_break_midway_keeps_nothing_of_it(
    twin: ScriptedServer,
) -> None:
    taken: list[str] = []

    def tracked(pieces: list[str], failure: BaseException) -> Iterator[str | BaseException]:
        for piece in pieces:
            taken.append(piece)
            yield piece
        yield failure

    twin.scripts = [tracked(["Hel", "lo"], TwinAPIError("The connection broke; please try again."))]
    at = start()
    assert taken == []
    say(at, "hey")
    assert taken == ["Hel", "lo"]
    assert bubbles(at) == [("partner", "hey")]
    assert errors(at) == ["The connection broke; please try again."]
    assert at.session_state.history == [{"role": "user", "content": "hey"}]


@pytest.mark.parametrize(
    "failure",
    [
        TwinAPIError("Can't reach the twin server at http://127.0.0.1:8000. Is it running (`make serve`)?"),
        TwinAPIError("The server refused the API key: check TWIN_API_KEY (HTTP 401)", status=401),
        TwinAPIError("The twin server at http://127.0.0.1:8000 sent nothing for 120 s", status=None),
        TwinAPIError("The server refused the request (HTTP 422). max_tokens: too big", status=422),
        TwinAPIError("The twin is busy with another reply (HTTP 503); try again in 2 s.", status=503),
    ],
    ids=["server-down", "wrong-key", "timeout", "4xx", "busy"],
)
def test_a_failed_reply_is_said_on_the_page_and_the_chat_goes_on(
    twin: ScriptedServer, failure: TwinAPIError
) -> None:
    twin.scripts = [[failure], ["ok, ", "now it works"]]
    at = start()
    say(at, "are you there?")
    assert not at.exception
    assert errors(at) == [str(failure)]
    assert bubbles(at) == [("partner", "are you there?")]

    retry = [b for b in at.button if b.label == "Retry"]
    assert len(retry) == 1
    retry[0].click().run()
    assert not at.exception
    assert errors(at) == []
    assert bubbles(at) == [("partner", "are you there?"), ("twin", "ok, now it works")]
    assert twin.requests[1].messages == [{"role": "user", "content": "are you there?"}]


def test_a_new_message_after_a_failure_carries_both_partner_messages(twin: ScriptedServer) -> None:
    twin.scripts = [[TwinAPIError("Can't reach the twin server.")], ["got both"]]
    at = start()
    say(at, "first")
    say(at, "second")
    assert errors(at) == []
    assert twin.requests[1].messages == [
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
    ]
    assert bubbles(at) == [("partner", "first"), ("partner", "second"), ("twin", "got both")]


def test_an_unexpected_failure_is_a_message_not_a_traceback(twin: ScriptedServer) -> None:
    twin.scripts = [[RuntimeError("kaboom")]]
    at = start()
    say(at, "hello")
    assert not at.exception
    assert len(errors(at)) == 1 and "kaboom" in errors(at)[0]
    assert bubbles(at) == [("partner", "hello")]


def test_an_empty_reply_is_not_kept_and_can_be_retried(twin: ScriptedServer) -> None:
    twin.scripts = [["  ", "\n"], ["there you go"]]
    at = start()
    say(at, "say something")
    assert bubbles(at) == [("partner", "say something")]
    assert len(errors(at)) == 1 and "empty" in errors(at)[0]
    [retry] = [b for b in at.button if b.label == "Retry"]
    retry.click().run()
    assert bubbles(at)[-1] == ("twin", "there you go")


def test_blank_input_sends_nothing(twin: ScriptedServer) -> None:
    at = start()
    say(at, "   ")
    assert twin.requests == []
    assert bubbles(at) == []


def test_new_conversation_forgets_the_history_but_keeps_the_settings(twin: ScriptedServer) -> None:
    twin.scripts = [["first reply"], [TwinAPIError("boom")], ["fresh reply"]]
    at = start()
    at.sidebar.text_input(key="partner").set_value("Anna")
    at.sidebar.slider(key="temperature").set_value(1.1)
    say(at, "one")
    say(at, "two")
    assert errors(at) == ["boom"]

    [new] = [b for b in at.sidebar.button if b.label == "New conversation"]
    new.click().run()
    assert not at.exception
    assert bubbles(at) == []
    assert errors(at) == []
    assert at.sidebar.text_input(key="partner").value == "Anna"

    say(at, "three")
    assert twin.requests[-1].messages == [{"role": "user", "content": "three", "name": "Anna"}]
    assert twin.requests[-1].temperature == pytest.approx(1.1)
    assert bubbles(at) == [("partner", "three"), ("twin", "fresh reply")]


def test_sidebar_settings_reach_the_request(twin: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWIN_API_TIMEOUT", "7.5")
    monkeypatch.setenv("TWIN_API_URL", "http://192.168.1.20:8123")
    monkeypatch.setenv("TWIN_API_KEY", "key-42")
    twin.scripts = [["hi Maria"]]
    at = start()
    at.sidebar.text_input(key="partner").set_value("  Anna   Maria ")
    at.sidebar.slider(key="temperature").set_value(1.35)
    at.sidebar.number_input(key="max_tokens").set_value(48)
    say(at, "hello")
    [request] = twin.requests
    assert request.server == ServerSettings(url="http://192.168.1.20:8123", api_key="key-42", timeout_s=7.5)
    assert request.temperature == pytest.approx(1.35)
    assert request.max_tokens == 48 and isinstance(request.max_tokens, int)
    assert request.messages == [{"role": "user", "content": "hello", "name": "Anna Maria"}]
    assert "Anna Maria" in at.caption[0].value


def test_environment_settings_reach_the_request_untouched(
    twin: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWIN_API_URL", "http://twin.lan:8000")
    monkeypatch.setenv("TWIN_API_KEY", "from-env")
    twin.scripts = [["yo"]]
    at = start()
    say(at, "hi")
    [request] = twin.requests
    assert (request.server.url, request.server.api_key) == ("http://twin.lan:8000", "from-env")
    assert request.temperature == pytest.approx(0.7) and request.max_tokens == 128
    assert "name" not in request.messages[0]


def test_a_broken_timeout_setting_is_explained(twin: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWIN_API_TIMEOUT", "soon")
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    assert len(errors(at)) == 1 and "TWIN_API_TIMEOUT" in errors(at)[0]


def test_the_conversation_downloads_as_json(twin: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    stores: list[MemoryMediaFileStorage] = []

    class RecordedStorage(MemoryMediaFileStorage):
        def __init__(self, endpoint: str) -> None:
            super().__init__(endpoint)
            stores.append(self)

    # AppTest builds a fresh in-memory media store per run; keep hold of it to read the served file.
    monkeypatch.setattr("streamlit.testing.v1.app_test.MemoryMediaFileStorage", RecordedStorage)
    twin.scripts = [["Привет! 👋"]]
    at = start()
    at.sidebar.text_input(key="partner").set_value("Ольга")
    at.sidebar.number_input(key="max_tokens").set_value(64)
    say(at, "как дела?")

    [download] = at.get("download_button")
    assert not download.proto.disabled
    assert download.proto.label == "Download conversation (JSON)"
    served = stores[-1].get_file(download.proto.url.rsplit("/", 1)[-1])
    assert served.mimetype == "application/json"
    assert served.filename == "twin-conversation.json"
    assert json.loads(served.content) == {
        "version": 1,
        "model": "twin",
        "partner": "Ольга",
        "temperature": 0.7,
        "max_tokens": 64,
        "messages": [
            {"role": "user", "content": "как дела?", "name": "Ольга"},
            {"role": "assistant", "content": "Привет! 👋"},
        ],
    }


def test_check_server_says_whether_it_is_up(twin: ScriptedServer) -> None:
    twin.health = {"status": "ok", "ready": True, "model": "tiny-falcon", "device": "cpu"}
    at = start()
    [check] = [b for b in at.sidebar.button if b.label == "Check server"]
    check.click().run()
    assert [s.value for s in at.sidebar.success] == ["The server is up (model: tiny-falcon on cpu)."]
    assert twin.health_checks[-1].url == "http://127.0.0.1:8000"

    twin.health = TwinAPIError("Can't reach the twin server at http://127.0.0.1:8000.")
    [check] = [b for b in at.sidebar.button if b.label == "Check server"]
    check.click().run()
    assert not at.exception
    assert [e.value for e in at.sidebar.error] == ["Can't reach the twin server at http://127.0.0.1:8000."]


def test_a_password_in_the_server_url_is_not_shown(
    twin: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWIN_API_URL", "https://me:hunter2@twin.example:8443/v1")
    twin.scripts = [
        ["ok"],
        [TwinAPIError("Can't reach the twin server at https://me:hunter2@twin.example:8443.")],
    ]
    at = start()
    [settings] = [c.value for c in at.sidebar.caption]
    assert "`https://twin.example:8443` (TWIN_API_URL)" in settings
    say(at, "hi")
    assert twin.requests[0].server.url == "https://me:hunter2@twin.example:8443/v1"  # still used as given
    say(at, "there?")
    assert errors(at) == ["Can't reach the twin server at https://twin.example:8443."]
    assert b"hunter2" not in sent_to_browser(at)


def test_the_api_key_never_reaches_the_browser(twin: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is read in the page's Python process and only sent to the server: no widget holds it, no
    session-state value is it, and an error message quoting it is shown with the key blanked."""
    key = "sk-twin-very-secret-42"
    monkeypatch.setenv("TWIN_API_KEY", key)
    twin.scripts = [["hey"], [RuntimeError(f"Illegal header value b'Bearer {key}'")]]
    twin.health = TwinAPIError(f"The server refused the API key {key} (HTTP 401)", status=401)
    at = start()
    say(at, "hi")
    say(at, "again")
    [check] = [b for b in at.sidebar.button if b.label == "Check server"]
    check.click().run()
    assert [r.server.api_key for r in twin.requests] == [key, key]  # it is used ...
    assert twin.health_checks[-1].api_key == key
    assert errors(at) and all(key not in e for e in errors(at))  # ... and never shown
    assert "Bearer •••" in errors(at)[0]
    assert [e.value for e in at.sidebar.error] == ["The server refused the API key ••• (HTTP 401)"]
    assert all(getattr(w, "value", None) != key for w in at.text_input)
    assert all(key not in repr(at.session_state[name]) for name in at.session_state)
    sent = sent_to_browser(at)
    assert "Bearer •••".encode() in sent and key.encode() not in sent
