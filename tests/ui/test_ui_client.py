"""`ui.client` against real servers on 127.0.0.1: the twin server, a scriptable stand-in, nothing at all."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler

import pytest
from ui_browser import RealTwin
from ui_standin import StandIn, chunk, free_port, serve_twins, sse, status

from ui.client import DEFAULT_URL, ServerSettings, TwinAPIError, check_health, list_models, stream_reply

HISTORY = [
    {"role": "user", "content": "hi", "name": "Anna"},
    {"role": "assistant", "content": "hey Anna"},
    {"role": "user", "content": "what's up?", "name": "Anna"},
]


def reply(server: ServerSettings, **sampling: float) -> str:
    kwargs = {"temperature": 0.7, "max_tokens": 32, **sampling}
    return "".join(
        stream_reply(server, HISTORY, temperature=kwargs["temperature"], max_tokens=int(kwargs["max_tokens"]))
    )


def failure(server: ServerSettings) -> TwinAPIError:
    with pytest.raises(TwinAPIError) as caught:
        reply(server)
    return caught.value


def test_streams_the_reply_and_sends_the_openai_request(standin: StandIn) -> None:
    standin.answer = sse([chunk("not much"), ": ping", chunk(""), "event: message", chunk(", you?")])
    pieces = list(
        stream_reply(
            ServerSettings(standin.url, api_key="k3y"), HISTORY, temperature=0.35, max_tokens=17, model="anna"
        )
    )
    assert pieces == ["not much", ", you?"]
    [seen] = standin.seen
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["Authorization"] == "Bearer k3y"
    assert seen.body == {
        "model": "anna",
        "messages": HISTORY,
        "temperature": 0.35,
        "max_tokens": 17,
        "stream": True,
    }


def test_nothing_is_sent_before_the_reply_is_read(standin: StandIn) -> None:
    pieces = stream_reply(ServerSettings(standin.url), HISTORY, temperature=0.7, max_tokens=8)
    assert standin.seen == []
    assert next(pieces) == "hi"
    assert len(standin.seen) == 1


def test_no_key_means_no_authorization_header(standin: StandIn) -> None:
    assert reply(ServerSettings(standin.url)) == "hi"
    assert "Authorization" not in standin.seen[0].headers
    assert "model" not in standin.seen[0].body  # no model given: the server's default twin answers


@pytest.mark.parametrize("written", ["{url}/", "{url}/v1", "{url}/v1/", "{bare}"])
def test_the_server_url_may_be_written_loosely(standin: StandIn, written: str) -> None:
    url = written.format(url=standin.url, bare=standin.url.removeprefix("http://"))
    assert reply(ServerSettings(url)) == "hi"
    assert standin.seen[0].path == "/v1/chat/completions"


def test_a_server_that_does_not_stream_still_gives_its_reply(standin: StandIn) -> None:
    completion = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}}]}
    standin.answer = status(200, completion)
    assert reply(ServerSettings(standin.url)) == "whole"


def test_wrong_key(standin: StandIn) -> None:
    standin.answer = status(401, {"detail": "Invalid API key"})
    error = failure(ServerSettings(standin.url, api_key="nope"))
    assert error.status == 401
    assert "refused the API key" in str(error) and "Invalid API key" in str(error)


def test_missing_key(standin: StandIn) -> None:
    standin.answer = status(401, {"detail": "Missing API key"})
    error = failure(ServerSettings(standin.url))
    assert "needs an API key" in str(error)


def test_busy_server_says_when_to_come_back(standin: StandIn) -> None:
    busy = {"detail": "server busy: 64 waiting; retry in 3 s"}
    standin.answer = status(503, busy, headers={"Retry-After": "3"})
    error = failure(ServerSettings(standin.url))
    assert error.status == 503
    assert "can't answer right now" in str(error) and "try again in 3 s" in str(error)
    assert "server busy: 64 waiting" in str(error)


def test_validation_errors_are_spelled_out(standin: StandIn) -> None:
    detail = [
        {"type": "less_than_equal", "loc": ["body", "max_tokens"], "msg": "Input should be <= 512"},
        {"type": "missing", "loc": ["body", "messages", 0, "content"], "msg": "Field required"},
    ]
    standin.answer = status(422, {"detail": detail})
    error = failure(ServerSettings(standin.url))
    assert error.status == 422
    assert "max_tokens: Input should be <= 512" in str(error)
    assert "messages.0.content: Field required" in str(error)


def test_a_wrong_address_gets_a_404_hint(standin: StandIn) -> None:
    standin.answer = status(404, {"detail": "Not Found"})
    error = failure(ServerSettings(standin.url))
    assert "HTTP 404" in str(error) and "server URL" in str(error)
    standin.answer = status(404, {"detail": "model 'twin' does not exist: this server serves 'anna'"})
    error = failure(ServerSettings(standin.url))
    assert "refused the request (HTTP 404)" in str(error) and "serves 'anna'" in str(error)
    assert "server URL" not in str(error)


def test_a_crashed_server_without_json(standin: StandIn) -> None:
    standin.answer = status(500, "Internal Server Error\n  (see log)")
    error = failure(ServerSettings(standin.url))
    assert error.status == 500
    assert "HTTP 500" in str(error) and "Internal Server Error (see log)" in str(error)


def test_server_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    error = failure(ServerSettings(url))
    assert f"Can't reach the twin server at {url}" in str(error)
    with pytest.raises(TwinAPIError, match="Can't reach"):
        check_health(ServerSettings(url))


def test_a_silent_server_times_out(standin: StandIn) -> None:
    def stall(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(1.5)

    standin.answer = stall
    started = time.monotonic()
    error = failure(ServerSettings(standin.url, timeout_s=0.3))
    assert time.monotonic() - started < 1.4
    assert "sent nothing for 0.3 s" in str(error)


def test_a_reply_that_stalls_midway_times_out(standin: StandIn) -> None:
    standin.answer = sse([chunk("one"), chunk("two")], pause_s=1.5)
    pieces = stream_reply(ServerSettings(standin.url, timeout_s=0.3), HISTORY, temperature=0.7, max_tokens=8)
    assert next(pieces) == "one"
    with pytest.raises(TwinAPIError, match="sent nothing"):
        next(pieces)


def test_a_stream_cut_before_done_is_an_error(standin: StandIn) -> None:
    standin.answer = sse([chunk("half a rep")], done=False)
    pieces = stream_reply(ServerSettings(standin.url), HISTORY, temperature=0.7, max_tokens=8)
    assert next(pieces) == "half a rep"
    with pytest.raises(TwinAPIError, match="closed before the reply was finished"):
        next(pieces)


def test_an_error_event_in_the_stream_is_an_error(standin: StandIn) -> None:
    standin.answer = sse([chunk("a"), {"error": {"message": "CUDA out of memory"}}])
    with pytest.raises(TwinAPIError, match="CUDA out of memory"):
        reply(ServerSettings(standin.url))


def test_garbage_in_the_stream_is_an_error(standin: StandIn) -> None:
    standin.answer = sse(["data: <html>"])
    with pytest.raises(TwinAPIError, match="not JSON"):
        reply(ServerSettings(standin.url))


def test_not_a_server_address() -> None:
    error = failure(ServerSettings("ftp://example.invalid"))
    assert "is not a server address" in str(error)


def test_health(standin: StandIn) -> None:
    standin.answer = status(200, {"status": "ok", "model": "tiny"})
    assert check_health(ServerSettings(standin.url, api_key="k")) == {"status": "ok", "model": "tiny"}
    assert (standin.seen[0].method, standin.seen[0].path) == ("GET", "/health")
    standin.answer = status(200, "<html>hello</html>")
    with pytest.raises(TwinAPIError, match="not answer with JSON"):
        check_health(ServerSettings(standin.url))
    standin.answer = status(503, {"status": "loading", "ready": False}, headers={"Retry-After": "10"})
    with pytest.raises(TwinAPIError, match=r"not ready yet \(loading\); try again in 10 s"):
        check_health(ServerSettings(standin.url))
    standin.answer = status(503, {"status": "failed", "ready": False, "load_error": "no lit_model.pth in x"})
    with pytest.raises(TwinAPIError, match="could not load the model: no lit_model.pth in x"):
        check_health(ServerSettings(standin.url))


def test_list_models(standin: StandIn) -> None:
    serve_twins(standin, ["me", "anna"])
    assert list_models(ServerSettings(f"{standin.url}/v1", api_key="k")) == ["me", "anna"]
    [seen] = standin.seen
    assert (seen.method, seen.path, seen.headers["Authorization"]) == ("GET", "/v1/models", "Bearer k")
    assert "".join(stream_reply(ServerSettings(standin.url), HISTORY, temperature=0.7, max_tokens=8)) == (
        "I am me."
    )
    with pytest.raises(TwinAPIError, match=r"HTTP 404.*serves 'me', 'anna'"):
        list(stream_reply(ServerSettings(standin.url), HISTORY, temperature=0.7, max_tokens=8, model="bob"))


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (status(401, {"detail": "Missing API key"}), "needs an API key"),
        (status(503, {"detail": "busy"}, headers={"Retry-After": "4"}), "try again in 4 s"),
        (status(200, "<html>hello</html>"), "did not answer with a list of models"),
        (status(200, {"object": "list", "data": [{"object": "model"}]}), "did not answer with a list"),
        (status(200, {"object": "list", "data": []}), "serves no twin"),
    ],
    ids=["no-key", "busy", "not-json", "no-ids", "empty"],
)
def test_list_models_failures_read_well(standin: StandIn, answer: object, said: str) -> None:
    standin.answer = answer  # type: ignore[assignment]
    with pytest.raises(TwinAPIError, match=said):
        list_models(ServerSettings(standin.url))


def test_list_models_of_a_server_that_is_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TwinAPIError, match=f"Can't reach the twin server at {url}"):
        list_models(ServerSettings(url))


def test_settings_from_the_environment() -> None:
    assert ServerSettings.from_env({}) == ServerSettings(DEFAULT_URL, "", 120.0)
    env = {"TWIN_API_URL": " http://h:1 ", "TWIN_API_KEY": " k ", "TWIN_API_TIMEOUT": "2.5"}
    assert ServerSettings.from_env(env) == ServerSettings("http://h:1", "k", 2.5)
    for bad in ("soon", "0", "-3", "nan"):
        with pytest.raises(ValueError, match="TWIN_API_TIMEOUT"):
            ServerSettings.from_env({"TWIN_API_TIMEOUT": bad})
    assert ServerSettings.from_env({"TWIN_API_DEADLINE": "30"}).deadline_s == 30.0
    with pytest.raises(ValueError, match=r"TWIN_API_TIMEOUT .*TWIN_API_DEADLINE .*TWIN_API_URL"):
        ServerSettings.from_env(
            {"TWIN_API_TIMEOUT": "inf", "TWIN_API_DEADLINE": "x", "TWIN_API_URL": "ftp://x"}
        )


@pytest.mark.slow
def test_the_real_twin_server_streams_a_reply(real_twin: RealTwin) -> None:
    server = ServerSettings(real_twin.url, api_key=real_twin.api_key)
    health = check_health(server)
    assert health["ready"] is True and health["model"] == "twin"
    assert list_models(server) == ["twin"]
    pieces = list(stream_reply(server, HISTORY, temperature=0.0, max_tokens=12, model="twin"))
    assert pieces and all(pieces)
    assert "".join(pieces).strip()


@pytest.mark.slow
def test_the_real_twin_server_refusals_read_well(real_twin: RealTwin) -> None:
    wrong = failure(ServerSettings(real_twin.url, api_key="not-the-key"))
    assert wrong.status == 401 and "refused the API key" in str(wrong)
    missing = failure(ServerSettings(real_twin.url))
    assert missing.status == 401 and "needs an API key" in str(missing)

    server = ServerSettings(real_twin.url, api_key=real_twin.api_key)
    cap = int(check_health(server)["max_new_tokens"])
    with pytest.raises(TwinAPIError) as caught:
        list(stream_reply(server, HISTORY, temperature=0.7, max_tokens=cap + 1))
    assert caught.value.status == 400
    assert "refused the request (HTTP 400)" in str(caught.value) and str(cap) in str(caught.value)
